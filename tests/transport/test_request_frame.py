"""``RequestFramer``: the sync client's frames are ``pack_header``'s bytes, large args uncopied."""

from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest

from kvstore.transport.framing import pack_header, unpack_header
from kvstore.transport.messages import MAX_ID, Op, Request, parse_request
from kvstore.transport.request_frame import INLINE_BYTES, RequestFramer

pytestmark = pytest.mark.unit

NS = bytes(range(16))


def joined(bufs: list) -> bytes:
    return b"".join(bytes(b) for b in bufs)


def expected(op, request_id, ns, args, sizes) -> bytes:
    return pack_header(Request(op, request_id, ns, args, sizes).to_header())


def tokens_view(n: int, seed: int = 0) -> memoryview:
    arr = np.random.default_rng(seed).integers(0, 1 << 32, n, dtype=np.uint32)
    return memoryview(arr).cast("B")


CASES = [
    ("lookup, 4096 tokens", Op.LOOKUP, 7, NS, {"tokens": tokens_view(4096)}, []),
    ("lookup with extra", Op.LOOKUP, 300, NS, {"tokens": tokens_view(4096), "extra": b"lora-1"}, []),
    ("tokens below INLINE_BYTES", Op.LOOKUP, 1, NS, {"tokens": tokens_view(INLINE_BYTES // 8)}, []),
    ("bin8 boundary", Op.GET, 1 << 16, NS, {"tokens": tokens_view(63)}, []),
    ("bin16", Op.GET, 1 << 33, NS, {"tokens": tokens_view(16383)}, []),
    ("bin32", Op.DELETE, MAX_ID, NS, {"tokens": tokens_view(16384)}, []),
    ("put with sizes", Op.PUT, 5, NS, {"tokens": tokens_view(512)}, [4096, 4096]),
    ("no ns, no args", Op.PING, 2, None, {}, []),
    ("stats", Op.STATS, 127, None, {}, []),
    ("hello", Op.HELLO, 1, None, {"version": 1, "tenant": "t", "client": "c"}, []),
    ("an odd ns", Op.LOOKUP, 3, b"\x01" * 20, {"tokens": tokens_view(100)}, []),
    ("16 args", Op.HINT, 9, NS, {f"a{i}": i for i in range(16)}, []),
    ("bytes tokens", Op.LOOKUP, 11, NS, {"tokens": bytes(tokens_view(4096))}, []),
]


@pytest.mark.parametrize("name,op,request_id,ns,args,sizes", CASES, ids=[c[0] for c in CASES])
def test_frame_is_the_bytes_of_pack_header(name, op, request_id, ns, args, sizes):
    bufs, nbytes = RequestFramer().frame(op.value, request_id, ns, args, sizes)
    raw = joined(bufs)
    assert raw == expected(op, request_id, ns, args, sizes)
    assert nbytes == len(raw)
    if ns is None or len(ns) == 16:  # (a daemon refuses another length: framed all the same)
        req = parse_request(unpack_header(raw[4:]))  # as the daemon reads it
        assert (req.op, req.id, req.ns, req.sizes) == (op, request_id, ns, sizes)


def test_large_tokens_are_sent_from_their_own_memory():
    """The tokens' view is one of the buffers itself: no copy into the header."""
    view = tokens_view(4096)
    bufs, _ = RequestFramer().frame("lookup", 1, NS, {"tokens": view, "extra": b"x"}, [])
    assert any(b is view for b in bufs)
    assert len(bufs) == 3  # head, the tokens, then extra


def test_a_strided_view_is_packed_not_referenced():
    arr = np.arange(2048, dtype=np.uint8)[::2]  # not contiguous
    view = memoryview(arr)
    with pytest.raises((ValueError, TypeError, BufferError)):
        msgpack.packb(view)  # msgpack refuses it too: the framer must not send it raw
    framer = RequestFramer()
    with pytest.raises((ValueError, TypeError, BufferError)):
        framer.frame("lookup", 1, NS, {"tokens": view}, [])


def test_random_requests_match_pack_header():
    seed = int(os.environ.get("KVSTORE_TEST_SEED", "0")) or int.from_bytes(os.urandom(4), "little")
    print(f"KVSTORE_TEST_SEED={seed}")
    rng = np.random.default_rng(seed)
    framer = RequestFramer()  # reused, as a connection does
    ops = list(Op)
    for _ in range(300):
        op = ops[int(rng.integers(len(ops)))]
        request_id = int(rng.integers(0, 1 << 63))
        ns = None if rng.random() < 0.3 else rng.bytes(16)
        args = {}
        if rng.random() < 0.8:
            args["tokens"] = tokens_view(int(rng.integers(0, 5000)), int(rng.integers(1 << 30)))
        if rng.random() < 0.3:
            args["extra"] = rng.bytes(int(rng.integers(0, 40)))
        if rng.random() < 0.2:
            args["keep_until"] = float(rng.random())
        sizes = [int(s) for s in rng.integers(0, 1 << 22, int(rng.integers(0, 4)))]
        bufs, nbytes = framer.frame(op.value, request_id, ns, args, sizes)
        raw = joined(bufs)
        assert raw == expected(op, request_id, ns, args, sizes)
        assert nbytes == len(raw)
