"""ARC (scan resistance, adaptation) and Belady's OPT on known futures."""

from kvstore.eviction import ARCPolicy, LRUPolicy, OPTPolicy
from tests.eviction.helpers import evict, fill, k


def scan(policy, hot=("h1", "h2"), length=40, capacity=4) -> bool:
    """Touch ``hot`` twice, then stream ``length`` new blocks; are the hot ones still there?"""
    fill(policy, *hot)
    for name in hot:
        policy.on_access(k(name))
    for i in range(length):
        fill(policy, i)
        while len(policy) > capacity:
            evict(policy)
    return all(k(name) in policy for name in hot)


def test_arc_is_scan_resistant_and_lru_is_not():
    assert scan(ARCPolicy(capacity=4))
    assert not scan(LRUPolicy())


def test_arc_hit_moves_to_t2_and_replace_prefers_t1():
    p = ARCPolicy(capacity=3)
    fill(p, "a", "b", "c")
    p.on_access(k("a"))  # a -> T2
    fill(p, "d")
    assert evict(p) == ["b"]  # |T1| = 3 > p = 0: LRU of T1, key kept in B1
    assert k("b") in p._b1


def test_arc_full_t1_evicts_without_ghost():
    p = ARCPolicy(capacity=3)
    fill(p, "a", "b", "c", "d")
    assert evict(p) == ["a"]
    assert not p._b1  # |T1| + |B1| <= c: with T1 full there is no room for a ghost


def test_arc_ghost_hit_in_b1_grows_p():
    p = ARCPolicy(capacity=3)
    fill(p, "a")
    p.on_access(k("a"))  # T2: a
    fill(p, "b", "c", "d")  # T1: b c d
    assert evict(p) == ["b"]  # |T1| = 3 > p = 0
    assert list(p._b1) == [k("b")]
    fill(p, "b")  # a miss found in B1: T1 was too small
    assert p.p == 1 and p._home[k("b")] == "T2"


def test_arc_ghost_hit_in_b2_shrinks_p():
    p = ARCPolicy(capacity=2)
    fill(p, "a")
    p.on_access(k("a"))  # T2: a
    fill(p, "b", "c")
    assert evict(p) == ["b"]  # T1's LRU, into B1
    fill(p, "b")  # B1 hit: p = 1, b into T2
    assert p.p == 1
    assert evict(p) == ["a"]  # |T1| = 1 = p: T2's LRU goes, into B2
    assert list(p._b2) == [k("a")]
    fill(p, "a")  # B2 hit: T2 was too small
    assert p.p == 0


def test_opt_evicts_farthest_next_use():
    schedule = {k("a"): [0, 5], k("b"): [1, 3], k("c"): [2, 9], k("d"): [4]}
    p = OPTPolicy(schedule=schedule)
    fill(p, "a", "b", "c")
    assert evict(p) == ["c"]  # next use 9, the farthest
    p.on_access(k("b"))  # time 3: b is never used again
    fill(p, "d")  # time 4: d neither
    assert evict(p, 2) == ["b", "d"]  # both never: oldest change first
    assert evict(p) == ["a"]
