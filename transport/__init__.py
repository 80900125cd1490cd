"""kvstore.transport: one wire protocol (see PROTOCOL.md), three carriers (shm, tcp, ucx).

Server side: ``Server`` / ``ServerThread`` (``kvstore serve`` runs one).
Client side: ``RemoteStore.connect(url)`` (``kvstore.client.KVClient.connect(url)``
opens one for tcp://, shm:// and ucx:// URLs).
"""

from __future__ import annotations

from kvstore.transport.messages import PROTOCOL_VERSION, Op
from kvstore.transport.urls import SCHEMES, parse_url

__all__ = ["PROTOCOL_VERSION", "Op", "SCHEMES", "parse_url"]
