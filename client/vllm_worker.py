"""Worker half of the connector: copies between vLLM's paged cache and the store.

Per engine step, with the step's ``KVStoreConnectorMetadata`` bound:

* ``load`` (``start_load_kv``, before the forward): for each LoadSpec, read the
  cached prefix's blocks from the store (``Namespace.read_blocks``) and
  scatter each block's tokens beyond ``skip`` into the request's vLLM
  blocks, every layer. It is
  synchronous: the forward starts with the prefix in place. A prefix that
  vanished since the lookup (evicted, daemon gone) loads what is left and
  reports the remaining blocks to vLLM as load errors, which it recomputes
  (``kv_load_failure_policy="recompute"``).
* ``save_layer`` (``save_kv_layer``, after each attention layer): gather the
  layer's blocks of each SaveSpec into a staging list.
* ``flush_saves`` (``wait_for_save``, end of step): stack the layers (gather
  any layer vLLM did not hand over) and ``put`` the prefix; the store skips
  blocks it already holds.

The copies are ``CpuPagedLayout.gather_layer`` and ``scatter_blocks`` of
``kvstore.client.vllm_cpu_paged`` (vLLM's CPU cache layout, measured).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from kvstore.client.vllm_cpu_paged import CpuPagedLayout, scatter_blocks
from kvstore.client.vllm_meta import KVStoreConnectorMetadata
from kvstore.client.vllm_settings import EngineGeometry

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
        self._index = {name: i for i, name in enumerate(geometry.layer_names)}
        self._paged: CpuPagedLayout | None = None
        self._staged: dict[str, list[torch.Tensor | None]] = {}
        self._load_errors: set[int] = set()
        self.stats = TransferStats()

    def register(self, kv_caches: dict[str, torch.Tensor]) -> None:
        missing = [name for name in self.geometry.layer_names if name not in kv_caches]
        if missing:
            raise ValueError(f"vLLM registered no cache for layers {missing}")
        self.caches = [kv_caches[name] for name in self.geometry.layer_names]
        if any(cache.device.type != "cpu" for cache in self.caches):
            raise NotImplementedError("KVStoreConnector moves vLLM's CPU paged cache only; "
                                      "GPU caches need the kvstore.kernels pack/unpack")

    @property
    def paged(self) -> CpuPagedLayout:
        """The measured block layout, probed on first use (the ISA is known by then)."""
        if self._paged is None:
            g = self.geometry
            isa = engine_isa(self.vllm_config, g)
            self._paged = CpuPagedLayout.probe(g.dtype, isa, g.num_kv_heads, g.block_size,
                                               g.head_dim)
            log.info("kvstore: vLLM CPU cache layout probed (isa %s, %s)", isa, g.dtype)
        return self._paged

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
        """Scatter what the store still has of ``spec``; returns its leading tokens.

        Each store block goes from the store's buffer (an arena slot under a
        read lease on shm) straight into vLLM's blocks: no canonical tensor
        of the whole prefix is assembled first.
        """
        bs, bt, codec = self.geometry.block_size, self.ns.block_tokens, self.ns.codec

        def consume(payloads) -> None:
            scratch = codec.scratch()
            for j, payload in enumerate(payloads):
                start, end = j * bt, (j + 1) * bt
                if end <= spec.skip:
                    continue  # already in vLLM's own prefix cache
                lo = max(start, spec.skip)
                block = codec.block_view(payload, scratch)
                scatter_blocks(self.paged, self.caches, spec.block_ids[lo // bs : end // bs],
                               block[:, :, lo - start :])

        try:
            n = self.ns.read_blocks(spec.tokens, consume, spec.extra)
        except Exception:
            if self.strict:
                raise
            log.warning("kvstore get failed for %s", spec.req_id, exc_info=True)
            return 0
        return min(n, len(spec.tokens)) // bs * bs

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # -- saves ------------------------------------------------------------
    def save_layer(self, layer_name: str, kv_layer: torch.Tensor,
                   meta: KVStoreConnectorMetadata) -> None:
        i = self._index.get(layer_name)
        if i is None:
            return
        for spec in meta.saves:
            staged = self._staged.setdefault(spec.req_id, [None] * len(self.caches))
            ids = torch.as_tensor(spec.block_ids, dtype=torch.int64)
            staged[i] = self.paged.gather_layer(kv_layer, ids)

    def flush_saves(self, meta: KVStoreConnectorMetadata) -> None:
        staged, self._staged = self._staged, {}
        for spec in meta.saves:
            start = time.perf_counter()
            layers = staged.get(spec.req_id) or [None] * len(self.caches)
            ids = torch.as_tensor(spec.block_ids, dtype=torch.int64)
            kv = torch.stack([layer if layer is not None else
                              self.paged.gather_layer(self.caches[i], ids)
                              for i, layer in enumerate(layers)])
            try:
                stored = self.ns.put(spec.tokens, kv, spec.extra)
            except Exception:
                if self.strict:
                    raise
                log.warning("kvstore put failed for %s", spec.req_id, exc_info=True)
                stored = 0
            self.stats.saved_tokens += max(0, stored - spec.stored_before)
            self.stats.save_seconds += time.perf_counter() - start
