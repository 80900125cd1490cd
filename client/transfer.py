"""Block transfers between device KV caches and a namespace, ordered by events.

The client's GPU path, written once over ``kvstore.kernels.streams.Timeline``
so that the same code runs on CUDA caches (``CudaTimeline``) and on CPU
caches (``HostTimeline``, synchronous), which is how CI tests it.

A save (device -> store)::

    compute stream:   ... forward writes KV ... record(E_written)
    transfer stream:  wait(E_written) -> pack kernel into a device staging buffer
                      -> record(E_packed) -> one copy per block, staging -> arena
                      slot (or -> a pinned host buffer for tcp/ucx)
                      -> record(E_copied)
    host:             after(E_copied): commit the write lease (or put the buffer)
    next step:        compute waits for E_packed before it writes KV again
                      (vLLM may hand the blocks to another request)

A load (store -> device)::

    host:             read lease of the cached prefix (pinned arena slots)
    compute stream:   record(E_ready)        (the blocks' previous users are done)
    transfer stream:  wait(E_ready) -> one copy per block, arena slot -> device
                      staging -> record(E_copied) -> unpack kernel into the
                      cache -> record(E_loaded)
    host:             after(E_copied): release the read lease
    compute stream:   wait(E_loaded) before the attention reads the layer

Where device memory *is* host memory (CPU caches) there is no staging: the
kernels pack into and unpack out of the arena slots directly, and
``after`` runs at once. With codec ``none`` layer ``l`` of every payload is
one contiguous slice, so saves and loads go layer by layer (the vLLM
connector packs a layer as soon as its attention has written it, and the
forward waits for one layer's load at a time); quantized codecs mix the layers
in each section and move whole blocks (after the last layer; before the
first). On host caches, where nothing runs beside the copies, a load and a
save of layers no one packed yet go in one call over whole rows (one pass of
checks and views instead of one per layer).

The arena is registered with CUDA (``kvstore.kernels.pinning``) when a
timeline with device memory is used, so the copies above are DMA.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from kvstore.client.codec import _as_uint8
from kvstore.errors import InvalidArgument
from kvstore.kernels import SKIP_BLOCK, EngineLayout, pack_paged, pinning, unpack_paged
from kvstore.kernels.streams import Event, Timeline, shared
from kvstore.tokens import as_tokens, full_blocks

log = logging.getLogger(__name__)

STREAM = "kvstore"


def geometry(ns, engine: EngineLayout) -> tuple[int, int]:
    """``(T, R)``: tokens per store block, engine blocks per store block."""
    T = ns.block_tokens
    if T % engine.block_size:
        raise InvalidArgument(f"store block_tokens {T} is not a multiple of the engine's "
                              f"block_size {engine.block_size}")
    return T, T // engine.block_size


def layer_rows(rows: Sequence[torch.Tensor], layout, layer: int) -> list[torch.Tensor]:
    """Layer ``layer`` of each codec-``none`` payload row: one contiguous slice."""
    per = layout.block_nbytes // layout.num_layers
    return [r[layer * per: (layer + 1) * per] for r in rows]


def one_layer(layout):
    return dataclasses.replace(layout, num_layers=1)


def host_buffer(shape, pinned: bool) -> torch.Tensor:
    """A host uint8 buffer, page-locked when device copies target it."""
    if pinned:
        try:
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        except RuntimeError:  # no CUDA to pin with: pageable
            pass
    return torch.empty(shape, dtype=torch.uint8)


def timeline_of(tensors, timeline: Timeline | None) -> Timeline:
    """``timeline`` or the one of ``tensors``' device; pins the arena for a device."""
    tl = timeline or shared(tensors[0].device)
    if tl.separate_memory:
        pinning.enable()
    return tl


@dataclass
class _Save:
    """One prefix being saved: where its payloads go and what to do once they are there."""

    label: str
    ids: list[int]  # engine block ids of the blocks to pack
    dest: list[torch.Tensor]  # host rows: arena slots of a write lease, or a host buffer
    finish: Callable[[], int]  # commit / put; returns tokens now cached
    abort: Callable[[], None]
    out: list[torch.Tensor] = field(default_factory=list)  # rows the kernels write
    stage: torch.Tensor | None = None  # device staging (kept alive until copied)


class PagedTransfers:
    """Saves and loads of one engine's paged caches, on a dedicated stream.

    ``caches``: one tensor per layer in ``engine``'s layout (a view the kernels
    take). ``on_saved(label, tokens_cached)`` runs on the host once a save
    reached the store (after its copy's event).
    """

    def __init__(self, ns, caches: Sequence[torch.Tensor], engine: EngineLayout,
                 timeline: Timeline | None = None,
                 on_saved: Callable[[str, int], None] | None = None):
        self.ns, self.caches, self.engine = ns, list(caches), engine
        self.tl = timeline_of(self.caches, timeline)
        self.stream = self.tl.stream(STREAM)
        self.T, self.R = geometry(ns, engine)
        self.layout = ns.layout
        self.codec = ns.codec.codec
        self.nbytes = ns.spec.block_bytes
        self.per_layer = self.codec == "none"
        self.on_saved = on_saved
        self._layer1 = one_layer(self.layout)
        self._layer_ready: dict[int, Event] = {}
        self._waited: set[int] = set()
        self._last_packed: Event | None = None
        self._saves: list[_Save] | None = None  # this step's, once opened
        self._packed_layers: set[int] = set()

    @property
    def saving(self) -> bool | None:
        """None before this step's saves were opened; else whether any is in progress."""
        return None if self._saves is None else bool(self._saves)

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    # -- steps ------------------------------------------------------------------
    def begin_step(self) -> None:
        """Before the forward: it must not write KV the last step's saves still read."""
        self.tl.wait(self.tl.compute(), self._last_packed, "packed")
        self._last_packed = None
        self._layer_ready.clear()
        self._waited.clear()

    def wait_layer(self, layer: int) -> None:
        """The compute stream waits until layer ``layer``'s loads of this step landed."""
        ev = self._layer_ready.pop(layer, None)
        if ev is not None and ev.id not in self._waited:  # one event may cover every layer
            self._waited.add(ev.id)
            self.tl.wait(self.tl.compute(), ev)

    def wait_all_layers(self) -> None:
        for layer in list(self._layer_ready):
            self.wait_layer(layer)

    # -- loads --------------------------------------------------------------------
    def load(self, tokens, block_ids: Sequence[int], extra: bytes = b"", skip: int = 0,
             wait: bool = False) -> int:
        """Enqueue the load of the cached prefix of ``tokens`` into ``block_ids``, leaving
        the engine blocks of tokens ``[0, skip)`` alone; returns the tokens the store had.
        ``wait``: the host waits for the copies and lets the lease go itself."""
        if skip % self.engine.block_size:
            raise InvalidArgument(f"skip {skip} is not a multiple of the engine's block_size "
                                  f"{self.engine.block_size}")
        toks, ids, ns = as_tokens(tokens), list(block_ids), self.ns
        be, tl = ns.backend, self.tl
        ready = tl.record(tl.compute(), "load-ready")
        if not be.capabilities.leases:
            n, payloads = be.get(ns.id, toks, extra)
            rows = [p if isinstance(p, torch.Tensor) else _as_uint8(p) for p in payloads]
            done = self._unpack(rows, n, ids, skip, ready)
            if done is not None:  # the received payloads live until copied
                tl.when_done(done, lambda: rows.clear(), "free-received", wait)
            return n
        lease = be.lease_read(ns.id, toks, extra)
        try:
            n = lease.num_tokens
            rows = [_as_uint8(be.read_slot(slot)) for slot in lease.slots]
            done = self._unpack(rows, n, ids, skip, ready)
        except BaseException:
            be.release(lease.lease_id)
            raise
        if done is None:
            be.release(lease.lease_id)
        else:
            tl.when_done(done, lambda: be.release(lease.lease_id), "release", wait)
        return n

    def _unpack(self, rows, n: int, ids: list[int], skip: int, ready: Event) -> Event | None:
        """Enqueue copy-in + unpack; returns the event after which ``rows`` are no longer read."""
        T, R, tl, s = self.T, self.R, self.tl, self.stream
        count = min(n // T, len(rows), len(ids) // R)
        first = skip // T
        if first >= count:
            return None
        ids = ids[first * R: count * R]
        held = skip // self.engine.block_size - first * R
        ids[:held] = [SKIP_BLOCK] * held
        rows = rows[first:count]
        tl.wait(s, ready)
        copied = None
        if tl.separate_memory:
            stage = tl.empty((len(rows), self.nbytes), torch.uint8, s)
            for i, row in enumerate(rows):
                tl.copy(stage[i], row, s, "h2d")
            copied = tl.record(s, "h2d-done")
            rows = list(stage.unbind(0))
        with tl.on(s):
            ids_dev = torch.tensor(ids, dtype=torch.int64)  # checked on the host, uploaded on s
            if self.per_layer and tl.separate_memory:  # host caches: one call, no pipeline
                for layer in range(self.num_layers):
                    tl.kernel(s, f"unpack:layer{layer}")
                    unpack_paged(layer_rows(rows, self.layout, layer), [self.caches[layer]],
                                 ids_dev, self._layer1, self.codec, self.engine)
                    self._layer_ready[layer] = tl.record(s, f"loaded:layer{layer}")
            else:
                tl.kernel(s, "unpack")
                unpack_paged(rows, self.caches, ids_dev, self.layout, self.codec, self.engine)
                ev = tl.record(s, "loaded")
                for layer in range(self.num_layers):
                    self._layer_ready[layer] = ev
        return copied or self._layer_ready[self.num_layers - 1]

    # -- saves --------------------------------------------------------------------
    def open_saves(self, specs) -> None:
        """This step's saves: ``specs`` are ``(label, tokens, block_ids, extra)``. Leases
        are taken now (host calls); nothing is packed yet."""
        if self._saves is not None:
            return
        self._saves = []
        try:
            for label, tokens, block_ids, extra in specs:
                job = self._open(label, as_tokens(tokens), list(block_ids), extra)
                if job is not None:
                    self._saves.append(job)
        except BaseException:
            self._abort()
            raise

    def _open(self, label: str, toks, ids: list[int], extra: bytes) -> _Save | None:
        ns, T, R, tl = self.ns, self.T, self.R, self.tl
        be = ns.backend
        n = min(full_blocks(toks, T), len(ids) // R)
        if n == 0:
            return None
        toks = toks[: n * T]
        if be.capabilities.leases:
            lease = be.lease_write(ns.id, toks, extra)
            if not lease.slots:  # all cached already
                stored = be.commit_lease(lease.lease_id)
                if self.on_saved:
                    self.on_saved(label, stored)
                return None
            first = lease.first_block
            dest = [_as_uint8(be.read_slot(slot)) for slot in lease.slots]
            job = _Save(label, ids[first * R: (first + len(dest)) * R], dest,
                        lambda: be.commit_lease(lease.lease_id),
                        lambda: be.release(lease.lease_id))
        else:
            buf = host_buffer((n, self.nbytes), pinned=tl.separate_memory)
            rows = list(buf.unbind(0))
            job = _Save(label, ids[: n * R], rows,
                        lambda: be.put(ns.id, toks, [r.numpy() for r in rows], extra),
                        lambda: None)
        if tl.separate_memory:
            job.stage = tl.empty((len(job.dest), self.nbytes), torch.uint8, self.stream)
            job.out = list(job.stage.unbind(0))
        else:
            job.out = job.dest
        return job

    def save_layer(self, layer: int) -> None:
        """Layer ``layer``'s KV of this step is written: pack it now (codec ``none``)."""
        if not self.per_layer or not self._saves or layer in self._packed_layers:
            return
        tl, s = self.tl, self.stream
        tl.wait(s, tl.record(tl.compute(), f"written:layer{layer}"))
        self._pack([layer])

    def _pack(self, layers: list[int] | None) -> None:
        tl, s = self.tl, self.stream
        try:
            with tl.on(s):
                for job in self._saves:
                    ids = torch.tensor(job.ids, dtype=torch.int64)  # uploaded on s
                    if layers is None:
                        tl.kernel(s, f"pack:{job.label}")
                        pack_paged(self.caches, ids, self.layout, self.codec, self.engine,
                                   out=job.out)
                        continue
                    for layer in layers:
                        tl.kernel(s, f"pack:{job.label}:layer{layer}")
                        pack_paged([self.caches[layer]], ids, self._layer1, self.codec,
                                   self.engine, out=layer_rows(job.out, self.layout, layer))
        except BaseException:
            self._abort()
            raise
        self._packed_layers.update(layers if layers is not None else range(self.num_layers))

    def flush_saves(self, wait: bool = False) -> None:
        """End of the step: pack what is left, copy to the store, commit once copied.
        Never waits for the copies (``wait``: the host waits and commits itself)."""
        jobs = self._saves or []
        tl, s = self.tl, self.stream
        if jobs:
            missing = [la for la in range(self.num_layers) if la not in self._packed_layers]
            if missing:
                tl.wait(s, tl.record(tl.compute(), "written"))
                # every layer at once where nothing overlaps anyway (quantized codecs; host
                # caches: the copies are the host's own work): one call over whole rows
                whole = not self.per_layer or (len(missing) == self.num_layers
                                               and not tl.separate_memory)
                self._pack(None if whole else missing)
            self._last_packed = tl.record(s, "packed")
        for job in jobs:
            if tl.separate_memory:
                for dst, src in zip(job.dest, job.out):
                    tl.copy(dst, src, s, "d2h")
            copied = tl.record(s, f"copied:{job.label}")
            tl.when_done(copied, self._finisher(job), f"commit:{job.label}", wait)
        self._saves = None
        self._packed_layers = set()

    def _finisher(self, job: _Save) -> Callable[[], None]:
        def finish() -> None:
            job.stage = None
            try:
                stored = job.finish()
            except Exception:
                job.abort()
                raise
            if self.on_saved:
                self.on_saved(job.label, stored)
        return finish

    def _abort(self) -> None:
        """Drop this step's saves (release their leases, after what is in flight)."""
        jobs, self._saves, self._packed_layers = self._saves or [], None, set()
        if not jobs:
            return
        ev = self.tl.record(self.stream, "aborted")
        for job in jobs:
            self.tl.after(ev, job.abort, f"release:{job.label}")

    def drain(self) -> None:
        """Wait until every save reached the store and every lease was let go."""
        self.tl.drain()

    def close(self) -> None:
        self._abort()
        self.tl.close()
