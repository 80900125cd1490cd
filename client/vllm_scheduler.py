"""Scheduler half of the connector: which prefixes to load, which blocks to save.

Per request the scheduler sees, in order:

1. ``lookup`` (from ``get_num_new_matched_tokens``): how many leading prompt
   tokens the store holds, in whole store blocks, counted on at most
   ``len(prompt) - 1`` tokens so vLLM keeps at least one token to compute
   (it needs one to produce the next-token logits);
2. ``after_alloc`` (``update_state_after_alloc``): vLLM accepted
   ``num_external`` of those tokens and allocated blocks for them; the load
   is queued;
3. ``build_meta`` (``build_connector_meta``, once per step): queued loads go
   out with the request's block ids; and once a step has computed more whole
   store blocks of the prompt than the store holds, a save of the prefix up
   to the last such block goes out (under chunked prefill this happens after
   several steps, so block ids are tracked as vLLM appends them);
4. ``finished`` (``request_finished``): state is dropped. Saves are
   synchronous in ``wait_for_save``, so vLLM may free the blocks at once.

Only prompt tokens are stored: generated tokens are left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from kvstore.client.vllm_meta import KVStoreConnectorMetadata, LoadSpec, SaveSpec
from kvstore.tokens import as_tokens

log = logging.getLogger(__name__)


def request_extra(request) -> bytes:
    """Key salt of a request: cache salt, LoRA adapter and multimodal inputs.

    Two requests with the same tokens but a different salt never share
    blocks (DESIGN.md: ``extra`` carries LoRA id, multimodal hashes, salt).
    """
    parts = []
    if getattr(request, "cache_salt", None):
        parts.append(b"salt:" + request.cache_salt.encode())
    lora = getattr(request, "lora_request", None)
    if lora is not None:
        parts.append(f"lora:{lora.lora_name}:{lora.lora_int_id}".encode())
    for feature in getattr(request, "mm_features", None) or []:
        parts.append(b"mm:" + str(feature.identifier).encode())
    return b"\x00".join(parts)


def request_switches(request) -> tuple[bool, bool]:
    """``(load, save)`` of one request; both on unless its ``kv_transfer_params`` say otherwise.

    ``SamplingParams(extra_args={"kv_transfer_params": {"kvstore": {"load":
    False, "save": False}}})`` makes one request a plain recompute that leaves
    the store alone (a baseline, or a prompt that must not be cached), while
    the engine's other requests keep using it.
    """
    params = getattr(request, "kv_transfer_params", None)
    mine = params.get("kvstore") if isinstance(params, dict) else None
    if not isinstance(mine, dict):
        return True, True
    return bool(mine.get("load", True)), bool(mine.get("save", True))


@dataclass
class _Tracked:
    """What the scheduler remembers of one live request."""

    prompt: np.ndarray
    extra: bytes
    block_ids: list[int] = field(default_factory=list)
    stored: int = 0  # leading prompt tokens the store holds (looked up or saved)
    load: tuple[int, int] | None = None  # queued load: (skip, end) in tokens
    save: bool = True  # this request's prompt may be stored


class SchedulerSide:
    def __init__(self, namespace, block_size: int, block_tokens: int, load: bool, save: bool,
                 strict: bool = False):
        self.ns = namespace
        self.strict = strict
        self.block_size = block_size
        self.block_tokens = block_tokens
        self.load_enabled, self.save_enabled = load, save
        self._lookups: dict[str, tuple[int, int]] = {}  # req -> (local tokens, store hit)
        self._reqs: dict[str, _Tracked] = {}

    # -- 1. lookup ------------------------------------------------------------
    def lookup(self, request, num_computed_tokens: int) -> int:
        """Tokens beyond ``num_computed_tokens`` that can be loaded (0 if none)."""
        prompt = request.prompt_token_ids
        if not prompt:
            return 0
        limit = (len(prompt) - 1) // self.block_tokens * self.block_tokens
        load, save = request_switches(request)
        load, save = load and self.load_enabled, save and self.save_enabled
        hit = 0
        if limit > num_computed_tokens and (load or save):
            hit = self._lookup(prompt[:limit], request_extra(request))
        self._lookups[request.request_id] = (num_computed_tokens, hit)
        if not load or hit <= num_computed_tokens:
            return 0
        return hit - num_computed_tokens

    def _lookup(self, tokens, extra: bytes) -> int:
        """The store's answer, or 0 when it fails: a cache never fails a request."""
        try:
            return self.ns.lookup(tokens, extra)
        except Exception:
            if self.strict:
                raise
            log.warning("kvstore lookup failed; the request recomputes", exc_info=True)
            return 0

    # -- 2. blocks allocated ------------------------------------------------
    def after_alloc(self, request, block_ids: list[int], num_external: int) -> None:
        prompt = request.prompt_token_ids
        if prompt is None:
            return
        local, hit = self._lookups.pop(request.request_id, (0, 0))
        tracked = self._reqs.get(request.request_id)
        if tracked is None:
            tracked = _Tracked(as_tokens(prompt), request_extra(request),
                               save=request_switches(request)[1])
            self._reqs[request.request_id] = tracked
        tracked.block_ids = list(block_ids)
        tracked.stored = max(tracked.stored, hit)
        if num_external > 0:
            tracked.load = (local, local + num_external)

    # -- 3. per-step metadata -------------------------------------------------
    def build_meta(self, scheduler_output) -> KVStoreConnectorMetadata:
        meta = KVStoreConnectorMetadata()
        scheduled = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            tracked = self._reqs.get(new.req_id)
            if tracked is None:
                continue
            tracked.block_ids = list(new.block_ids[0])
            self._emit(new.req_id, tracked, new.num_computed_tokens + scheduled[new.req_id], meta)
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            tracked = self._reqs.get(req_id)
            if tracked is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids and new_ids is not None:
                tracked.block_ids = list(new_ids[0])  # a resumed request's blocks are all new
            elif new_ids is not None:
                tracked.block_ids.extend(new_ids[0])
            done = cached.num_computed_tokens[i] + scheduled.get(req_id, 0)
            self._emit(req_id, tracked, done, meta)
        return meta

    def _emit(self, req_id: str, tracked: _Tracked, computed_after: int,
              meta: KVStoreConnectorMetadata) -> None:
        bs = self.block_size
        if tracked.load is not None:
            skip, end = tracked.load
            tracked.load = None
            meta.loads.append(LoadSpec(req_id, tracked.prompt[:end],
                                       tracked.block_ids[: -(-end // bs)], skip, tracked.extra))
        if not self.save_enabled or not tracked.save:
            return
        savable = min(computed_after, len(tracked.prompt)) // self.block_tokens * self.block_tokens
        if savable > tracked.stored:
            meta.saves.append(SaveSpec(req_id, tracked.prompt[:savable],
                                       tracked.block_ids[: savable // bs], tracked.extra,
                                       tracked.stored))
            tracked.stored = savable

    # -- 4. finished ----------------------------------------------------------
    def finished(self, request) -> None:
        self._lookups.pop(request.request_id, None)
        self._reqs.pop(request.request_id, None)
