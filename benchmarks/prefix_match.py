"""Prefix-match time of a fully cached long prompt, against hashing it.

    python -m benchmarks.prefix_match [--tokens 131072] [--block-tokens 16,64,256] [--json PATH]

An engine without an index computes the chained xxh3 key of every block of
the prompt (``kvstore.block_keys``, what vLLM does per request) before it can
look anything up; the radix tree walks the prompt instead. Both run here on
the same prompt, in the same process, best of ``--repeat`` runs; ``ratio`` =
match / hash (below 1: matching is cheaper than even naming the blocks).

The tree is shaped like a busy multi-turn cache, not a single edge: the
prompt was cached turn by turn (``--turns`` segments, each turn's partial tail
left behind as a sibling branch, so the path crosses that many nodes), and
``--others`` unrelated prompts hang off the root. ``match+touch`` also updates
the hit statistics of every matched block, as a store's lookup does.
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.common import base_parser, best_seconds, print_table, write_json
from kvstore import block_keys
from kvstore.prefix_index import BlockMeta, RadixTree


def build_tree(prompt: np.ndarray, block_tokens: int, turns: int, others: int, seed: int) -> RadixTree:
    """A tree holding ``prompt`` (cached over ``turns`` turns) and ``others`` other prompts."""
    rng = np.random.default_rng(seed)
    tree = RadixTree(block_tokens)

    def put(tokens: np.ndarray) -> None:
        keys = block_keys(tokens, block_tokens)
        tree.insert(tokens, [BlockMeta(key=k) for k in keys])

    nblocks = len(prompt) // block_tokens
    cuts = np.linspace(0, nblocks, turns + 1, dtype=int)[1:]
    for cut in cuts:  # each turn: the conversation so far plus a tail the next turn rewrites
        tail = rng.integers(0, 2**31, block_tokens, dtype=np.uint32)
        put(np.concatenate([prompt[: cut * block_tokens], tail]))
    for _ in range(others):
        put(rng.integers(0, 2**31, 4096, dtype=np.uint32))
    return tree


def path_nodes(tree: RadixTree, prompt: np.ndarray) -> int:
    node, count = tree.match(prompt).node, 0
    while node is not None and not node.is_root:
        node, count = node.parent, count + 1
    return count


def measure(tokens: int, block_tokens: int, turns: int, others: int, repeat: int) -> dict:
    rng = np.random.default_rng(block_tokens)
    prompt = rng.integers(0, 128_000, tokens, dtype=np.uint32)
    tree = build_tree(prompt, block_tokens, turns, others, seed=block_tokens + 1)
    full = (tokens // block_tokens) * block_tokens
    if tree.match(prompt).num_tokens != full:
        raise AssertionError("the prompt is not fully cached")
    hash_s = best_seconds(lambda: block_keys(prompt, block_tokens), repeat=repeat)
    match_s = best_seconds(lambda: tree.match(prompt), repeat=repeat)
    touch_s = best_seconds(lambda: tree.match(prompt, touch=True), repeat=repeat)
    return {
        "block_tokens": block_tokens,
        "tokens": tokens,
        "blocks": full // block_tokens,
        "path_nodes": path_nodes(tree, prompt),
        "hash_ms": round(hash_s * 1e3, 4),
        "match_ms": round(match_s * 1e3, 4),
        "ratio": round(match_s / hash_s, 4),
        "match_touch_ms": round(touch_s * 1e3, 4),
        "ratio_touch": round(touch_s / hash_s, 4),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=131_072, help="prompt length")
    parser.add_argument("--block-tokens", default="16,64,256", help="comma-separated")
    parser.add_argument("--turns", type=int, default=32, help="turns the prompt was cached in")
    parser.add_argument("--others", type=int, default=64, help="unrelated prompts in the tree")
    parser.add_argument("--repeat", type=int, default=20, help="runs per measurement (best counts)")
    args = parser.parse_args(argv)
    rows = [
        measure(args.tokens, int(bt), args.turns, args.others, args.repeat)
        for bt in args.block_tokens.split(",")
    ]
    print_table(rows, title=f"prefix match vs chained xxh3 keys, {args.tokens}-token prompt")
    if args.json:
        write_json(args.json, "prefix_match", rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
