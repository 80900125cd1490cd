"""LRU, FIFO and LFU-DA on hand-made sequences whose victims are known."""

from kvstore.eviction import FIFOPolicy, LFUPolicy, LRUPolicy
from tests.eviction.helpers import evict, fill, k


def test_lru_evicts_least_recent_and_respects_veto():
    p = LRUPolicy()
    fill(p, "a", "b", "c", "d")
    p.on_access(k("a"))
    assert evict(p, 1, veto={"b"}) == ["c"]
    assert evict(p, 2) == ["b", "d"]
    assert len(p) == 1 and k("a") in p


def test_fifo_ignores_hits():
    p = FIFOPolicy()
    fill(p, "a", "b", "c")
    p.on_access(k("a"))
    assert evict(p, 1) == ["a"]
    assert evict(p, 5) == ["b", "c"]
    assert len(p) == 0


def test_lfu_counts_and_ages():
    p = LFUPolicy()
    fill(p, "a", "b", "c")
    for name in "aab":
        p.on_access(k(name))  # a: f=3, b: f=2, c: f=1 (all with L=0)
    assert evict(p) == ["c"]  # L becomes 1
    fill(p, "d")  # K = 1 + 1 = 2, ties with b (K = 2) but is newer
    assert evict(p) == ["b"]  # L = 2
    fill(p, "e")  # K = 3: level with a, whose count is old
    assert evict(p) == ["d"]  # K = 2
    assert evict(p) == ["a"]  # aging: the old favourite goes before the newcomer
    assert p.age == 3


def test_victim_not_removed_is_offered_again_and_kept():
    p = LRUPolicy()
    fill(p, "a", "b")
    first = p.victims(1, lambda key: True)
    assert first == [k("a")] and len(p) == 2
    assert p.victims(1, lambda key: True) == [k("a")]  # the tier did not remove it
    p.on_access(k("a"))  # used again: back in the order as the newest
    assert evict(p) == ["b"]


def test_unknown_and_repeated_calls_are_harmless():
    p = LRUPolicy()
    p.on_access(k("ghost"))
    p.on_remove(k("ghost"))
    fill(p, "a", "a")
    assert len(p) == 1 and evict(p, 3) == ["a"] and evict(p) == []
