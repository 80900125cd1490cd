"""ReadPath: how cached blocks leave the store, one store-lock acquisition per read.

::

    read_prefix ─> [lock] match, pin the path, plan each block
                   copy memory blocks out; read SSD-only blocks straight into
                   the caller's buffer (``SSDTier.read_many_into``, one batch)
                   unpin and count: deferred to the lock's next holder
                   SSD hits go to the Promoter (the CPU tier fills in the background)
    lease_read  ─> [lock] match, pin the path, GPU and staged blocks to the CPU
                   tier; a CPU slot allocated for each SSD-only block
                   (a second acquisition only when there are SSD-only blocks:)
                   read them into those slots in one batch, without the lock
                   [lock] install the slots, open the lease
    promote_many─> (the Promoter's thread) the same three steps for blocks no
                   reader waits for

A block whose SSD read fails (corrupt record, failing disk, a freed segment)
ends the prefix there: the caller gets fewer tokens, never wrong bytes, and
the block is dropped (``TierSet.lose``). Every path that copies locks the path
in the tree first, so the blocks it touches are never evicted, demoted or
overwritten meanwhile; a slot being filled for a promotion belongs to no
block until it is installed, so nothing else reads or frees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from typing import Protocol

from kvstore.errors import InvalidArgument
from kvstore.store.block_state import BlockState, NamespaceState, policy_key
from kvstore.store.buffers import byte_view
from kvstore.store.config import StoreConfig
from kvstore.store.cpu_tier import CPUTier
from kvstore.store.lease_table import LeaseTable
from kvstore.store.namespace_table import NamespaceTable
from kvstore.store.promotion import Promoter, Promotion
from kvstore.store.read_counters import ReadCounters
from kvstore.store.store_lock import StoreLock
from kvstore.store.tier_set import TierSet
from kvstore.store.write_back import WriteBack
from kvstore.store_api import Alloc, ArenaSlot, Lease
from kvstore.tokens import as_tokens, as_tokens_many


@dataclass
class _Fill:
    """A CPU slot being filled for a promotion (the block's own until ``place``)."""

    nst: NamespaceState
    key: bytes
    state: BlockState
    slot: ArenaSlot
    data: object  # the bytes to copy in, or None: read ``loc``
    loc: object
    error: Exception | None = None


class BlockSink(Protocol):
    """Where ``read_prefix`` puts block ``i`` of the cached prefix."""

    def write(self, i: int, data) -> None:
        """Copy ``data`` (block ``i``'s bytes) in."""

    def target(self, i: int) -> memoryview | None:
        """A writable view for block ``i`` to be read into directly, or None."""


class BytesSink:
    """``get``'s sink: a ``bytes`` object per block (``blocks[:n]`` after the read)."""

    def __init__(self, nblocks: int):
        self.blocks: list[bytes | None] = [None] * nblocks

    def write(self, i: int, data) -> None:
        self.blocks[i] = bytes(data)

    def target(self, i: int) -> None:
        return None


class BufferSink:
    """``get_into``'s sink: the blocks back to back in one caller's buffer, read into directly."""

    def __init__(self, view: memoryview, block_bytes: int):
        self._view, self._bb = view, block_bytes

    def write(self, i: int, data) -> None:
        self._view[i * self._bb : (i + 1) * self._bb] = data

    def target(self, i: int) -> memoryview | None:
        return None if self._view.readonly else self._view[i * self._bb : (i + 1) * self._bb]


def match_prefix(tiers: TierSet, nst: NamespaceState, tokens, extra: bytes, touch: bool):
    """The cached prefix, cut before the first block whose bytes are lost."""
    m = nst.tree.match(tokens, extra, touch=touch)
    if tiers.lost:
        for i, meta in enumerate(m.blocks):
            if meta.handle.lost:
                del m.blocks[i:]
                m.num_tokens = i * nst.spec.block_tokens
                break
    return m


def cached_tokens(tiers: TierSet, nst: NamespaceState, tokens, extra: bytes) -> int:
    """``match_prefix(...).num_tokens`` for a lookup: the tree's count alone while no block
    is lost (the common case), the full match and its cut otherwise."""
    if tiers.lost:
        return match_prefix(tiers, nst, tokens, extra, False).num_tokens
    return nst.tree.cached_tokens(tokens, extra)


def cached_tokens_many(tiers: TierSet, nst: NamespaceState, tokens_list: Sequence,
                       extras: Sequence[bytes] | None) -> tuple[list[int], int]:
    """``cached_tokens`` of each token array (``as_tokens``'d here when needed) and the
    whole blocks they ask about together. A batch of kept prompts (a scheduler's next step
    over the prompt memo) is answered from the tree's kept answers, with no pass a prompt
    in Python; the caller's objects are checked only when something must be walked."""
    plain = extras is None or not any(extras)
    kept = nst.tree.kept_answers(tokens_list) if plain and not tiers.lost else None
    if kept is not None:
        return kept
    arrs = as_tokens_many(tokens_list)
    if plain and not tiers.lost:
        found = nst.tree.cached_tokens_many(arrs)
    else:
        found = [cached_tokens(tiers, nst, arr, bytes(e))
                 for arr, e in zip(arrs, extras or repeat(b""))]
    return found, nst.tree.whole_blocks(arrs)


class ReadPath:
    def __init__(self, lock: StoreLock, namespaces: NamespaceTable, tiers: TierSet,
                 leases: LeaseTable, cpu: CPUTier, config: StoreConfig,
                 is_closed: Callable[[], bool]):
        self._lock = lock
        self._namespaces = namespaces
        self._tiers = tiers
        self._leases = leases
        self._cpu = cpu
        self.config = config
        self._is_closed = is_closed
        self._writeback: WriteBack | None = None  # set once the SSD tier is open
        self._promoter: Promoter | None = None
        self.counts = ReadCounters(tiers.tiers, config.ssd_enabled)  # hits, misses, bytes served

    def attach(self, writeback: WriteBack | None, promoter: Promoter | None) -> None:
        self._writeback, self._promoter = writeback, promoter

    def _check_open(self) -> None:
        if self._is_closed():
            raise InvalidArgument("store is closed")

    # -- copies out --------------------------------------------------------------------
    def get(self, ns: bytes, tokens, extra: bytes = b"") -> tuple[int, list[bytes]]:
        """``(tokens, [bytes per block])`` of the cached prefix."""
        sinks: list[BytesSink] = []

        def open_sink(nblocks: int) -> BytesSink:
            sinks.append(BytesSink(nblocks))
            return sinks[0]

        n = self.read_prefix(ns, tokens, extra, open_sink)
        if not n:
            return 0, []
        return n, sinks[0].blocks[: n // self._namespaces.get(ns).spec.block_tokens]

    def get_into(self, ns: bytes, tokens, alloc: Alloc, extra: bytes = b""):
        """``(tokens, buffer)``: the cached prefix's blocks back to back in ``alloc(nbytes)``.

        ``alloc`` is called once, with the bytes of the whole cached prefix;
        ``(0, None)`` on a miss. Blocks on SSD only are read straight into the
        buffer. A block that fails to read from the SSD ends the prefix there
        (fewer tokens than the buffer holds; the rest of the buffer is undefined).
        """
        bb = self._namespaces.get(ns).spec.block_bytes  # a spec never changes: no lock
        got = []

        def open_sink(nblocks: int) -> BufferSink:
            got.append(alloc(nblocks * bb))
            return BufferSink(byte_view(got[0]), bb)

        n = self.read_prefix(ns, tokens, extra, open_sink)
        return (n, got[0]) if n else (0, None)

    def read_prefix(self, ns: bytes, tokens, extra: bytes,
                    open_sink: Callable[[int], BlockSink]) -> int:
        """Copy the cached prefix out through ``open_sink(nblocks)``; returns tokens.

        ``open_sink`` is called once, outside the lock, when at least one block is cached.
        """
        arr = as_tokens(tokens)
        with self._lock:
            self._check_open()
            nst = self._namespaces.get(ns)
            m = match_prefix(self._tiers, nst, arr, extra, True)
            blocks = m.blocks
            nst.tree.lock(m.node)
            plan, sources = [], []  # sources[i]: the tier block i is served from (None: SSD)
            for meta in blocks:
                st = meta.handle
                sources.append(st.tier if st.slot is not None else None)
                if st.slot is not None:
                    st.tier.policy.on_access(policy_key(nst.fp, meta.key))
                    if st.tier is self._cpu:
                        plan.append(("slot", st.slot))
                    else:  # GPU slots are only touched under the lock
                        plan.append(("bytes", st.tier.read(st.slot)))
                elif st.staged is not None:  # served from the SSD writer's staging buffer
                    plan.append(("bytes", st.staged))
                else:
                    plan.append(("ssd", st.ssd))
        n, lost, promote = 0, None, []
        try:
            sink = open_sink(len(plan)) if plan else None
            reads = []  # (i, location, target view, our own buffer or None)
            for i, (kind, src) in enumerate(plan):
                if kind == "slot":
                    sink.write(i, self._cpu.view(src))
                elif kind == "bytes":
                    sink.write(i, src)
                else:
                    view = sink.target(i)
                    own = None if view is not None else bytearray(nst.spec.block_bytes)
                    reads.append((i, src, view if own is None else memoryview(own), own))
            n = len(plan)
            errors = self._writeback.read_many_into([r[1] for r in reads],
                                                    [r[2] for r in reads]) if reads else []
            for (i, _, _, own), err in zip(reads, errors):
                if err is not None:
                    n, lost = i, blocks[i].key
                    break
                if own is not None:
                    sink.write(i, own)
                promote.append(Promotion(nst.fp, blocks[i].key, blocks[i].handle, own))
        finally:
            self._lock.defer(partial(self._finish_read, nst, m.node, lost, sources[:n],
                                     len(arr) // nst.spec.block_tokens))
        if promote and self.config.promote_on_get:
            self._promoter.submit_many(promote)
        return n * nst.spec.block_tokens

    def _finish_read(self, nst: NamespaceState, node, lost: bytes | None,
                     sources: list, requested: int) -> None:
        nst.tree.unlock(node)
        if lost is not None:
            self._tiers.lose(nst, lost)
        if self._tiers.lost:
            self._tiers.retry_lost()
        self.counts.read(nst, sources, requested)

    # -- read leases --------------------------------------------------------------------
    def lease_read(self, ns: bytes, tokens, extra: bytes = b"") -> Lease:
        arr = as_tokens(tokens)
        cpu, tiers = self._cpu, self._tiers
        with self._lock:
            self._check_open()
            nst = self._namespaces.get(ns)
            m = match_prefix(tiers, nst, arr, extra, True)
            nst.tree.lock(m.node)
            blocks, fetch = m.blocks, []
            sources = [meta.handle.tier if meta.handle.slot is not None else None
                       for meta in blocks]  # where each was found (None: staged or SSD)
            for i, meta in enumerate(blocks):
                st = meta.handle
                if st.slot is not None and st.tier is cpu:
                    continue
                if st.slot is not None:  # GPU: one device-to-host copy into the arena
                    ok = tiers.to_cpu(nst, meta.key, st, st.tier.view(st.slot))
                elif st.staged is not None:  # from the staging buffer
                    ok = tiers.to_cpu(nst, meta.key, st, st.staged)
                else:  # SSD only: a slot to read it into, outside the lock
                    slot = tiers.alloc(cpu, nst.spec.block_bytes, nst.spec.tenant)
                    ok = slot is not None
                    if ok:
                        fetch.append((i, meta, slot, st.ssd))
                if not ok:
                    del blocks[i:]
                    break
            if not fetch:
                return self._open_read(nst, m.node, blocks, len(arr), sources, None)
        errors = self._writeback.read_many_into([f[3] for f in fetch],
                                                [cpu.view(f[2]) for f in fetch])
        with self._lock:
            n, lost = len(blocks), None
            for (i, meta, slot, _), err in zip(fetch, errors):
                st = meta.handle
                if i < n and err is None and not st.lost:
                    tiers.place(nst, meta.key, st, slot)
                    continue
                cpu.free(slot)
                if i < n:
                    n, lost = i, (meta.key if err is not None else None)
            return self._open_read(nst, m.node, blocks[:n], len(arr), sources, lost)

    def _open_read(self, nst: NamespaceState, node, blocks, ntokens: int, sources: list,
                   lost: bytes | None) -> Lease:
        """Open the read lease of ``blocks`` (CPU-resident now; under the lock)."""
        cpu = self._cpu
        self.counts.read(nst, sources[: len(blocks)], ntokens // nst.spec.block_tokens)
        for meta in blocks:
            cpu.policy.on_access(policy_key(nst.fp, meta.key))
            cpu.settle(meta.handle.slot)  # a remote reader maps the arena directly
        rec = self._leases.open(nst, node, cpu, len(blocks) * nst.spec.block_tokens,
                                [meta.handle.slot for meta in blocks])
        if lost is not None:  # pinned by this lease: marked lost, removed on release
            self._tiers.lose(nst, lost)
        return rec.lease

    # -- promotion (the Promoter's thread) ----------------------------------------------
    def promote_many(self, items: list[Promotion]) -> int:
        """Bring SSD hits back into the CPU tier; returns how many were installed.

        Slots are allocated under the lock, filled without it (from the bytes a
        reader already has, or one ``read_many_into`` batch), installed under it.
        A block deleted, replaced, lost or promoted meanwhile keeps what it has.
        """
        cpu, tiers = self._cpu, self._tiers
        todo: list[_Fill] = []
        with self._lock:
            if self._is_closed():
                return 0
            for item in items:
                nst = self._namespaces.by_fp.get(item.fp)
                st = item.state
                if nst is None or nst.state(item.key) is not st or st.slot is not None or st.lost:
                    continue
                data = item.data if item.data is not None else st.staged
                if data is None and st.ssd is None:
                    continue
                slot = tiers.alloc(cpu, nst.spec.block_bytes, nst.spec.tenant)
                if slot is None:
                    break
                todo.append(_Fill(nst, item.key, st, slot, data, st.ssd))
        reads = [f for f in todo if f.data is None]
        for f in todo:
            if f.data is not None:
                cpu.view(f.slot)[:] = f.data
        errors = self._writeback.read_many_into([f.loc for f in reads],
                                                [cpu.view(f.slot) for f in reads])
        for f, err in zip(reads, errors):
            f.error = err
        done = 0
        with self._lock:
            for f in todo:
                if (f.error is None and not self._is_closed()
                        and f.nst.state(f.key) is f.state and not f.state.lost):
                    tiers.place(f.nst, f.key, f.state, f.slot)
                    done += 1
                else:
                    cpu.free(f.slot)
        return done
