"""kvstore.client: KVClient and the engine-facing Namespace API."""

from kvstore.client.async_client import AsyncKVClient, AsyncNamespace
from kvstore.client.codec import BlockCodec
from kvstore.client.kvclient import KVClient, register_carrier
from kvstore.client.namespace import Namespace

__all__ = ["KVClient", "Namespace", "BlockCodec", "register_carrier", "AsyncKVClient",
           "AsyncNamespace"]
