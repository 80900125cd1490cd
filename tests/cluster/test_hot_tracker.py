"""HotTracker: a prefix turns hot once, at the threshold, with the hits' common blocks."""

from __future__ import annotations

import numpy as np

from kvstore.cluster.hot_prefixes import HotTracker, common_prefix_len

B = 4


def conv(i: int) -> np.ndarray:
    system = np.arange(12, dtype=np.uint32)  # 3 shared blocks
    return np.concatenate([system, np.arange(1000 * i, 1000 * i + 9, dtype=np.uint32)])


def test_turns_hot_once_at_the_threshold_with_the_common_whole_blocks():
    t = HotTracker(threshold=3, window=60)
    assert t.record("k", conv(1), B, now=0) is None
    assert t.record("k", conv(2), B, now=1) is None
    cand = t.record("k", conv(3), B, now=2)
    assert cand is not None and cand.hits == 3
    assert np.array_equal(cand.common_tokens, np.arange(12))
    assert t.record("k", conv(4), B, now=3) is None  # reported once


def test_hits_outside_the_window_do_not_count():
    t = HotTracker(threshold=3, window=10)
    t.record("k", conv(1), B, now=0)
    t.record("k", conv(2), B, now=5)
    assert t.record("k", conv(3), B, now=20) is None  # the first two expired
    assert t.record("k", conv(4), B, now=21) is None
    assert t.record("k", conv(5), B, now=22) is not None


def test_common_prefix_shorter_than_a_block_never_turns_hot():
    t = HotTracker(threshold=2, window=60)
    t.record("k", np.arange(8, dtype=np.uint32), B, now=0)
    other = np.arange(8, dtype=np.uint32)
    other[1] = 99
    assert t.record("k", other, B, now=1) is None


def test_bounded_number_of_keys():
    t = HotTracker(threshold=2, max_keys=10)
    for i in range(100):
        t.record(f"k{i}", conv(i), B)
    assert len(t._entries) == 10


def test_common_prefix_len():
    a = np.arange(10)
    assert common_prefix_len(a, a) == 10
    b = a.copy()
    b[4] = -1
    assert common_prefix_len(a, b) == 4
    assert common_prefix_len(a, a[:3]) == 3
    assert common_prefix_len(a[:0], a) == 0
