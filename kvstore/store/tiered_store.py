"""TieredStore: the ``BlockStore`` over GPU (optional), CPU and SSD (optional) tiers.

One ``RadixTree`` per namespace indexes every cached block, whichever tier
holds it. One store lock guards all metadata (trees, policies, allocators,
leases); payload copies run outside it, on blocks whose path is locked in the
tree (pinned: never evicted, demoted or overwritten while locked)::

    put ──> lease_write: lock path, allocate slots (evicting)   [lock]
            copy payloads into the slots                        [no lock]
            commit: insert into the tree, unlock                [lock]
    get ──> match + lock path                                   [lock]
            copy out: memory slot / staged bytes / SSD read     [no lock]
            unlock, queue promotions of SSD hits                [lock]

Puts land in the top tier. Blocks evicted from CPU are demoted to SSD by the
``SSDLink`` workers (write-back), SSD hits are promoted back to CPU by the
promotion thread; neither ever holds the lock during I/O. See
``tier_movement`` for the eviction rules and ``ssd_link`` for the writer.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Sequence

from kvstore.errors import CapacityError, InvalidArgument, LayoutMismatch, NotFound, StorageError
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store.block_state import CompositeTreeView, NamespaceState
from kvstore.store.buffers import byte_view
from kvstore.store.config import StoreConfig
from kvstore.store.control import StoreControl
from kvstore.store.cpu_tier import CPUTier
from kvstore.store.gpu_tier import GPUTier, cuda_available
from kvstore.store.io_ops import IOOps
from kvstore.store.leases import LeaseOps
from kvstore.store.rebuild import rebuild_from_ssd
from kvstore.store.ssd_link import SSDLink
from kvstore.store.stats import StatsOps
from kvstore.store.tier_movement import TierMovement
from kvstore.store_api import Capabilities
from kvstore.tokens import as_tokens

log = logging.getLogger("kvstore.store")


def _default_ssd_factory(directory, capacity_bytes, segment_bytes, compression):
    from kvstore.ssd.tier import SSDTier

    return SSDTier(directory, capacity_bytes, segment_bytes=segment_bytes, compression=compression)


class TieredStore(StoreControl, LeaseOps, IOOps, StatsOps, TierMovement):
    """An in-process ``BlockStore``. ``TieredStore(StoreConfig(cpu_bytes="4GiB", ...))``."""

    zero_copy = True  # clients may use leases + read_slot (same process or shm)

    # -- TEMP shim (branch contracts): the ManagedStore members the contracts branch
    # codes against, until the store's rebuild lands; drop this commit at merge.
    capabilities = Capabilities(leases=True)

    @property
    def may_block(self) -> bool:
        return self.ssd is not None

    @property
    def read_only(self) -> bool:
        return self.draining

    def get_into(self, ns: bytes, tokens, alloc, extra: bytes = b""):
        if not callable(alloc):  # the old get_into(ns, tokens, out, extra) -> tokens
            return self._get_into_buffer(ns, tokens, alloc, extra)
        with self._lock:
            bb = self._nst(ns).spec.block_bytes
        n = self.lookup(ns, tokens, extra)
        if n == 0:
            return 0, None
        buf = alloc(n // self._nst(ns).spec.block_tokens * bb)
        got = self._get_into_buffer(ns, tokens, buf, extra)
        return (got, buf) if got else (0, None)
    # -- end of the TEMP shim

    def __init__(self, config: StoreConfig | None = None, **settings):
        self.config = config = config if config is not None else StoreConfig(**settings)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._ns: dict[bytes, NamespaceState] = {}
        self._dirty: dict[bytes, None] = {}  # resident blocks with no SSD copy, put order
        self._lost: set[bytes] = set()
        self._leases: dict = {}
        self._lease_ids = itertools.count(1)
        self._budget_veto = False
        self._closed = False
        self.ssd: SSDLink | None = None
        self._tiers = []
        if config.gpu_bytes and cuda_available():
            self._tiers.append(GPUTier(config.gpu_bytes, 0, config.gpu_device))
        elif config.gpu_bytes:
            log.warning("gpu_bytes set but CUDA is not available: no GPU tier")
        self.cpu = CPUTier(config.cpu_bytes, config.cpu_page_bytes, config.arena_dir)
        self._tiers.append(self.cpu)
        view = CompositeTreeView(self._ns)
        for tier in self._tiers:
            tier.policy = config.make_policy(getattr(config, f"{tier.name}_policy"))
            tier.policy.bind(view)
        try:
            if config.ssd_enabled:
                factory = config.ssd_factory or _default_ssd_factory
                ssd = factory(config.ssd_dir, config.ssd_bytes, config.segment_bytes,
                              config.ssd_compression)
                self.ssd = SSDLink(ssd, self, config.demotion_threads, config.demotion_buffer_bytes)
                rebuild_from_ssd(self)
        except BaseException:
            self.close()
            raise
        self._promotions: queue.SimpleQueue = queue.SimpleQueue()
        self._promoter = threading.Thread(target=self._promote_loop, name="kvstore-promote",
                                          daemon=True)
        self._promoter.start()

    # -- namespaces -------------------------------------------------------------
    def register(self, spec: NamespaceSpec) -> bytes:
        fp = spec.fingerprint
        with self._lock:
            self._check_open()
            nst = self._ns.get(fp)
            if nst is not None:
                if nst.spec != spec:
                    raise LayoutMismatch("namespace fingerprint clash with a different spec")
                return fp
            for tier in self._tiers:
                if not tier.fits(spec.block_bytes):
                    raise CapacityError(f"a {spec.block_bytes}-byte block cannot fit the {tier.name} tier")
            self._ns[fp] = NamespaceState.create(spec)
            manifest = {f: n.spec.to_dict() for f, n in self._ns.items()}
        if self.ssd is not None:
            try:
                self.ssd.ssd.save_namespaces(manifest)
            except (StorageError, OSError) as exc:
                log.error("cannot save the namespace manifest: %s", exc)
        return fp

    def namespaces(self) -> list[NamespaceSpec]:
        with self._lock:
            return [n.spec for n in self._ns.values()]

    def _nst(self, ns: bytes) -> NamespaceState:
        nst = self._ns.get(ns)
        if nst is None:
            raise NotFound(f"unknown namespace {bytes(ns).hex()}")
        return nst

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument("store is closed")

    def _match(self, nst: NamespaceState, tokens, extra: bytes, touch: bool):
        m = nst.tree.match(tokens, extra, touch=touch)
        if self._lost:
            for i, meta in enumerate(m.blocks):
                if meta.handle.lost:
                    del m.blocks[i:]
                    m.num_tokens = i * nst.spec.block_tokens
                    break
        return m

    # -- the BlockStore API -----------------------------------------------------
    def lookup(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        arr = as_tokens(tokens)
        with self._lock:
            return self._match(self._nst(ns), arr, extra, False).num_tokens

    def put(self, ns: bytes, tokens, payloads: Sequence, extra: bytes = b"") -> int:
        arr = as_tokens(tokens)
        with self._lock:
            self._check_open()
            bt = self._nst(ns).spec.block_tokens
        nblocks = min(len(arr) // bt, len(payloads))
        rec = self._lease_write(ns, arr[: nblocks * bt], extra, self._tiers[0])
        try:
            for j, slot in enumerate(rec.lease.slots):
                rec.tier.write(slot, payloads[rec.lease.first_block + j])
        except BaseException:
            self.release(rec.lease.lease_id)
            raise
        committed = self.commit_lease(rec.lease.lease_id)
        if nblocks == len(arr) // bt:
            return committed
        return self.lookup(ns, arr, extra)  # payloads for fewer blocks than tokens

    def get(self, ns: bytes, tokens, extra: bytes = b"") -> tuple[int, list[bytes]]:
        out: list[bytes] = []
        n = self._read_prefix(ns, tokens, extra, lambda i, data: out.append(bytes(data)))
        return n, out

    def _get_into_buffer(self, ns: bytes, tokens, out, extra: bytes = b"") -> int:
        """Copy the cached prefix's payloads into ``out`` (one writable buffer of at least
        n * block_bytes bytes, blocks back to back); returns the tokens copied."""
        dst = byte_view(out)
        with self._lock:
            bb = self._nst(ns).spec.block_bytes

        def sink(i, data):
            dst[i * bb : (i + 1) * bb] = data

        return self._read_prefix(ns, tokens, extra, sink, limit=len(dst) // bb)

    def delete(self, ns: bytes, tokens, extra: bytes = b"") -> int:
        arr = as_tokens(tokens)
        with self._lock:
            nst = self._nst(ns)
            m = nst.tree.match(arr, extra)
            return self._remove_subtree(nst, m.blocks[0].key) if m.blocks else 0

    def flush(self) -> None:
        """Make every block acknowledged before the call durable on SSD (no-op without SSD)."""
        if self.ssd is None:
            return
        with self._lock:
            self._check_open()
            for pk in list(self._dirty):
                nst, key, meta = self._lookup_pk(pk)
                st = meta.handle
                node = nst.tree.node_of(key)
                nst.tree.lock(node)
                st.writing = True
                del self._dirty[pk]
                self.ssd.enqueue("write", nst.fp, key, state=st,
                                 header=self._header(nst, key, st), pin=node)
            seq = self.ssd.last_seq
            while not self.ssd.done_up_to(seq):
                self._cond.wait()
        self.ssd.flush()

    def arena(self):
        return self.cpu.info()

    def read_slot(self, slot) -> memoryview:
        return self.cpu.view(slot)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            persist = self.config.persist_on_close and self.ssd is not None
        if persist and self.ssd.usable:
            try:
                self.flush()
            except StorageError as exc:
                log.error("flush on close failed: %s", exc)
        with self._lock:
            self._closed = True
        if getattr(self, "_promoter", None) is not None:
            self._promotions.put(None)
            self._promoter.join()
        if self.ssd is not None:
            self.ssd.stop()  # drains the queues: staged demotions reach the disk
            try:
                if self.ssd.usable:
                    self.ssd.ssd.flush()
            except (StorageError, OSError) as exc:
                log.error("SSD flush on close failed: %s", exc)
            self.ssd.ssd.close()
        for tier in self._tiers:
            tier.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
