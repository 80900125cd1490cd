"""Scheduler half of the connector: which prefixes to load, which blocks to save.

Per request the scheduler sees, in order:

1. ``lookup`` (from ``get_num_new_matched_tokens``): how many leading prompt
   tokens the store holds, in whole store blocks, counted on at most
   ``len(prompt) - 1`` tokens so vLLM keeps at least one token to compute
   (it needs one to produce the next-token logits). With ``batch_lookups``
   the step's waiting requests are asked together (``StepLookups``: the
   first at once, the others get None, "ask again next step", and one
   ``lookup_many`` at the step's end answers them);
2. ``after_alloc`` (``update_state_after_alloc``): vLLM accepted
   ``num_external`` of those tokens and allocated blocks for them; the load
   is queued;
3. ``build_meta`` (``build_connector_meta``, once per step): queued loads go
   out with the request's block ids; and once a step has computed more whole
   store blocks of the prompt than the store holds, a save of the prefix up
   to the last such block goes out (under chunked prefill this happens after
   several steps, so block ids are tracked as vLLM appends them);
4. ``finished`` (``request_finished``): state is dropped, and the request's
   hint (``session_end``, ``keep_until``, ``priority`` in its
   ``kv_transfer_params``) goes to the store for its prompt (+ output).

With ``save_decode`` (on by default) the generated tokens are stored too:
a step that completes a whole store block of prompt + output saves it (the
tokens are the request's ``all_token_ids``, read as far as their KV is
computed by the end of the step), so a chat's next turn, whose prompt
repeats this one and its answer, hits through the answer. Saves run in the
same step's ``wait_for_save``, before vLLM may free the blocks. Only when a
request finishes with a whole block computed that no step could save yet
(async scheduling: the last sampled token reaches ``all_token_ids`` a step
late) does ``finished`` keep the blocks (``request_finished`` returns True)
and queue a last save for the next step; the worker reports it done through
``get_finished`` (then vLLM frees them) and the request's hint follows it
(``saved``, from ``update_connector_output``). The last sampled token's KV is
never computed, so the blocks stored end at or before ``len(all) - 1``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from kvstore.client.vllm_lookups import StepLookups
from kvstore.client.vllm_meta import KVStoreConnectorMetadata, LoadSpec, SaveSpec
from kvstore.errors import KVStoreError
from kvstore.store_api import PrefixHint
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


@dataclass(frozen=True)
class RequestOptions:
    """What one request's ``kv_transfer_params["kvstore"]`` asks of the connector."""

    load: bool = True
    save: bool = True
    save_decode: bool = True  # store the generated tokens' KV too (if the engine does)
    hint: PrefixHint | None = None  # told to the store when the request finishes


HINT_KEYS = ("session_end", "keep_until", "priority")


def request_options(request) -> RequestOptions:
    """The request's options; all defaults unless its ``kv_transfer_params`` say otherwise.

    ``SamplingParams(extra_args={"kv_transfer_params": {"kvstore": {...}}})``:
    ``"load": False, "save": False`` makes one request a plain recompute that
    leaves the store alone (a baseline, or a prompt that must not be cached);
    ``"save_decode": False`` stores its prompt only; ``"session_end": True``,
    ``"keep_until": SECONDS`` (from when it finishes), ``"priority": P`` are
    the hint its prompt (+ output) gets when it finishes (``PrefixHint``). A
    malformed hint is logged and ignored: it never fails a request.
    """
    params = getattr(request, "kv_transfer_params", None)
    mine = params.get("kvstore") if isinstance(params, dict) else None
    if not isinstance(mine, dict):
        return RequestOptions()
    hint = None
    if any(key in mine for key in HINT_KEYS):
        try:
            hint = PrefixHint(bool(mine.get("session_end", False)), mine.get("keep_until"),
                              int(mine.get("priority", 0)))
        except (KVStoreError, TypeError, ValueError) as exc:
            log.warning("kvstore: ignoring the hint of request %s: %s",
                        getattr(request, "request_id", "?"), exc)
    return RequestOptions(bool(mine.get("load", True)), bool(mine.get("save", True)),
                          bool(mine.get("save_decode", True)), hint)


def request_switches(request) -> tuple[bool, bool]:
    """``(load, save)`` of one request (``request_options``)."""
    options = request_options(request)
    return options.load, options.save


@dataclass
class _Tracked:
    """What the scheduler remembers of one live request."""

    prompt: np.ndarray
    extra: bytes
    request: object = None  # vLLM's Request: its all_token_ids grow as it decodes
    block_ids: list[int] = field(default_factory=list)
    stored: int = 0  # leading tokens the store holds (looked up or saved)
    load: tuple[int, int] | None = None  # queued load: (skip, end) in tokens
    save: bool = True  # this request's prompt may be stored
    decode: bool = False  # ... and its generated tokens too

    def computed(self, computed_after: int) -> int:
        """Leading tokens of the sequence that is saved whose KV exists after the step."""
        known = len(self.request.all_token_ids) if self.decode else len(self.prompt)
        return min(computed_after, known)

    def tokens(self, n: int) -> np.ndarray:
        return as_tokens(self.request.all_token_ids[:n]) if self.decode else self.prompt[:n]


class SchedulerSide:
    def __init__(self, namespace, block_size: int, block_tokens: int, load: bool, save: bool,
                 strict: bool = False, save_decode: bool = True, hint_namespaces=None,
                 batch_lookups: bool = False):
        """``hint_namespaces``: the namespaces a request's hint goes to (one per
        tensor-parallel rank: each worker stores its own shard); default ``[namespace]``.
        ``batch_lookups``: one ``lookup_many`` per step (``StepLookups``); else a lookup
        per call."""
        self.ns = namespace
        self.strict = strict
        self.block_size = block_size
        self.block_tokens = block_tokens
        self.load_enabled, self.save_enabled = load, save
        self.save_decode = save_decode
        self.hint_namespaces = list(hint_namespaces or [namespace])
        self._lookups: dict[str, tuple[int, int]] = {}  # req -> (local tokens, store hit)
        self._reqs: dict[str, _Tracked] = {}
        self._last_saves: list[SaveSpec] = []  # saves of finished requests, for the next step
        self._hint_after_save: dict[str, tuple] = {}  # req -> hint waiting for its last save
        self.lookups = StepLookups(namespace, strict)
        self.batch_lookups = batch_lookups

    # -- 1. lookup ------------------------------------------------------------
    def lookup(self, request, num_computed_tokens: int) -> int | None:
        """Tokens beyond ``num_computed_tokens`` that can be loaded (0 if none); None:
        asked at the end of this step, call again next step (``batch_lookups``)."""
        prompt = request.prompt_token_ids
        if not prompt:
            return 0
        limit = (len(prompt) - 1) // self.block_tokens * self.block_tokens
        load, save = request_switches(request)
        load, save = load and self.load_enabled, save and self.save_enabled
        hit = 0
        if limit > num_computed_tokens and (load or save):
            tokens, extra = prompt[:limit], request_extra(request)  # checked by the lookup
            if not self.batch_lookups:
                hit = self.lookups.lookup(tokens, extra)
            else:
                hit = self.lookups.hit(request.request_id, tokens, extra)
                if hit is None:
                    return None
        self._lookups[request.request_id] = (num_computed_tokens, hit)
        if not load or hit <= num_computed_tokens:
            return 0
        return hit - num_computed_tokens

    # -- 2. blocks allocated ------------------------------------------------
    def after_alloc(self, request, block_ids: list[int], num_external: int) -> None:
        prompt = request.prompt_token_ids
        if prompt is None:
            return
        local, hit = self._lookups.pop(request.request_id, (0, 0))
        self.lookups.forget(request.request_id)
        tracked = self._reqs.get(request.request_id)
        if tracked is None:
            options = request_options(request)
            tracked = _Tracked(as_tokens(prompt), request_extra(request), request,
                               save=options.save,
                               decode=self.save_decode and options.save_decode
                               and hasattr(request, "all_token_ids"))
            self._reqs[request.request_id] = tracked
        tracked.block_ids = list(block_ids)
        tracked.stored = max(tracked.stored, hit)
        if num_external > 0:
            tracked.load = (local, local + num_external)

    # -- 3. per-step metadata -------------------------------------------------
    def build_meta(self, scheduler_output) -> KVStoreConnectorMetadata:
        self.lookups.end_step()  # the requests that got None this step: one lookup_many
        meta = KVStoreConnectorMetadata()
        meta.saves, self._last_saves = self._last_saves, []
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
        savable = tracked.computed(computed_after) // self.block_tokens * self.block_tokens
        if savable > tracked.stored:
            meta.saves.append(SaveSpec(req_id, tracked.tokens(savable),
                                       tracked.block_ids[: savable // bs], tracked.extra,
                                       tracked.stored))
            tracked.stored = savable

    # -- 4. finished ----------------------------------------------------------
    def finished(self, request, block_ids: list[int] | None = None) -> bool:
        """The request is done; True when its blocks must wait for a last save.

        ``block_ids``: its vLLM blocks (``request_finished``), for that save.
        """
        req_id = request.request_id
        self._lookups.pop(req_id, None)
        self.lookups.forget(req_id)
        tracked = self._reqs.pop(req_id, None)
        hint = request_options(request).hint
        delay = False
        if tracked is not None and tracked.decode and self.save_enabled and tracked.save:
            # tokens whose KV exists: computed, less what a step still in flight computes
            done = request.num_computed_tokens - getattr(request, "num_in_flight_tokens", 0)
            n = tracked.computed(done) // self.block_tokens * self.block_tokens
            if n > tracked.stored and block_ids and len(block_ids) * self.block_size >= n:
                self._last_saves.append(SaveSpec(req_id, tracked.tokens(n),
                                                 list(block_ids[: n // self.block_size]),
                                                 tracked.extra, tracked.stored, last=True))
                tracked.stored = n
                delay = True
        if hint is not None:  # the whole sequence: the store applies it to what it has
            decode = tracked is not None and tracked.decode
            tokens = as_tokens(request.all_token_ids[:] if decode else request.prompt_token_ids or [])
            extra = tracked.extra if tracked is not None else request_extra(request)
            if delay:
                self._hint_after_save[req_id] = (tokens, extra, hint)
            else:
                self._hint(tokens, extra, hint)
        return delay

    def saved(self, req_ids) -> None:
        """The last saves of ``req_ids`` are done (``get_finished``): their hints go out."""
        for req_id in req_ids or ():
            pending = self._hint_after_save.pop(req_id, None)
            if pending is not None:
                self._hint(*pending)

    def _hint(self, tokens, extra: bytes, hint: PrefixHint) -> None:
        """Tell the store (every rank's namespace); a failure is logged, never raised."""
        for ns in self.hint_namespaces:
            try:
                ns.hint(tokens, session_end=hint.session_end, keep_until=hint.keep_until,
                        priority=hint.priority, extra=extra)
            except Exception as exc:
                if self.strict:
                    raise
                self.ns.availability.report(exc, "hint failed", log)
