"""Worker half of the connector: copies between vLLM's paged cache and the store.

Per engine step, with the step's ``KVStoreConnectorMetadata`` bound:

* ``load`` (``start_load_kv``, before the forward): for each LoadSpec, unpack
  the cached prefix from the store straight into the request's vLLM blocks,
  every layer, leaving the blocks of tokens ``[0, skip)`` (vLLM's own prefix
  cache hits) alone. It is synchronous: the forward starts with the prefix in
  place. A prefix that vanished since the lookup (evicted, daemon gone) loads
  what is left and reports the remaining blocks to vLLM as load errors, which
  it recomputes (``kv_load_failure_policy="recompute"``).
* ``save_layer`` (``save_kv_layer``, after each attention layer): nothing to
  do; the layer's blocks stay in the cache until the step ends.
* ``flush_saves`` (``wait_for_save``, end of step): pack the whole store
  blocks of each SaveSpec out of every layer and ``put`` them; only the blocks
  the store lacks are packed. A finished request's last save (``SaveSpec.last``)
  is then reported done by ``take_saved`` (``get_finished``), so vLLM frees
  the blocks it kept for it; failed or not, the blocks are let go.

The copies are the kernels' fused gather/scatter + codec
(``kvstore.client.paged_io`` over ``kvstore.kernels.pack_paged`` /
``unpack_paged``), in the vLLM CPU layout that ``select_layout`` of
``kvstore.client.vllm_cpu_paged`` picks for this engine's attention ISA.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from kvstore.client.paged_io import get_paged, put_paged
from kvstore.client.vllm_cpu_paged import select_layout
from kvstore.client.vllm_meta import KVStoreConnectorMetadata
from kvstore.client.vllm_settings import EngineGeometry
from kvstore.kernels import EngineLayout

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


class WorkerSide:
    def __init__(self, namespace, geometry: EngineGeometry, vllm_config, strict: bool = False):
        self.ns = namespace
        self.geometry = geometry
        self.vllm_config = vllm_config
        self.strict = strict
        self.caches: list[torch.Tensor] = []
        self._engine: EngineLayout | None = None
        self._load_errors: set[int] = set()
        self._saved: set[str] = set()  # finished requests whose last save is done
        self.stats = TransferStats()

    def register(self, kv_caches: dict[str, torch.Tensor]) -> None:
        missing = [name for name in self.geometry.layer_names if name not in kv_caches]
        if missing:
            raise ValueError(f"vLLM registered no cache for layers {missing}")
        self.caches = [kv_caches[name] for name in self.geometry.layer_names]
        if any(cache.device.type != "cpu" for cache in self.caches):
            raise NotImplementedError("KVStoreConnector moves vLLM's CPU paged cache only")

    @property
    def engine(self) -> EngineLayout:
        """The cache's layout in the kernels' terms, selected on first use (the ISA is
        known by then)."""
        if self._engine is None:
            g = self.geometry
            isa = engine_isa(self.vllm_config, g)
            self._engine = select_layout(g.dtype, isa, g.num_kv_heads, g.block_size,
                                         g.head_dim)
            log.info("kvstore: vLLM CPU cache layout %s (isa %s, %s)",
                     self._engine.kind.value, isa, g.dtype)
        return self._engine

    # -- loads ------------------------------------------------------------
    def load(self, meta: KVStoreConnectorMetadata) -> None:
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

    def _get_into_cache(self, spec) -> int:
        """Unpack what the store still has of ``spec``; returns its leading tokens."""
        try:
            n = get_paged(self.ns, spec.tokens, self.caches, spec.block_ids, self.engine,
                          spec.extra, skip=spec.skip)
        except Exception:
            if self.strict:
                raise
            log.warning("kvstore get failed for %s", spec.req_id, exc_info=True)
            return 0
        return min(n, len(spec.tokens))

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # -- saves ------------------------------------------------------------
    def save_layer(self, layer_name: str, kv_layer: torch.Tensor,
                   meta: KVStoreConnectorMetadata) -> None:
        """Nothing per layer: ``flush_saves`` packs every layer at the end of the step,
        before vLLM can reuse the blocks (``kv_layer`` is the registered cache)."""

    def flush_saves(self, meta: KVStoreConnectorMetadata) -> None:
        for spec in meta.saves:
            start = time.perf_counter()
            try:
                stored = put_paged(self.ns, spec.tokens, self.caches, spec.block_ids,
                                   self.engine, spec.extra)
            except Exception:
                if self.strict:
                    raise
                log.warning("kvstore put failed for %s", spec.req_id, exc_info=True)
                stored = 0
            self.stats.saved_tokens += max(0, stored - spec.stored_before)
            self.stats.save_seconds += time.perf_counter() - start
            if spec.last:
                self._saved.add(spec.req_id)

    def take_saved(self) -> set[str]:
        """Finished requests whose last save is done since the last call."""
        saved, self._saved = self._saved, set()
        return saved
