"""StepLookups: the scheduler's store lookups, at most two round trips per step.

vLLM asks ``get_num_new_matched_tokens`` once per waiting request per step;
one store lookup each costs a round trip each (at 100 waiting requests, 100
round trips a step). Here the first request of a step that has no answer
yet is looked up at once (an idle engine's lone request waits for nothing);
every other one gets ``None`` ("ask me again next step" in vLLM's v1
connector API) and is queued, and ``end_step`` (from
``build_connector_meta``, once per step) asks the store for all of them in
one ``lookup_many``. Their answers serve the next step's calls.

An answer is kept until the request is scheduled or finished (``forget``),
or for ``max_age`` seconds: a request that waits longer (no room in the
batch) is looked up again, so what it loads was in the store recently. A
block evicted in between is a failed load, which vLLM recomputes
(``kv_load_failure_policy = "recompute"``).

A failed lookup is a miss (0), logged; ``strict`` raises instead.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from kvstore.tokens import as_tokens

log = logging.getLogger(__name__)
MAX_AGE_S = 1.0


class StepLookups:
    def __init__(self, namespace, strict: bool = False, max_age: float = MAX_AGE_S):
        self.ns = namespace
        self.strict = strict
        self.max_age = max_age
        self._answers: dict[str, tuple[float, int]] = {}  # req -> (when, store hit)
        self._queued: dict[str, tuple[np.ndarray, bytes]] = {}  # req -> (tokens, extra)
        self._asked_this_step = False

    def hit(self, req_id: str, tokens: np.ndarray, extra: bytes) -> int | None:
        """Leading tokens of ``tokens`` the store holds, or None: asked at the step's end."""
        answer = self._answers.get(req_id)
        if answer is not None and time.monotonic() - answer[0] <= self.max_age:
            return answer[1]
        if not self._asked_this_step:
            self._asked_this_step = True
            hit = self.lookup(tokens, extra)
            self._answers[req_id] = (time.monotonic(), hit)
            return hit
        self._queued[req_id] = (tokens, extra)
        return None

    def end_step(self) -> None:
        """Look up every request queued this step, in one ``lookup_many``."""
        self._asked_this_step = False
        now = time.monotonic()
        for req_id in [r for r, (when, _) in self._answers.items() if now - when > self.max_age]:
            del self._answers[req_id]
        if not self._queued:
            return
        ids = list(self._queued)
        queued, self._queued = self._queued, {}
        hits = self.lookup_many([queued[r][0] for r in ids], [queued[r][1] for r in ids])
        now = time.monotonic()
        for req_id, hit in zip(ids, hits):
            self._answers[req_id] = (now, hit)

    def forget(self, req_id: str) -> None:
        """The request was scheduled or finished: its answer is spent."""
        self._answers.pop(req_id, None)
        self._queued.pop(req_id, None)

    def lookup(self, tokens, extra: bytes) -> int:
        """The store's answer, or 0 when it fails: a cache never fails a request."""
        try:
            return self.ns.lookup(as_tokens(tokens), extra)
        except Exception as exc:
            if self.strict:
                raise
            self.ns.availability.report(exc, "lookup failed; the request recomputes", log)
            return 0

    def lookup_many(self, tokens_list: list, extras: list) -> list[int]:
        good: list[int] = []  # a request whose ids are not token ids is answered 0 alone
        for i, tokens in enumerate(tokens_list):
            try:
                tokens_list[i] = as_tokens(tokens)
                good.append(i)
            except Exception as exc:
                if self.strict:
                    raise
                self.ns.availability.report(exc, "lookup failed; the request recomputes", log)
        hits = [0] * len(tokens_list)
        if not good:
            return hits
        try:
            found = self.ns.lookup_many([tokens_list[i] for i in good], [extras[i] for i in good])
        except Exception as exc:
            if self.strict:
                raise
            self.ns.availability.report(
                exc, f"lookup_many failed; {len(good)} requests recompute", log)
            return hits
        for i, n in zip(good, found):
            hits[i] = n
        return hits
