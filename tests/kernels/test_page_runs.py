"""page_runs / host_paged: block tables cut into runs and loose pages, every byte checked.

Ragged tables (ascending and descending runs, runs across store blocks, loose
pages, holes) are packed and unpacked through the numpy path with runs made
eligible at any length, and compared with the canonical blocks the engine
caches hold; out-of-range and repeated ids are refused before anything moves.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from kvstore.errors import InvalidArgument
from kvstore.kernels import EngineKind, host_paged, pack_paged, page_runs, unpack_paged
from kvstore.kernels.paged import _paged
from kvstore.kernels.source import SKIP_BLOCK
from kvstore.layout import KVLayout
from tests.kernels.engine_caches import build_cache, engine_of, expected_block
from tests.kernels.engine_caches import tokens as _tokens

pytestmark = pytest.mark.unit

SEED = int(os.environ.get("KVSTORE_TEST_SEED", "5"))
NB, EBS, R = 40, 4, 4  # engine blocks in a cache, tokens per engine block, per store block


def _positions(ps, n: int, R: int) -> np.ndarray:
    """The engine block each position of the table gets from ``ps`` (-2: none)."""
    got = np.full(n, -2, dtype=np.int64)
    for p in ps:
        lo = p.block * R + p.at
        assert 0 < p.count and p.at + p.count <= R  # never across a store block
        assert (got[lo:lo + p.count] == -2).all()  # every position at most once
        got[lo:lo + p.count] = np.arange(p.first, p.first + p.count) if p.ids is None else p.ids
    return got


def test_pieces_cut_runs_at_store_blocks_and_leave_holes_out():
    ids = np.array([5, 6, 7, 8, 9, 3, 2, 1, SKIP_BLOCK, 0, 1, 2, 7, 8, 20, 21], dtype=np.int64)
    ps = page_runs.pieces(ids, 4, page_bytes=1, min_run_bytes=0)
    runs = [(p.block, p.at, p.count, p.first) for p in ps if p.ids is None]
    assert runs == [(0, 0, 4, 5), (2, 1, 3, 0), (3, 0, 2, 7), (3, 2, 2, 20)]
    loose = [(p.block, p.at, p.ids.tolist()) for p in ps if p.ids is not None]
    assert loose == [(1, 0, [9, 3, 2, 1])]  # 8 -> 9 crosses a store block; 3, 2, 1 descend
    assert _positions(ps, ids.size, 4).tolist() == [-2 if i == SKIP_BLOCK else i for i in ids]


def test_short_runs_of_small_pages_stay_one_gather_per_store_block():
    ids = np.arange(32, dtype=np.int64)
    ps = page_runs.pieces(ids, 8, page_bytes=512)  # 4 KiB runs: below MIN_RUN_BYTES
    assert [(p.block, p.at, p.count) for p in ps] == [(s, 0, 8) for s in range(4)]
    assert all(p.ids is not None for p in ps)
    big = page_runs.pieces(ids, 8, page_bytes=page_runs.MIN_RUN_BYTES // 4)
    assert all(p.ids is None for p in big)


@pytest.mark.parametrize("trial", range(4))
def test_pieces_give_every_position_its_id_exactly_once(trial):
    seed = SEED * 100 + trial
    print(f"KVSTORE_TEST_SEED={SEED} trial {trial}")
    rng = np.random.default_rng(seed)
    for _ in range(200):
        r, s = int(rng.integers(1, 9)), int(rng.integers(1, 6))
        ids = _ragged(rng, 64, r * s)
        ids[rng.random(ids.size) < 0.15] = SKIP_BLOCK
        least = int(rng.choice([0, 1 << 12, 1 << 20]))
        ps = page_runs.pieces(ids, r, page_bytes=1 << 10, min_run_bytes=least)
        want = np.where(ids == SKIP_BLOCK, -2, ids)
        assert (_positions(ps, ids.size, r) == want).all()


def _ragged(rng, nb: int, n: int) -> np.ndarray:
    """``n`` distinct ids of ``[0, nb)``: ascending and descending runs of 1 to 6, in
    random order (a block table as an engine hands blocks out)."""
    cuts, at = [], 0
    while at < nb:
        size = int(rng.integers(1, 7))
        run = list(range(at, min(at + size, nb)))
        cuts.append(run[::-1] if rng.random() < 0.5 else run)
        at += size
    return np.array([i for c in rng.permutation(len(cuts)) for i in cuts[c]][:n], dtype=np.int64)


def _flash(seed: int):
    tokens = _tokens(2, NB, EBS, 2, 8, torch.bfloat16, seed=seed)
    caches = [build_cache(EngineKind.VLLM_FLASH, k, v) for k, v in tokens]
    return tokens, caches, KVLayout("m", 2, 2, 8, "bfloat16", R * EBS)


@pytest.fixture
def every_run(monkeypatch):
    """Runs of two pages and more move as runs (the test pages are 128 bytes)."""
    monkeypatch.setattr(page_runs, "MIN_RUN_BYTES", 0)


@pytest.mark.parametrize("table", ["ragged", "ascending", "descending", "shuffled"])
def test_gather_and_scatter_move_each_engine_block_to_its_place(every_run, table):
    print(f"KVSTORE_TEST_SEED={SEED}")
    rng = np.random.default_rng(SEED)
    engine = engine_of(EngineKind.VLLM_FLASH, EBS)
    tokens, caches, layout = _flash(SEED)
    S = 5
    ids = {"ragged": _ragged(rng, NB, S * R), "ascending": np.arange(3, 3 + S * R),
           "descending": np.arange(S * R)[::-1] + 7,
           "shuffled": rng.permutation(NB)[:S * R]}[table].tolist()
    rows = [torch.empty(layout.block_nbytes, dtype=torch.uint8) for _ in range(S)]
    assert host_paged.gather(_paged(caches, ids, layout, engine, writing=False), rows)
    for s, row in enumerate(rows):
        want = expected_block(tokens, ids[s * R:(s + 1) * R], layout.block_tokens)
        assert torch.equal(row, want.contiguous().view(torch.uint8).reshape(-1))
    # back into other caches, through another ragged table with holes
    _, dst, _ = _flash(SEED + 1)
    before = [c.clone() for c in dst]
    out = _ragged(rng, NB, S * R).tolist()
    out[0] = out[R + 2] = SKIP_BLOCK
    assert host_paged.scatter(_paged(dst, out, layout, engine, writing=True), rows)
    for c, b, src in zip(dst, before, caches):
        for j, e in enumerate(out):
            if e != SKIP_BLOCK:
                assert torch.equal(c[:, e], src[:, ids[j]])
        untouched = [i for i in range(NB) if i not in out]
        assert torch.equal(c[:, untouched], b[:, untouched])


def test_out_of_range_and_repeated_ids_are_refused_before_anything_moves(every_run):
    engine = engine_of(EngineKind.VLLM_FLASH, EBS)
    _, caches, layout = _flash(SEED)
    payloads = pack_paged(caches, list(range(R)), layout, "none", engine)
    before = [c.clone() for c in caches]
    for bad in ([0, 1, 2, NB], [-2, 0, 1, 2]):
        with pytest.raises(InvalidArgument, match="block ids must lie in"):
            pack_paged(caches, bad, layout, "none", engine)
        with pytest.raises(InvalidArgument, match="block ids must lie in"):
            unpack_paged(payloads, caches, bad, layout, "none", engine)
    with pytest.raises(InvalidArgument, match="must not repeat"):
        unpack_paged(payloads, caches, [4, 5, 6, 5], layout, "none", engine)
    assert all(torch.equal(a, b) for a, b in zip(caches, before))
    # the numpy path checks for itself too (ids the caller made unchecked)
    rows = [torch.empty(layout.block_nbytes, dtype=torch.uint8)]
    src = _paged(caches, [0, 1, 2, 3], layout, engine, writing=False)
    src = dataclasses.replace(src, block_ids=torch.tensor([0, 1, 2, NB + 3]))
    with pytest.raises(IndexError, match="out of range"):
        host_paged.gather(src, rows)
