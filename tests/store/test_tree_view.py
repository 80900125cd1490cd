"""The store's tree view: parent() lets a policy park a vetoed interior block (O(1) per veto).

A CPU-only store drops only leaf tails, so an old block with children is
turned down until its children leave; with ``parent`` in the view the policy
sets it aside once and re-offers it only when one of its children leaves,
instead of asking about it on every eviction. A tier that demotes (an SSD
below) can evict interior blocks, so its view has no ``parent``.
"""

from collections import Counter

from kvstore.eviction import LRUPolicy
from kvstore.keys import block_keys
from kvstore.store.block_state import policy_key

from .helpers import make_spec, payloads_for


class CountingLRU(LRUPolicy):
    """LRU that counts how often each key is offered to the store's veto."""

    def __init__(self):
        super().__init__()
        self.offers: Counter = Counter()

    def bind(self, view):
        super().bind(view)
        self.bound = view

    def victims(self, n, may_evict):
        def counted(key):
            self.offers[key] += 1
            return may_evict(key)

        return super().victims(n, counted)


def test_a_vetoed_interior_block_is_parked_not_rescanned(store_factory):
    policies = []

    def factory(name):
        policies.append(CountingLRU())
        return policies[-1]

    spec = make_spec()
    s = store_factory(cpu_bytes=16 * 4096, policy_factory=factory)  # 128 blocks
    policy = policies[-1]
    assert callable(getattr(policy.bound, "parent", None))  # the store's view offers parent()
    ns = s.register(spec)
    shared = list(range(8))  # two blocks, the oldest: interior once branches follow
    branches = [shared + list(range(100 + 4 * i, 104 + 4 * i)) for i in range(8)]
    for t in branches:
        s.put(ns, t, payloads_for(ns, spec, t))
    first = policy_key(ns, block_keys(shared, spec.block_tokens)[0])
    for i in range(40):  # pressure: the branches' tails go first, then the shared blocks
        t = list(range(10_000 + 16 * i, 10_016 + 16 * i))
        s.put(ns, t, payloads_for(ns, spec, t))
    evictions = s.tier_stats("cpu").evictions
    assert evictions >= 10 and s.lookup(ns, shared) == 0  # every branch went, then the shared blocks
    # offered once, parked, woken once when its only child left: not once per eviction
    assert policy.offers[first] <= 2 < evictions
    s.check()


def test_a_tier_above_the_ssd_gets_no_parent(store_factory):
    policies = []
    s = store_factory(ssd_bytes=1 << 20, policy_factory=lambda name: policies.append(
        CountingLRU()) or policies[-1])
    assert s.policy_names() == {"cpu": "lru"}
    assert not hasattr(policies[-1].bound, "parent")  # any unlocked block may be demoted
