"""Worker half of the connector: copies between vLLM's paged cache and the store.

The caches vLLM registers decide the layout, at start
(``kvstore.client.vllm_layouts``): FlashAttention / FlashInfer caches
(NHD or HND strides, on a GPU or on the CPU) are served as the kernels'
``vllm_flash`` views; the CPU backend's caches by the layout
``vllm_cpu_paged.select_layout`` measures for the engine's ISA (on first
use). Anything else is refused at registration with a message that says why.

Per engine step, with the step's ``KVStoreConnectorMetadata`` bound, the
block moves are ``kvstore.client.transfer.PagedTransfers`` on a dedicated
stream, ordered by events against the forward (``docs/gpu.md`` draws them):

* ``load`` (``start_load_kv``, before the forward): the compute stream
  first waits for the last step's packs (vLLM may have handed those blocks to
  another request); then, per LoadSpec, the cached prefix is leased, copied
  to the device once and unpacked straight into the request's vLLM blocks on
  the transfer stream, leaving the blocks of tokens ``[0, skip)`` (vLLM's own
  prefix cache hits) alone. A prefix that vanished since the lookup loads
  what is left and reports the remaining blocks to vLLM as load errors, which
  it recomputes (``kv_load_failure_policy="recompute"``).
* ``wait_layer`` (``wait_for_layer_load``, before each attention layer):
  the compute stream waits for that layer's load (codec ``none``: each layer
  is unpacked and signalled on its own; quantized codecs: all layers at once).
* ``save_layer`` (``save_kv_layer``, after each attention layer): codec
  ``none``: the transfer stream waits for the layer's KV and packs it into
  the save's staging at once, overlapping the next layers' compute.
* ``flush_saves`` (``wait_for_save``, end of step): pack what is left, copy
  each block once to its arena slot (or a pinned buffer for tcp/ucx), and
  commit the write lease on the host once that copy's event completed. The
  engine never waits for a save to reach the store.

On CPU caches the same code runs synchronously (``HostTimeline``): the
kernels' torch reference packs into and unpacks out of the arena slots
directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from kvstore.client.transfer import PagedTransfers
from kvstore.client.vllm_cpu_paged import select_layout
from kvstore.client.vllm_layouts import CPU, classify, flash_engine, flash_views, strides_name
from kvstore.client.vllm_meta import KVStoreConnectorMetadata
from kvstore.client.vllm_settings import EngineGeometry
from kvstore.kernels import EngineLayout
from kvstore.kernels.streams import Timeline

log = logging.getLogger(__name__)


@dataclass
class TransferStats:
    """Totals since start: what the connector moved and how long it took."""

    loaded_tokens: int = 0
    load_seconds: float = 0.0
    saved_tokens: int = 0  # tokens newly stored
    save_seconds: float = 0.0
    failed_blocks: int = 0


def engine_isa(vllm_config, geometry: EngineGeometry) -> str:
    """The ISA vLLM's CPU attention uses for these layers (it decides the block layout)."""
    from vllm.config import get_layers_from_vllm_config
    from vllm.model_executor.layers.attention import Attention

    layers = get_layers_from_vllm_config(vllm_config, Attention, list(geometry.layer_names))
    isas = {getattr(layer, "isa", None) for layer in layers.values()}
    if len(isas) == 1 and None not in isas:
        return isas.pop()
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    return _get_attn_isa(geometry.dtype, geometry.block_size, geometry.head_dim,
                         vllm_config.cache_config.cache_dtype)


def layerwise_hooks(vllm_config) -> bool:
    """Whether vLLM calls ``wait_for_layer_load`` / ``save_kv_layer`` around every
    attention layer of every forward: not inside a full CUDA graph, whose replay runs
    no Python. Then loads are waited for as a whole before the forward."""
    try:
        mode = vllm_config.compilation_config.cudagraph_mode
        return not (mode is not None and mode.has_full_cudagraphs())
    except AttributeError:  # no config (tests), or a vLLM without cudagraph modes
        return True


class WorkerSide:
    def __init__(self, namespace, geometry: EngineGeometry, vllm_config, strict: bool = False,
                 timeline: Timeline | None = None):
        self.ns = namespace
        self.geometry = geometry
        self.vllm_config = vllm_config
        self.strict = strict
        self.timeline = timeline  # None: the caches' device's (tests pass their own)
        self.caches: list[torch.Tensor] = []
        self.kind: str | None = None
        self._engine: EngineLayout | None = None
        self._moves: PagedTransfers | None = None
        self._layer_index: dict[str, int] = {}
        self._load_errors: set[int] = set()
        self._saving: dict[str, tuple[float, int]] = {}
        self._saved: set[str] = set()  # finished requests whose last save is enqueued
        self.stats = TransferStats()
        self.layerwise = layerwise_hooks(vllm_config)

    def register(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Take vLLM's caches; a layout the connector cannot serve is refused here."""
        missing = [name for name in self.geometry.layer_names if name not in kv_caches]
        if missing:
            raise ValueError(f"vLLM registered no cache for layers {missing}")
        g = self.geometry
        caches = [kv_caches[name] for name in g.layer_names]
        self.kind = classify(caches, g.block_size, g.num_kv_heads, g.head_dim, g.dtype)
        self._layer_index = {name: i for i, name in enumerate(g.layer_names)}
        if self.kind == CPU:
            self.caches = caches  # layout chosen on first use, once the ISA is known
            return
        self.caches = flash_views(caches, self.kind)
        self._engine = flash_engine(g.block_size)
        log.info("kvstore: vLLM %s cache (%s strides) on %s, %s", self.kind,
                 strides_name(self.caches[0]), self.caches[0].device, g.dtype)

    @property
    def engine(self) -> EngineLayout:
        """The cache's layout in the kernels' terms (CPU caches: selected on first use,
        when the ISA is known)."""
        if self._engine is None:
            g = self.geometry
            isa = engine_isa(self.vllm_config, g)
            self._engine = select_layout(g.dtype, isa, g.num_kv_heads, g.block_size,
                                         g.head_dim)
            log.info("kvstore: vLLM CPU cache layout %s (isa %s, %s)",
                     self._engine.kind.value, isa, g.dtype)
        return self._engine

    @property
    def moves(self) -> PagedTransfers:
        if self._moves is None:
            self._moves = PagedTransfers(self.ns, self.caches, self.engine, self.timeline,
                                         on_saved=self._on_saved)
        return self._moves

    # -- loads ------------------------------------------------------------
    def load(self, meta: KVStoreConnectorMetadata) -> None:
        moves = self.moves
        moves.begin_step()
        bs = self.geometry.block_size
        for spec in meta.loads:
            start = time.perf_counter()
            end = len(spec.tokens)
            n = self._get_into_cache(spec)
            if n < end:
                lost = spec.block_ids[max(n, spec.skip) // bs : -(-end // bs)]
                self._load_errors.update(lost)
                self.stats.failed_blocks += len(lost)
                log.warning("kvstore: %s loaded %d of %d tokens; %d blocks recompute",
                            spec.req_id, n, end, len(lost))
            self.stats.loaded_tokens += max(0, n - spec.skip)
            self.stats.load_seconds += time.perf_counter() - start
        if not self.layerwise:  # no per-layer hook will run: the forward waits for all
            moves.wait_all_layers()

    def _get_into_cache(self, spec) -> int:
        """Enqueue the unpack of what the store still has of ``spec``; returns its
        leading tokens."""
        ns = self.ns
        try:
            n = ns.availability.call(
                lambda: self.moves.load(spec.tokens, spec.block_ids, spec.extra, spec.skip), 0)
        except Exception as exc:
            if self.strict:
                raise
            ns.availability.report(exc, f"load of {spec.req_id} failed; it recomputes", log)
            return 0
        return min(n, len(spec.tokens))

    def wait_layer(self, layer_name: str) -> None:
        """``wait_for_layer_load``: the forward's stream waits for this layer's loads."""
        layer = self._layer_index.get(layer_name)
        if layer is not None and self._moves is not None:
            self._moves.wait_layer(layer)

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # -- saves ------------------------------------------------------------
    def _open_saves(self, meta: KVStoreConnectorMetadata) -> bool:
        """Lease this step's saves (once per step); False when there is nothing to save."""
        if not meta.saves:
            return False
        moves = self.moves
        if moves.saving is None:
            now = time.perf_counter()
            for spec in meta.saves:
                self._saving[spec.req_id] = (now, spec.stored_before)
            try:
                self.ns.availability.call(lambda: moves.open_saves(
                    [(spec.req_id, spec.tokens, spec.block_ids, spec.extra)
                     for spec in meta.saves]), None)
            except Exception as exc:
                if self.strict:
                    raise
                self.ns.availability.report(exc, "saves of this step dropped", log)
                return False
        return moves.saving is not None

    def save_layer(self, layer_name: str, kv_layer: torch.Tensor,
                   meta: KVStoreConnectorMetadata) -> None:
        """``save_kv_layer``: the layer's KV is written; codec ``none`` packs it now (on
        the transfer stream, after an event on the forward's), the others at the end."""
        layer = self._layer_index.get(layer_name)
        if layer is None or not self._open_saves(meta):
            return
        try:
            self.ns.availability.call(lambda: self.moves.save_layer(layer), None)
        except Exception as exc:
            if self.strict:
                raise
            self.ns.availability.report(exc, f"packing layer {layer_name} failed", log)

    def flush_saves(self, meta: KVStoreConnectorMetadata) -> None:
        """``wait_for_save``: enqueue the rest; each save is committed on the host once
        its copy completed, without the engine waiting for it."""
        try:
            if self._open_saves(meta):
                self.ns.availability.call(self.moves.flush_saves, None)
        except Exception as exc:
            if self.strict:
                raise
            self.ns.availability.report(exc, "saves of this step failed", log)
        finally:
            # a finished request's last save (``SaveSpec.last``, save_decode): its
            # blocks may go once packed (the next forward waits for the pack), failed or not
            self._saved.update(spec.req_id for spec in meta.saves if spec.last)

    def take_saved(self) -> set[str]:
        """Finished requests whose last save is done since the last call (``get_finished``)."""
        saved, self._saved = self._saved, set()
        return saved

    def _on_saved(self, req_id: str, stored: int) -> None:
        start, before = self._saving.pop(req_id, (time.perf_counter(), 0))
        self.stats.saved_tokens += max(0, stored - before)
        self.stats.save_seconds += time.perf_counter() - start

    def close(self) -> None:
        """Let every save in flight reach the store."""
        if self._moves is not None:
            self._moves.close()
