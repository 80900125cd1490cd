"""kvstore.transport: one wire protocol (see PROTOCOL.md), three carriers (shm, tcp, ucx).

Server side: ``Server`` / ``ServerThread`` (``kvstore serve`` runs one).
Client side: ``RemoteStore.connect(url)``; ``kvstore.client.KVClient.connect(url)``
reaches it through the carriers registered here.
"""

from __future__ import annotations

import sys

from kvstore.transport.messages import PROTOCOL_VERSION, Op
from kvstore.transport.urls import SCHEMES, parse_url


def _remote_factory(url: str, **kwargs):
    from kvstore.transport.remote import RemoteStore

    return RemoteStore.connect(url, **kwargs)


_remote_factory.accepts_strict = True


def register_carriers() -> None:
    """Make ``KVClient.connect`` resolve tcp://, shm:// and ucx:// to ``RemoteStore``."""
    from kvstore.client.kvclient import register_carrier

    for scheme in SCHEMES:
        register_carrier(scheme, _remote_factory)


# The daemon imports this package too and must not pay for the client (torch):
# register now only when the client is loaded already; KVClient.connect calls
# register_carriers() itself otherwise.
if "kvstore.client.kvclient" in sys.modules:
    register_carriers()

__all__ = ["PROTOCOL_VERSION", "Op", "SCHEMES", "parse_url", "register_carriers"]
