"""The conversations in a Mooncake trace: turns, sessions that end, and the answers' blocks.

A Mooncake record has ``timestamp`` (ms), ``input_length``, ``output_length``
and ``hash_ids`` (one id per 512-token block of the prompt, the last one
partial unless ``input_length`` is a multiple of 512). There is no
conversation id, so turns are linked by their prompts:

* **next turn.** Request ``j`` continues the earlier request ``i`` whose
  full prompt blocks share the longest leading run with ``j``'s ids, when
  that run is at least 2 blocks or all of ``i``'s full blocks (one shared
  block is a system prompt, not a conversation). Taking the latest such
  ``i`` makes each conversation a chain of turns. A request with no next
  turn ends its session; the hint ``session_end`` replays that fact.
* **the answer's blocks** (``--save-decode``). After request ``i`` the store
  also holds the full blocks of prompt + answer: positions ``nf ..
  (input_length + output_length) // 512 - 1`` past the ``nf = input_length //
  512`` full prompt blocks (the first of them holds the prompt's partial
  tail and the answer's start). They get the next turn's ids at those
  positions when the next turn ``j`` extends all of ``i``'s full blocks and
  is at least as long as prompt + answer (``input_j >= input_i + output_i``:
  its prompt can hold the whole answer, which chat templates put right after
  the previous prompt); otherwise (no next turn, a next turn that diverged
  earlier or is shorter than prompt + answer: the answer was edited or cut)
  they get fresh ids that nothing will ever request, but they still take
  room. So the gain measured is a lower bound of what storing the answers
  brings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BLOCK_TOKENS = 512  # tokens per hash id in the Mooncake traces
FRESH_BASE = 1 << 31  # ids for answer blocks nothing requests (above the trace's ids)


@dataclass
class Record:
    time: float  # seconds
    input_length: int
    output_length: int
    hash_ids: list[int]

    @property
    def full_blocks(self) -> int:
        return self.input_length // BLOCK_TOKENS


def read_records(path: str | Path, limit: int | None = None, part: str | None = None) -> list[Record]:
    """The trace's records; ``part`` 'first' or 'second' keeps that half (by request order)."""
    records = []
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                records.append(
                    Record(d.get("timestamp", 0) / 1000.0, int(d.get("input_length", 0)),
                           int(d.get("output_length", 0)), list(d["hash_ids"]))
                )
    if part == "first":
        records = records[: len(records) // 2]
    elif part == "second":
        records = records[len(records) // 2 :]
    elif part is not None:
        raise ValueError(f"part must be 'first' or 'second', not {part!r}")
    return records[:limit] if limit is not None else records


def link_turns(records: list[Record]) -> list[int | None]:
    """``prev[j]``: index of the turn request ``j`` continues, or None for a first turn."""
    owner: dict[tuple[int, ...], int] = {}  # a run of full prompt blocks -> latest request with it
    prev: list[int | None] = [None] * len(records)
    for j, r in enumerate(records):
        ids = r.hash_ids
        for length in range(len(ids), 0, -1):
            i = owner.get(tuple(ids[:length]))
            if i is not None:
                if length >= 2 or length == records[i].full_blocks:
                    prev[j] = i
                break
        for length in range(1, r.full_blocks + 1):
            owner[tuple(ids[:length])] = j
    return prev


def sessions(prev: list[int | None]) -> tuple[list[int], list[bool]]:
    """Per request: its conversation's id (its first turn's index), and whether it is the last turn."""
    conv = [0] * len(prev)
    last = [True] * len(prev)
    for j, i in enumerate(prev):
        conv[j] = j if i is None else conv[i]
        if i is not None:
            last[i] = False
    return conv, last


def answer_paths(records: list[Record], prev: list[int | None]) -> list[list[int] | None]:
    """Per request: the ids of the full blocks of prompt + answer (None when the answer fills no block)."""
    nxt: dict[int, int] = {}
    for j, i in enumerate(prev):
        if i is not None:
            nxt.setdefault(i, j)
    fresh = FRESH_BASE
    out: list[list[int] | None] = []
    for i, r in enumerate(records):
        nf = r.full_blocks
        end = (r.input_length + r.output_length) // BLOCK_TOKENS
        if end <= nf:
            out.append(None)
            continue
        j = nxt.get(i)
        if j is not None:
            rj = records[j]
            if rj.hash_ids[:nf] == r.hash_ids[:nf] and rj.input_length >= r.input_length + r.output_length:
                out.append(r.hash_ids[:nf] + rj.hash_ids[nf:end])
                continue
        out.append(r.hash_ids[:nf] + list(range(fresh, fresh + end - nf)))
        fresh += end - nf
    return out
