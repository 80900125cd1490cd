"""The prompt memo's parts in process: the token-bounded LRU, the daemon's memo, the
client's mirror planning what the memo holds, and the memo request's wire checks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from kvstore.errors import InvalidArgument, UnknownPrompt
from kvstore.prefix_index.query_bytes import query_bytes
from kvstore.transport.digest_batch import DigestBatch, digest
from kvstore.transport.messages import (
    MAX_LOOKUPS,
    lookup_many_memo_args,
    lookup_many_memo_request,
)
from kvstore.transport.prompt_memo import PromptMemo, PromptMirror, TokenLRU, advertised_bound

pytestmark = pytest.mark.unit
batch_of = DigestBatch.of  # a batch of these digests


def seeded() -> np.random.Generator:
    """A generator of a fresh seed each run (``KVSTORE_TEST_SEED`` replays one), printed."""
    seed = int(os.environ.get("KVSTORE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"KVSTORE_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def prompt(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 30, n, dtype=np.uint32)


def test_the_lru_holds_prompts_by_their_tokens():
    lru: TokenLRU[str] = TokenLRU(100)
    lru.put(b"a", 40, "A")
    lru.put(b"b", 40, "B")
    assert lru.get(b"a") == "A" and lru.tokens == 80  # a is now the most recent
    lru.put(b"c", 40, "C")  # 120 > 100: the least recent (b) goes
    assert b"b" not in lru and lru.get(b"b") is None
    assert lru.get(b"a") == "A" and lru.get(b"c") == "C" and lru.tokens == 80
    lru.put(b"a", 10, "A2")  # put again: replaced, counted once
    assert lru.get(b"a") == "A2" and lru.tokens == 50
    lru.put(b"big", 101, "X")  # more than the whole bound: never held, nothing evicted
    assert b"big" not in lru and len(lru) == 2
    for i in range(200):  # an empty prompt costs one token: the count is bounded too
        lru.put(i.to_bytes(16, "big"), 0, "")
    assert len(lru) == 100 and lru.tokens == 100
    lru.clear()
    assert len(lru) == 0 and lru.tokens == 0


def test_the_memo_resolves_digests_and_refuses_unknown_ones():
    memo = PromptMemo(1000)
    a, b = prompt(1, 300), prompt(2, 300)
    da, db = digest(a), digest(b)
    assert len(da) == 16 and da == digest(a.copy()) and da != db
    got = memo.resolve(batch_of([da, db]), b"\x01\x01", [a, b])
    assert [np.array_equal(g, x) for g, x in zip(got, (a, b))] == [True, True]
    got = memo.resolve(batch_of([db, da, db]), b"\x00\x00\x00", [])  # digests alone, any order
    assert [np.array_equal(g, x) for g, x in zip(got, (b, a, b))] == [True, True, True]
    assert got[0] is got[2]  # one copy each, kept
    with pytest.raises(UnknownPrompt, match="prompt 1"):
        memo.resolve(batch_of([da, digest(prompt(3, 5))]), b"\x00\x00", [])
    assert len(memo) == 0  # emptied, as the client's mirror will be
    # a prompt sent and named again in one request: in order, so the second finds it
    assert [len(t) for t in memo.resolve(batch_of([da, da]), b"\x01\x00", [a])] == [300, 300]


def test_memo_prompts_are_copied_into_their_own_bytes_as_they_arrive():
    """A carried prompt is copied out of its request's buffer at once: the memo holds no
    view of a buffer (let go with the request), and the tree walks the held bytes as they
    are; named again, the very same array comes back."""
    memo = PromptMemo(1000)
    buf = np.concatenate([prompt(1, 300), prompt(2, 300)])
    a, b = buf[:300], buf[300:]
    da, db = digest(a), digest(b)
    got = memo.resolve(batch_of([da, db]), b"\x01\x01", [a, b])
    for held, sent in zip(got, (a, b)):
        assert np.array_equal(held, sent) and not np.shares_memory(held, buf)
        assert type(held.base) is bytes and query_bytes(held) is held.base  # walked as it is
    assert memo.resolve(batch_of([db, da]), b"\x00\x00", []) == (got[1], got[0])
    assert query_bytes(b) == b.tobytes()  # a view: its bytes made for each walk
    huge = np.concatenate([prompt(8, 1001), prompt(9, 10)])  # one part over the bound
    parts = [huge[:1001], huge[1001:]]
    got = memo.resolve(batch_of([digest(p) for p in parts]), b"\x01\x01", parts)
    assert [len(g) for g in got] == [1001, 10]  # answered, though the first is not held
    assert digest(huge[:1001]) not in memo and memo.tokens == 300 + 300 + 10

def test_the_mirror_predicts_the_memo():
    """Random batches over a pool larger than the bound: the mirror plans, the memo walks
    the request; no digest it sends alone is ever unknown, and both hold the same."""
    rng = seeded()
    pool = [prompt(int(rng.integers(1 << 31)), int(n)) for n in rng.integers(0, 400, 40)]
    digests = [digest(p) for p in pool]
    memo, mirror = PromptMemo(2000), PromptMirror(2000, generation=1)
    alone = 0
    for _ in range(300):
        pick = rng.integers(0, len(pool), int(rng.integers(1, 12)))
        keys, arrays = [digests[i] for i in pick], [pool[i] for i in pick]
        carried = mirror.plan(batch_of(keys), arrays)
        sent = [a for a, flag in zip(arrays, carried) if flag]
        got = memo.resolve(batch_of(keys), carried, sent)
        assert [np.array_equal(g, a) for g, a in zip(got, arrays)] == [True] * len(arrays)
        assert list(mirror._entries) == list(memo._entries) and mirror.tokens == memo.tokens
        alone += carried.count(0)
    assert alone > 0  # the memo did save tokens
    assert mirror.plan(batch_of(digests[:3]), pool[:3], resend=True) == b"\x01" * 3


def test_a_batch_the_memo_holds_whole_goes_as_digests_in_the_memo_order():
    """Every prompt held (a scheduler's next step; repeats among them): nothing carried,
    and the mirror's recency order is the memo's after it walks the request."""
    pool = [prompt(i, 100) for i in range(5)]
    keys = [digest(p) for p in pool]
    memo, mirror = PromptMemo(2000), PromptMirror(2000, generation=1)
    memo.resolve(batch_of(keys), mirror.plan(batch_of(keys), pool), pool)
    again = [3, 0, 3, 1]
    carried = mirror.plan(batch_of([keys[i] for i in again]), [pool[i] for i in again])
    assert carried == b"\x00" * 4
    memo.resolve(batch_of([keys[i] for i in again]), carried, [])
    assert list(mirror._entries) == list(memo._entries)
    assert list(mirror._entries) == [keys[i] for i in (2, 4, 0, 3, 1)]
    assert mirror.tokens == memo.tokens == 500


def test_the_memo_request_on_the_wire():
    arrays = [prompt(1, 8), prompt(2, 4), prompt(3, 2)]
    keys = [digest(a) for a in arrays]
    args, payloads = lookup_many_memo_args(batch_of(keys), b"\x01\x00\x01", arrays, [b"", b"", b""])
    assert args == {"digests": b"".join(keys), "carried": b"\x01\x00\x01"}  # no extra: left out
    assert [p.obj is a for p, a in zip(payloads, arrays[::2])] == [True, True]
    req = lookup_many_memo_request(args, [32, 8])
    assert req.digests.keys == keys and req.carried == b"\x01\x00\x01" and req.extras == [b""] * 3
    args, _ = lookup_many_memo_args(batch_of(keys), b"\x01\x00\x01", arrays, [b"x", b"", b""])
    assert lookup_many_memo_request(args, [32, 8]).extras == [b"x", b"", b""]
    good = {"digests": b"".join(keys), "carried": b"\x01\x00\x01"}
    for bad, sizes in (({**good, "digests": b"".join(keys)[:-1]}, [32, 8]),  # not whole
                       ({**good, "digests": "x" * 48}, [32, 8]),  # not bytes
                       ({**good, "carried": b"\x01\x00"}, [32, 8]),  # one short
                       ({**good, "carried": b"\x01\x02\x01"}, [32, 8]),  # not 0/1
                       ({**good, "carried": [1, 0, 1]}, [32, 8]),  # not bytes
                       (good, [32]),  # a carried prompt without its segment
                       (good, [32, 6]),  # not whole tokens
                       ({**good, "extra": [b""]}, [32, 8]),
                       ({"digests": b"\x00" * 16 * (MAX_LOOKUPS + 1),
                         "carried": b"\x00" * (MAX_LOOKUPS + 1)}, [])):
        with pytest.raises(InvalidArgument):
            lookup_many_memo_request(bad, sizes)


def test_the_bound_a_daemon_advertises():
    assert advertised_bound({"limits": {"max_memo_tokens": 4096}}) == 4096
    assert advertised_bound({"limits": {"max_tokens": 1}}) == 0  # a daemon before the memo
    assert advertised_bound({}) == 0  # not connected yet
    assert advertised_bound({"limits": {"max_memo_tokens": 0}}) == 0  # turned off
    assert advertised_bound({"limits": {"max_memo_tokens": True}}) == 0


def test_the_memo_holds_its_bound_in_its_own_bytes():
    """Random requests carrying views of one buffer each and naming held prompts: every
    prompt held is in its own bytes, their tokens within the bound, and every prompt
    resolves to its tokens."""
    rng = seeded()
    pool = [prompt(int(rng.integers(1 << 31)), int(n)) for n in rng.integers(1, 400, 40)]
    keys = [digest(p) for p in pool]
    memo, mirror = PromptMemo(2000), PromptMirror(2000, generation=1)
    for _ in range(300):
        picks = [int(i) for i in rng.choice(len(pool), int(rng.integers(1, 8)), replace=False)]
        flags = mirror.plan(batch_of([keys[i] for i in picks]), [pool[i] for i in picks])
        sent = [i for i, f in zip(picks, flags) if f]
        buf = np.concatenate([pool[i] for i in sent]) if sent else None
        ends = np.cumsum([len(pool[i]) for i in sent]) if sent else []
        views = [buf[end - len(pool[i]) : end] for i, end in zip(sent, ends)]
        got = memo.resolve(batch_of([keys[i] for i in picks]), flags, views)
        assert all(np.array_equal(g, pool[i]) for g, i in zip(got, picks))
        held = [v for _, v in memo._entries.values()]
        assert all(type(v.base) is bytes and len(v.base) == v.nbytes for v in held)
        assert sum(len(v) for v in held) == memo.tokens <= memo.max_tokens

def test_a_batch_of_new_entries_leaves_what_puts_one_by_one_leave():
    """``_put_new`` (one eviction pass) of ``fresh`` keys against ``put`` after ``put``: the
    same entries, in the same order, the same tokens, over random batches (ones over the
    bound among them; batches with repeats or held keys are put one by one)."""
    rng = seeded()
    one, batch = TokenLRU(1000), TokenLRU(1000)
    for _ in range(200):
        keys = [int(k).to_bytes(16, "big") for k in rng.integers(0, 60, int(rng.integers(1, 12)))]
        lengths = [int(n) for n in rng.integers(0, 1100, len(keys))]
        fresh = batch.fresh(keys)
        assert fresh == (len(set(keys)) == len(keys) and not any(k in one for k in keys))
        for key, n in zip(keys, lengths):
            one.put(key, n, n)
        if fresh:
            batch._put_new(keys, lengths, lengths)
        else:
            for key, n in zip(keys, lengths):
                batch.put(key, n, n)
        assert list(one._entries.items()) == list(batch._entries.items())
        assert one.tokens == batch.tokens <= 1000


def test_a_repeated_batch_gets_the_same_prompts_back_until_anything_changes():
    """The memo's repeat: the very same PromptBatch for the same digests named whole, while
    nothing changed; a carried prompt, another batch or a clear end it. The mirror plans
    alike, and both keep the same recency order throughout."""
    pool = [prompt(i, 100) for i in range(6)]
    keys = [digest(p) for p in pool]
    memo, mirror = PromptMemo(2000), PromptMirror(2000, generation=1)
    first = batch_of(keys[:4])
    memo.resolve(first, mirror.plan(first, pool[:4]), pool[:4])
    named = memo.resolve(first, mirror.plan(first, pool[:4]), [])
    assert named.tokens == 400 and [np.array_equal(a, p) for a, p in zip(named, pool)] == [True] * 4
    assert all(type(a.base) is bytes for a in named)  # named: each in its own bytes
    for _ in range(3):
        again = DigestBatch(first.blob)  # a new request: equal digests, other objects
        assert mirror.plan(again, pool[:4]) == bytes(4)
        assert memo.resolve(again, bytes(4), []) is named
    order = list(memo._entries)
    other = batch_of([keys[2], keys[0]])  # another batch moves its prompts
    assert mirror.plan(other, [pool[2], pool[0]]) == bytes(2)
    assert memo.resolve(other, bytes(2), []) is not named
    assert list(memo._entries) == list(mirror._entries) != order
    assert memo.resolve(first, bytes(4), []) is not named  # no longer the last batch
    repeated = memo.resolve(first, bytes(4), [])
    assert memo.resolve(first, bytes(4), []) is repeated
    new = batch_of([keys[4]])
    memo.resolve(new, mirror.plan(new, [pool[4]]), [pool[4]])  # a carried prompt
    mirror.plan(first, pool[:4])
    assert memo.resolve(first, bytes(4), []) is not repeated
    assert list(memo._entries) == list(mirror._entries)
    memo.clear()
    with pytest.raises(UnknownPrompt):  # cleared: the repeat is gone with the prompts
        memo.resolve(first, bytes(4), [])


def test_the_mirror_and_the_memo_agree_over_repeated_steps():
    """Random steps, most of them a repeat of the last (a scheduler whose queue waits):
    the planned flags, the prompts resolved and both recency orders agree."""
    rng = seeded()
    pool = [prompt(int(rng.integers(1 << 31)), int(n)) for n in rng.integers(1, 300, 24)]
    keys = [digest(p) for p in pool]
    memo, mirror = PromptMemo(1500), PromptMirror(1500, generation=1)
    picks = [0]
    for _ in range(400):
        if rng.random() < 0.4:  # a new step: a request arrives or leaves
            picks = [int(i) for i in rng.choice(len(pool), int(rng.integers(1, 10)))]
        batch = batch_of([keys[i] for i in picks])
        flags = mirror.plan(batch, [pool[i] for i in picks])
        sent = [pool[i] for i, f in zip(picks, flags) if f]
        got = memo.resolve(DigestBatch(batch.blob), flags, sent)
        assert [np.array_equal(g, pool[i]) for g, i in zip(got, picks)] == [True] * len(picks)
        assert got.tokens == sum(len(pool[i]) for i in picks)
        assert list(mirror._entries) == list(memo._entries) and mirror.tokens == memo.tokens


def test_a_digest_batch_keeps_the_wire_blob_and_splits_it_on_demand():
    keys = [digest(prompt(i, 10)) for i in range(3)] + [b"\x00" * 16]  # a zero tail survives
    batch = batch_of(keys)
    assert batch.blob == b"".join(keys) and len(batch) == 4
    assert DigestBatch(batch.blob).keys == keys
    assert DigestBatch(b"").keys == [] and len(DigestBatch(b"")) == 0
    with pytest.raises(ValueError):
        DigestBatch(b"x" * 17)
    with pytest.raises(ValueError):
        batch_of([b"short"])
