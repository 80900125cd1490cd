"""SIEVE: the hand, the visited bit, survivors that stay in place."""

from kvstore.eviction import SIEVEPolicy
from tests.eviction.helpers import evict, fill, k


def test_visited_blocks_survive_and_the_hand_stays():
    p = SIEVEPolicy()
    fill(p, "a", "b", "c", "d", "e")  # tail a ... head e
    p.on_access(k("a"))
    p.on_access(k("c"))
    # the hand starts at the tail: a is visited (cleared, kept), b is not
    assert evict(p) == ["b"]
    p.on_access(k("e"))
    fill(p, "f")
    # the hand goes on from c: c cleared, d evicted
    assert evict(p) == ["d"]
    # from e: cleared, then f (new, unvisited) goes; a and c were not looked at again
    assert evict(p) == ["f"]
    # wrap around: a and c lost their bits on the first pass
    assert evict(p, 2) == ["a", "c"]
    assert evict(p) == ["e"] and len(p) == 0


def test_vetoed_candidate_waits_behind_the_hand():
    p = SIEVEPolicy()
    fill(p, "a", "b", "c", "d")
    assert evict(p, 1, veto={"a"}) == ["b"]
    fill(p, "e")
    assert evict(p, 1, veto={"c"}) == ["d"]  # c stays behind the hand with a
    assert evict(p) == ["e"]
    assert evict(p) == ["a"]  # the hand wrapped around


def test_remove_under_the_hand():
    p = SIEVEPolicy()
    fill(p, "a", "b", "c")
    p.on_access(k("a"))
    assert evict(p) == ["b"]  # hand now at c
    p.on_remove(k("c"))
    fill(p, "d")
    assert evict(p) == ["a"]  # a's bit was cleared on the first pass
