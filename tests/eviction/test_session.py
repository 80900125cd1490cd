"""The session-admission policy (issue 14): turns, the learned horizon, admission, LRU fallback.

Its hint handling and the shared properties (no key lost, vetoes, O(log n)
parking) are covered with every built-in in test_hints.py and
test_policy_properties.py.
"""

from kvstore import block_keys
from kvstore.eviction import get_policy
from kvstore.eviction.session import SessionPolicy, _unit
from kvstore.prefix_index import BlockMeta, RadixTree


def put(tree, policy, tokens) -> list[bytes]:
    match = tree.match(tokens)
    for block in match.blocks:
        policy.on_access(block.key)
    keys = block_keys(tokens, 1)
    metas = match.blocks + [BlockMeta(key=key) for key in keys[len(match.blocks):]]
    for block in tree.insert(tokens, metas).added:
        policy.on_insert(block.key)
    return keys


def make(capacity=64, **kw):
    policy = SessionPolicy(capacity=capacity, **kw)
    tree = RadixTree(1)
    policy.bind(tree)
    return tree, policy


def remove(tree, policy, keys):
    for key in reversed(keys):
        tree.remove(key)
        policy.on_remove(key)


def test_registered():
    assert isinstance(get_policy("session", capacity=8), SessionPolicy)


def test_unit_is_fixed_and_in_range():
    keys = block_keys(list(range(1, 200)), 1)
    values = [_unit(key) for key in keys]
    assert values == [_unit(key) for key in keys]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.3 < sum(values) / len(values) < 0.7


def test_turns_follow_the_conversation_and_survive_its_eviction():
    tree, policy = make()
    put(tree, policy, [0])  # block 0: a system prompt every conversation shares
    first = put(tree, policy, [0, 1, 2, 3])
    assert policy._run_of[first[1]][0] == 1
    second = put(tree, policy, [0, 1, 2, 4, 5])  # extends two private blocks: the next turn
    assert policy._run_of[second[3]][0] == 2
    other = put(tree, policy, [0, 9, 8])  # only the system prompt in common: a new conversation
    assert policy._run_of[other[1]][0] == 1
    remove(tree, policy, [first[3]])  # its private blocks leave
    remove(tree, policy, second[1:])
    third = put(tree, policy, [0, 1, 2, 4, 5, 6])  # and it comes back: its third turn
    assert policy._run_of[third[1]][0] == 3
    assert policy._run_of[third[1]][1] == _unit(first[1])  # the same conversation: kept or not alike


def test_refit_long_gaps_admit_the_latest_turns_first():
    _, policy = make(capacity=100, fill=1.0)
    policy._inserts = [0.0, 60.0, 30.0, 10.0, 0.0, 0.0, 0.0]  # new blocks per turn class
    policy._ticks = 100.0  # one new block a touch
    for gap in [1000] * 200:  # every next turn comes 10 capacities later
        policy._gaps.append(gap)
    policy._refit()
    assert policy.keep == 1000  # the only horizon that serves them
    # room for 100 / 1000 = 10 % of the new blocks: all of turn 3, nothing below
    assert policy._admit[3] == 1.0
    assert policy._admit[2] == 0.0 and policy._admit[1] == 0.0
    assert policy.late == 1.0


def test_refit_short_gaps_keep_everything_like_lru():
    _, policy = make(capacity=100)
    policy._inserts = [0.0, 60.0, 30.0, 10.0, 0.0, 0.0, 0.0]
    policy._ticks = 100.0
    for gap in range(10, 90):  # every next turn comes while LRU still holds it
        policy._gaps.append(gap)
    policy._refit()
    assert policy.keep == 100
    assert policy._admit[1:4] == [1.0, 1.0, 1.0]
    assert policy.late == 0.0  # no class boost: LRU order


def test_without_classes_and_all_admitted_the_order_is_lru_with_tails_first():
    tree, policy = make(capacity=1000, classes=False)
    a = put(tree, policy, [0, 1, 2])
    b = put(tree, policy, [0, 3, 4])
    put(tree, policy, [0, 1, 2])  # a is read again: b is older now
    # both prompts' last blocks were never read: gone before anything else (a's was read)
    first = policy.victims(1, tree.is_evictable)
    assert first == [b[2]]
    tree.remove(first[0])
    policy.on_remove(first[0])
    order = []
    while True:
        got = policy.victims(1, tree.is_evictable)
        if not got:
            break
        tree.remove(got[0])
        policy.on_remove(got[0])
        order.append(got[0])
    assert order == [b[1], a[2], a[1], a[0]]


def test_unadmitted_conversations_go_before_admitted_ones():
    tree, policy = make(capacity=1000, classes=False)
    policy._fitted, policy.keep = True, 5000.0
    policy._admit = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # only next turns are kept
    one = put(tree, policy, [0, 1, 2, 3])
    two = put(tree, policy, [0, 1, 2, 3, 4])  # its next turn (reads 0..3, adds 4)
    late = put(tree, policy, [0, 7, 8, 9])  # a newer first turn: not admitted
    order = []
    while True:
        got = policy.victims(1, tree.is_evictable)
        if not got:
            break
        tree.remove(got[0])
        policy.on_remove(got[0])
        order.append(got[0])
    # prompts' last blocks first (never read), then the first turn's blocks although
    # they are the newest, then the continued conversation (re-ranked by its turn)
    assert order == [two[4], late[3], late[2], late[1], one[3], one[2], one[1], one[0]]
