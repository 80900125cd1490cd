"""S3-FIFO: one-hit wonders leave through the small queue; ghosts go to main."""

from kvstore.eviction import LRUPolicy, S3FIFOPolicy
from tests.eviction.helpers import evict, fill, k


def test_one_hit_wonders_leave_through_small_queue():
    p = S3FIFOPolicy(capacity=10)  # small queue: 1 block, main: 9
    fill(p, "hot")
    for _ in range(2):
        p.on_access(k("hot"))  # hit twice while in S
    fill(p, *range(9))
    fill(p, 9)
    assert evict(p) == ["0"]  # "hot" moved to M on the way, 0 (never hit) evicted
    assert p._home[k("hot")] == "M"
    for i in range(10, 40):  # a stream of blocks seen once
        fill(p, i)
        evict(p)
    assert k("hot") in p and len(p) == 10


def test_ghost_hit_goes_straight_to_main():
    p = S3FIFOPolicy(capacity=10)
    fill(p, *range(11))
    assert evict(p) == ["0"]
    fill(p, 0)  # seen again while its key is in the ghost queue
    assert p._home[k(0)] == "M"
    assert evict(p) == ["1"]


def test_main_queue_reinserts_hit_blocks():
    p = S3FIFOPolicy(capacity=10)
    fill(p, "a", "b", "c")
    assert evict(p, 3) == ["a", "b", "c"]  # through S into the ghost
    fill(p, "a", "b", "c")  # ghost hits: all three in M
    p.on_access(k("a"))
    assert evict(p) == ["b"]  # S is empty: M; a was hit, reinserted with freq 0
    assert evict(p) == ["c"]
    assert evict(p) == ["a"]


def test_scan_does_not_flush_hot_blocks_unlike_lru():
    def run(policy):
        fill(policy, "h1", "h2")
        for _ in range(2):
            policy.on_access(k("h1"))
            policy.on_access(k("h2"))
        for i in range(50):
            fill(policy, i)
            while len(policy) > 10:
                evict(policy)
        return k("h1") in policy and k("h2") in policy

    assert run(S3FIFOPolicy(capacity=10))
    assert not run(LRUPolicy())
