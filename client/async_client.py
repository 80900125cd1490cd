"""AsyncKVClient: the asyncio twin of KVClient (same URLs, same Namespace semantics).

    c = await AsyncKVClient.connect("tcp://127.0.0.1:7801")
    ns = await c.namespace(layout)
    n = await ns.lookup(tokens)
    stored = await ns.put(tokens, kv)
    n, kv = await ns.get(tokens)
    await ns.hint(tokens, session_end=True)   # the conversation is over
    await c.flush(); await c.close()          # or: async with ... as c

Nothing here blocks the caller's event loop. ``lookup`` and ``hint`` (small) await the
backend's own coroutine when it declares ``capabilities.async_lookup`` (the remote client: its
I/O thread answers it); ``put`` / ``get`` / ``delete`` / ``flush`` run the sync call on
a worker thread (``asyncio.to_thread``), because they copy and convert
tensors (encode, decode, arena copies) that must not stall the loop. Calls
from one loop may overlap; the remote client keeps each connection's
requests in order.
"""

from __future__ import annotations

import asyncio
from typing import cast

from kvstore.client.kvclient import KVClient
from kvstore.client.namespace import Namespace
from kvstore.layout import KVLayout
from kvstore.store_api import AsyncLookupStore, PrefixHint
from kvstore.tokens import as_tokens, as_tokens_many


class AsyncNamespace:
    def __init__(self, ns: Namespace):
        self.sync = ns
        self.id = ns.id
        self.spec = ns.spec

    async def lookup(self, tokens, extra: bytes = b"") -> int:
        backend = self.sync.backend
        if not backend.capabilities.async_lookup:
            return await asyncio.to_thread(self.sync.lookup, tokens, extra)
        lookup = cast(AsyncLookupStore, backend).alookup(self.id, as_tokens(tokens), extra)
        return await self.sync.availability.acall(lookup, 0)

    async def lookup_many(self, tokens_list, extras=None) -> list[int]:
        """The twin of ``Namespace.lookup_many``."""
        backend = self.sync.backend
        if not backend.capabilities.async_lookup:
            return await asyncio.to_thread(self.sync.lookup_many, tokens_list, extras)
        toks = as_tokens_many(tokens_list)
        call = cast(AsyncLookupStore, backend).alookup_many(self.id, toks, extras)
        return await self.sync.availability.acall(call, [0] * len(toks))

    async def hint(self, tokens, *, session_end: bool = False, keep_until: float | None = None,
                   priority: int = 0, extra: bytes = b"") -> int:
        """The twin of ``Namespace.hint`` (a coroutine of the backend's own I/O when it has one)."""
        backend = self.sync.backend
        if not backend.capabilities.async_lookup:
            return await asyncio.to_thread(self.sync.hint, tokens, session_end=session_end,
                                           keep_until=keep_until, priority=priority, extra=extra)
        hint = PrefixHint(session_end, keep_until, priority)
        call = cast(AsyncLookupStore, backend).ahint(self.id, as_tokens(tokens), hint, extra)
        return await self.sync.availability.acall(call, 0)

    async def put(self, tokens, kv, extra: bytes = b"") -> int:
        return await asyncio.to_thread(self.sync.put, tokens, kv, extra)

    async def get(self, tokens, extra: bytes = b"", device=None):
        return await asyncio.to_thread(self.sync.get, tokens, extra, device)

    async def delete(self, tokens, extra: bytes = b"") -> int:
        return await asyncio.to_thread(self.sync.delete, tokens, extra)


class AsyncKVClient:
    def __init__(self, client: KVClient):
        self.sync = client

    @classmethod
    async def connect(cls, url: str = "embedded", **kwargs) -> AsyncKVClient:
        return cls(await asyncio.to_thread(KVClient.connect, url, **kwargs))

    async def namespace(self, layout: KVLayout, codec: str = "none", tenant: str = "") -> AsyncNamespace:
        ns = await asyncio.to_thread(self.sync.namespace, layout, codec, tenant)
        return AsyncNamespace(ns)

    async def flush(self) -> None:
        await asyncio.to_thread(self.sync.flush)

    async def stats(self):
        return await asyncio.to_thread(self.sync.stats)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncKVClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
