"""One connection as the daemon sees it: its ``Session`` and the ``Payload`` of its request.

``Session`` holds what the connection said (hello, tenant, client name) and
what it holds (registered namespaces, leases: released when the connection
ends; the prompt memo of ``lookup_many``, ``transport.prompt_memo``). ``Payload`` reads the declared segments of the current request, in
order; a read that fails marks it ``broken`` (the stream position is lost and
the connection must end).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvstore.errors import ProtocolError
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import Lease
from kvstore.transport.prompt_memo import PromptMemo


@dataclasses.dataclass(frozen=True)
class WrittenPrefix:
    """What a write lease of a clustered daemon covers (forwarded to the owner on commit)."""

    spec: NamespaceSpec
    ns: bytes
    tokens: np.ndarray
    extra: bytes


@dataclasses.dataclass
class Session:
    """What the daemon knows about one connection."""

    carrier: str
    peer: str = ""
    arena_access: bool = False  # shm: leases and the tenant's arena (a descriptor) are offered
    hello: bool = False
    tenant: str = ""
    client: str = ""
    namespaces: dict[bytes, NamespaceSpec] = dataclasses.field(default_factory=dict)
    leases: dict[int, Lease] = dataclasses.field(default_factory=dict)  # held by this session
    written: dict[int, WrittenPrefix] = dataclasses.field(default_factory=dict)  # write lease id ->
    pass_fds: list[int] = dataclasses.field(default_factory=list)  # shm: sent with the next reply
    prompts: PromptMemo | None = None  # lookup_many's prompt memo, made on first use
    memo_tokens: int = 0  # its bound, granted at hello from the daemon's MemoBudget


class Payload:
    """The declared segments of the current request, consumed in order."""

    def __init__(self, channel, sizes: list[int]):
        self.channel = channel
        self.sizes = sizes
        self.next = 0
        self.broken = False

    async def read_into(self, view) -> None:
        size = self.sizes[self.next]
        if len(view) != size:  # pragma: no cover - the dispatcher checks sizes first
            raise ProtocolError("segment size mismatch")
        self.next += 1
        try:
            await self.channel.read_into(view)
        except BaseException:
            self.broken = True
            raise

    async def read_segments(self, targets: list) -> None:
        """The next ``len(targets)`` segments into ``targets`` (None: dropped)."""
        sizes = self.sizes[self.next : self.next + len(targets)]
        self.next += len(targets)
        try:
            await self.channel.read_segments(targets, sizes)
        except BaseException:
            self.broken = True
            raise

    async def read_rest_into(self, view) -> None:
        """Every remaining segment, back to back, into ``view`` (exactly their total size):
        one stream read however many segments (``lookup_many``'s token arrays)."""
        sizes = self.sizes[self.next :]
        if len(view) != sum(sizes):  # pragma: no cover - the caller sizes it from ``sizes``
            raise ProtocolError("segment sizes do not add up to the buffer")
        self.next = len(self.sizes)
        try:
            await self.channel.read_segments(view, sizes)
        except BaseException:
            self.broken = True
            raise

    async def skip_one(self) -> None:
        size = self.sizes[self.next]
        self.next += 1
        try:
            await self.channel.skip(size)
        except BaseException:
            self.broken = True
            raise

    async def skip_rest(self) -> None:
        while self.next < len(self.sizes):
            await self.skip_one()
