"""kvstore: a tiered GPU/CPU/SSD store of transformer KV-cache blocks.

Core types live here; the parts are subpackages: ``kvstore.prefix_index``,
``kvstore.eviction``, ``kvstore.transport``, ``kvstore.kernels``,
``kvstore.client``.
"""

from kvstore.errors import ErrorCode, KVStoreError
from kvstore.keys import KEY_SEED, ROOT_KEY, block_key, block_keys
from kvstore.layout import KVLayout
from kvstore.tokens import as_tokens

__all__ = [
    "KVLayout",
    "KVStoreError",
    "ErrorCode",
    "KEY_SEED",
    "ROOT_KEY",
    "block_key",
    "block_keys",
    "as_tokens",
]
__version__ = "0.1.0"
