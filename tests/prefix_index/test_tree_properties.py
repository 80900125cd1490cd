"""Hypothesis: the radix tree behaves like a dict of all cached block prefixes."""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvstore import block_keys
from kvstore.prefix_index import BlockMeta, RadixTree
from kvstore.tokens import as_tokens

B = 2
prompts = st.lists(st.integers(0, 2), min_size=0, max_size=14)


class TreeVsModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tree = RadixTree(B)
        self.model: dict[tuple, bytes] = {}  # prefix tokens (whole blocks) -> key
        self.locks = []

    @rule(tokens=prompts, extra=st.sampled_from([b"", b"x"]))
    def insert(self, tokens, extra):
        keys = block_keys(tokens, B, extra=extra)
        self.tree.insert(tokens, [BlockMeta(key=k) for k in keys], extra=extra)
        for i, k in enumerate(keys):
            self.model[(extra, tuple(tokens[: (i + 1) * B]))] = k

    @rule(tokens=prompts, extra=st.sampled_from([b"", b"x"]))
    def match(self, tokens, extra):
        got = self.tree.match(tokens, extra=extra)
        n = 0
        while (extra, tuple(tokens[: (n + 1) * B])) in self.model and (n + 1) * B <= len(tokens):
            n += 1
        assert got.num_tokens == n * B
        assert got.keys == block_keys(tokens, B, extra=extra)[:n]
        # the lookups' count-only walk agrees with the model too
        assert self.tree.cached_tokens(as_tokens(tokens), extra) == n * B

    @rule(data=st.data())
    def remove_evictable(self, data):
        keys = sorted(self.tree.evictable_keys())
        if not keys:
            return
        key = data.draw(st.sampled_from(keys))
        self.tree.remove(key)
        prefix = next(p for p, k in self.model.items() if k == key)
        # model: only prefixes with no longer cached extension are removable
        assert not any(
            p[0] == prefix[0] and len(p[1]) > len(prefix[1]) and p[1][: len(prefix[1])] == prefix[1]
            for p in self.model
        )
        del self.model[prefix]

    @rule(tokens=prompts)
    def lock(self, tokens):
        m = self.tree.match(tokens)
        if m.node is not None and m.num_tokens:
            self.tree.lock(m.node)
            self.locks.append((m.keys, m.node))

    @precondition(lambda self: self.locks)
    @rule()
    def unlock(self):
        _, node = self.locks.pop()
        self.tree.unlock(node)

    @invariant()
    def same_size_and_locked_survive(self):
        assert len(self.tree) == len(self.model)
        for (extra, prefix), key in self.model.items():
            assert self.tree.depth(key) == len(prefix) // B
            parent = self.model[(extra, prefix[:-B])] if len(prefix) > B else None
            assert self.tree.parent(key) == parent
            assert self.tree.get(key).key == key
        for keys, _ in self.locks:
            for k in keys:
                assert k in self.tree and not self.tree.is_evictable(k)


TreeVsModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_tree_vs_model = TreeVsModel.TestCase
