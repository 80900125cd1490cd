"""Unit tests of the protocol layer: framing, messages, limits, URLs, auth."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from kvstore.errors import (
    ErrorCode,
    InvalidArgument,
    ProtocolError,
    TooLarge,
    Unauthorized,
    error_from_code,
)
from kvstore.transport.auth import TokenAuth
from kvstore.transport.framing import frame, header_length, pack_header, unpack_header
from kvstore.transport.limits import Limits
from kvstore.transport.messages import (
    Op,
    Reply,
    Request,
    decode_tokens,
    encode_tokens,
    parse_reply,
    parse_request,
)
from kvstore.transport.urls import CarrierURL, parse_url


def test_frame_layout():
    header = {"op": "put", "id": 7, "ns": b"n" * 16, "args": {"tokens": b"\x01\x00\x00\x00"},
              "sizes": [3, 2]}
    bufs = frame(header, [b"abc", memoryview(b"de")])
    prefix = bufs[0][:4]
    assert header_length(prefix) == len(bufs[0]) - 4
    assert unpack_header(bufs[0][4:]) == header
    assert bytes(bufs[1]) + bytes(bufs[2]) == b"abcde"
    assert pack_header({"a": 1})[:4] == b"\x00\x00\x00\x04"  # big-endian length


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", msgpack.packb({"a": 1}) + b"x", msgpack.packb(msgpack.ExtType(1, b"")),
    b"\xa3\xff\xfe\xfd",  # invalid UTF-8 string
    msgpack.packb({1: 2}),
])
def test_unpack_header_refuses_malformed(raw):
    with pytest.raises(ProtocolError):
        unpack_header(raw)


def test_request_roundtrip_and_validation():
    req = Request(Op.LOOKUP, id=5, ns=b"x" * 16, args={"tokens": b""})
    parsed = parse_request(unpack_header(pack_header(req.to_header())[4:]))
    assert parsed.op is Op.LOOKUP and parsed.id == 5 and parsed.ns == b"x" * 16
    assert parse_request({"op": "nope", "id": 1}).op == "nope"  # refused later, after the payload
    for bad in ({"op": 1}, [], {"op": "ping", "id": 2**64}, {"op": "ping", "sizes": [1.5]},
                {"op": "ping", "sizes": [True]}, {"op": "ping", "ns": b"short"},
                {"op": "ping", "args": []}, {"op": "ping", "id": True}):
        with pytest.raises(ProtocolError):
            parse_request(bad)


def test_reply_roundtrip_and_error_codes():
    ok = Reply(3, result={"tokens": 32}, sizes=[4])
    assert parse_reply(ok.to_header()).result == {"tokens": 32}
    failed = Reply.failure(4, TooLarge("too big"))
    parsed = parse_reply(failed.to_header())
    assert parsed.status == ErrorCode.TOO_LARGE and not parsed.ok
    assert isinstance(error_from_code(parsed.status, parsed.error), TooLarge)
    assert Reply.failure(1, RuntimeError("x")).status == ErrorCode.INTERNAL


def test_tokens_encoding():
    toks = np.array([0, 1, 2**32 - 1], dtype=np.uint32)
    assert np.array_equal(decode_tokens({"tokens": encode_tokens(toks)}), toks)
    assert encode_tokens(toks)[:4] == b"\x00\x00\x00\x00"  # little-endian
    with pytest.raises(InvalidArgument):
        decode_tokens({"tokens": b"abc"})
    with pytest.raises(InvalidArgument):
        decode_tokens({"tokens": [1, 2]})


def test_limits_checked_in_order():
    limits = Limits(max_header_bytes=100, max_payload_bytes=10, max_segments=2, max_tokens=4)
    limits.check_header_length(100)
    with pytest.raises(TooLarge):
        limits.check_header_length(101)
    assert limits.check_sizes([4, 6]) == 10
    with pytest.raises(TooLarge):
        limits.check_sizes([4, 7])
    with pytest.raises(TooLarge):
        limits.check_sizes([1, 1, 1])
    with pytest.raises(TooLarge):
        limits.check_tokens(5)
    assert Limits.from_dict({"max_payload_bytes": "1GiB"}).max_payload_bytes == 1 << 30
    with pytest.raises(InvalidArgument):
        Limits.from_dict({"max_bogus": 1})
    with pytest.raises(InvalidArgument):
        Limits(max_connections=-1)


def test_urls():
    assert parse_url("tcp://127.0.0.1:7801") == CarrierURL("tcp", "127.0.0.1", 7801)
    assert parse_url("tcp://localhost") == CarrierURL("tcp", "localhost", 7801)
    assert parse_url("ucx://[::1]:9") == CarrierURL("ucx", "::1", 9)
    assert str(parse_url("ucx://[::1]:9")) == "ucx://[::1]:9"
    assert parse_url("shm:///run/kv.sock").path == "/run/kv.sock"
    assert parse_url("shm://rel/kv.sock").path == "rel/kv.sock"
    for bad in ("http://x:1", "tcp://:80", "shm://", "nonsense", "tcp://h:99999"):
        with pytest.raises(InvalidArgument):
            parse_url(bad)


def test_auth_tokens(tmp_path):
    single = TokenAuth.from_text("# comment\n  s3cret \n")
    assert single.check("s3cret", "anyone") == "anyone"
    assert single.check(b"s3cret", "") == ""
    for bad in ("S3cret", "", None, 5, "s3cret!"):
        with pytest.raises(Unauthorized):
            single.check(bad, "")
    bound = TokenAuth.from_text("alice:tok-a\nbob: tok-b\n")
    assert bound.check("tok-a", "alice") == "alice"
    assert bound.check("tok-b", "bob") == "bob"
    with pytest.raises(Unauthorized):
        bound.check("tok-a", "bob")
    with pytest.raises(InvalidArgument):
        TokenAuth.from_text("")
    with pytest.raises(InvalidArgument):
        TokenAuth.from_text("a\nb\n")
    path = tmp_path / "token"
    path.write_text("file-token\n")
    path.chmod(0o600)
    assert TokenAuth.from_file(path).check("file-token", "t") == "t"
