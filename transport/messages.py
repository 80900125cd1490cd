"""Messages of the kvstore wire protocol: ops, the request and reply headers.

A request header is a msgpack map::

    {"op": str, "id": uint64, "ns": bin(16) | nil, "args": map, "sizes": [uint, ...]}

and a reply header::

    {"id": uint64, "status": 0 | ErrorCode, "result": map, "error": str, "sizes": [uint, ...]}

``status`` 0 is success (``result`` holds the op's answer); any other value is
an ``ErrorCode`` of ``kvstore.errors`` and ``error`` says why. ``sizes``
declares the payload segments that follow the header (see ``framing``).
Token ids travel as one ``bin`` of little-endian uint32 (``tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from kvstore.errors import ErrorCode, InvalidArgument, KVStoreError, ProtocolError
from kvstore.store_api import PrefixHint
from kvstore.tokens import TOKEN_DTYPE
from kvstore.transport.digest_batch import DIGEST_BYTES, DigestBatch

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1
NS_BYTES = 16
MAX_ID = (1 << 64) - 1


class Op(str, Enum):
    HELLO = "hello"
    REGISTER = "register"
    LOOKUP = "lookup"
    PUT = "put"
    GET = "get"
    LEASE = "lease"
    COMMIT = "commit"
    RELEASE = "release"
    DELETE = "delete"
    FLUSH = "flush"
    STATS = "stats"
    PING = "ping"
    HINT = "hint"
    LOOKUP_MANY = "lookup_many"


OPS = {op.value: op for op in Op}
# Ops that name a namespace (``ns`` is required).
NS_OPS = frozenset({Op.LOOKUP, Op.PUT, Op.GET, Op.LEASE, Op.DELETE, Op.HINT, Op.LOOKUP_MANY})
# The most token arrays one ``lookup_many`` carries (their tokens together: ``max_tokens``).
MAX_LOOKUPS = 4096
# The ops whose requests carry payload segments (blocks; lookup_many's token arrays).
PAYLOAD_OPS = frozenset({Op.PUT, Op.LOOKUP_MANY})


@dataclass
class Request:
    op: Op | str  # a str when the op is unknown (answered with an error)
    id: int = 0
    ns: bytes | None = None
    args: dict = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)

    def to_header(self) -> dict:
        header = {"op": self.op.value if isinstance(self.op, Op) else self.op, "id": self.id}
        if self.ns is not None:
            header["ns"] = self.ns
        if self.args:
            header["args"] = self.args
        if self.sizes:
            header["sizes"] = self.sizes
        return header


@dataclass
class Reply:
    id: int = 0
    status: int = 0
    result: dict = field(default_factory=dict)
    error: str = ""
    sizes: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 0

    def to_header(self) -> dict:
        header: dict = {"id": self.id, "status": self.status}
        if self.status:
            header["error"] = self.error
        else:
            header["result"] = self.result
        if self.sizes:
            header["sizes"] = self.sizes
        return header

    @classmethod
    def failure(cls, request_id: int, exc: BaseException) -> Reply:
        code = exc.code if isinstance(exc, KVStoreError) else ErrorCode.INTERNAL
        return cls(id=request_id, status=int(code), error=str(exc) or type(exc).__name__)


# -- header validation ---------------------------------------------------------
def _uint(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise ProtocolError(f"{what} must be an unsigned 64-bit int")
    return value


def _sizes(value) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError("sizes must be an array of unsigned ints")
    for size in value:
        _uint(size, "each size")
    return value


def parse_request(header) -> Request:
    """Validate a decoded request header's shape; raises ProtocolError.

    Only the framing-relevant fields are checked here (so that the payload
    extent is trusted); an unknown op is kept as a str for the dispatcher to
    refuse after the payload is skipped.
    """
    if not isinstance(header, dict):
        raise ProtocolError("header must be a map")
    request_id = _uint(header.get("id", 0), "id")
    sizes = _sizes(header.get("sizes"))
    op = header.get("op")
    if not isinstance(op, str):
        raise ProtocolError("op must be a string")
    ns = header.get("ns")
    if ns is not None and (not isinstance(ns, bytes) or len(ns) != NS_BYTES):
        raise ProtocolError(f"ns must be {NS_BYTES} bytes")
    args = header.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError("args must be a map")
    return Request(op=OPS.get(op, op), id=request_id, ns=ns, args=args, sizes=sizes)


def parse_reply(header) -> Reply:
    """Validate a decoded reply header's shape; raises ProtocolError.

    Plain ints, a map and a str (what msgpack decodes) take the short way; any
    other value goes through the full checks, which accept or refuse it exactly
    as before.
    """
    if not isinstance(header, dict):
        raise ProtocolError("reply header must be a map")
    status = header.get("status")
    if type(status) is not int or status < 0:
        if not isinstance(status, int) or isinstance(status, bool) or status < 0:
            raise ProtocolError("reply status must be an unsigned int")
    result = header.get("result")
    if type(result) is not dict:
        if result is None:
            result = {}
        elif not isinstance(result, dict):
            raise ProtocolError("reply result must be a map")
    request_id = header.get("id", 0)
    if type(request_id) is not int or not 0 <= request_id <= MAX_ID:
        request_id = _uint(request_id, "id")
    error = header.get("error")
    if type(error) is not str:
        error = str(error) if error else ""
    sizes = header.get("sizes")
    return Reply(request_id, status, result, error, _sizes(sizes) if sizes is not None else [])


# -- argument helpers ----------------------------------------------------------
def encode_tokens(tokens: np.ndarray) -> bytes:
    return np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).tobytes()


def decode_tokens(args: dict) -> np.ndarray:
    raw = args.get("tokens", b"")
    if not isinstance(raw, bytes) or len(raw) % TOKEN_DTYPE.itemsize:
        raise InvalidArgument("tokens must be bytes of little-endian uint32")
    return np.frombuffer(raw, dtype=TOKEN_DTYPE)


def arg_bytes(args: dict, name: str, default: bytes = b"", max_len: int = 1 << 16) -> bytes:
    value = args.get(name, default)
    if not isinstance(value, bytes) or len(value) > max_len:
        raise InvalidArgument(f"{name} must be bytes of at most {max_len}")
    return value


def arg_str(args: dict, name: str, default: str = "", max_len: int = 256) -> str:
    value = args.get(name, default)
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidArgument(f"{name} must be a string of at most {max_len} characters")
    return value


def arg_uint(args: dict, name: str, default: int | None = None) -> int:
    value = args.get(name, default)
    if value is None:
        raise InvalidArgument(f"{name} is required")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise InvalidArgument(f"{name} must be an unsigned int")
    return value


def lookup_many_args(arrays: list[np.ndarray], extras) -> tuple[dict, list[memoryview]]:
    """``lookup_many``'s args and payload: one segment per token array (``as_tokens``
    arrays, sent from their own memory as flat byte views: no copy) and ``extra`` only
    if one is set."""
    args = {"extra": [bytes(e) for e in extras]} if any(extras) else {}
    return args, [memoryview(a).cast("B") for a in arrays]


def lookup_many_request(args: dict, sizes: list[int]) -> list[bytes]:
    """Check a ``lookup_many`` request before its payload is read; the extra of each
    token array (InvalidArgument: more than ``MAX_LOOKUPS`` arrays, a segment that is
    not whole tokens, ``extra`` of another length)."""
    if len(sizes) > MAX_LOOKUPS:
        raise InvalidArgument(f"at most {MAX_LOOKUPS} token arrays in one lookup_many")
    _whole_tokens(sizes)
    return _extras(args, len(sizes))


def _whole_tokens(sizes: list[int]) -> None:
    if any(size % TOKEN_DTYPE.itemsize for size in sizes):
        raise InvalidArgument("each segment of lookup_many is a token array of uint32")


def _extras(args: dict, count: int) -> list[bytes]:
    extras = args.get("extra")
    if extras is None:
        return [b""] * count
    if not isinstance(extras, list) or len(extras) != count:
        raise InvalidArgument("extra must be an array with one bin per token array")
    return [arg_bytes({"extra": e}, "extra") for e in extras]


# -- lookup_many with the prompt memo (``transport.prompt_memo``) ----------------------


@dataclass(frozen=True)
class MemoLookups:
    """A checked memo ``lookup_many``: prompt i is ``digests[i]``; its tokens are the next
    payload segment when ``carried[i]`` is 1, else the memo's; ``extras[i]`` its extra."""

    digests: DigestBatch
    carried: bytes
    extras: list[bytes]


def lookup_many_memo_args(digests: DigestBatch, carried: bytes, arrays: list[np.ndarray],
                          extras) -> tuple[dict, list[memoryview]]:
    """A memo ``lookup_many``'s args (``digests``: every prompt's digest back to back,
    ``carried``: one byte a prompt, 1 when its tokens come) and payload (the carried
    prompts' token arrays, from their own memory)."""
    args = {"digests": digests.blob, "carried": carried}
    if any(extras):
        args["extra"] = [bytes(e) for e in extras]
    if 1 not in carried:  # every prompt held by the daemon (a scheduler's next step)
        return args, []
    return args, [memoryview(a).cast("B") for a, flag in zip(arrays, carried) if flag]


def lookup_many_memo_request(args: dict, sizes: list[int]) -> MemoLookups:
    """Check a memo ``lookup_many`` before its payload is read (InvalidArgument: digests
    not bytes of whole digests, more than ``MAX_LOOKUPS`` prompts, ``carried`` not one
    0/1 byte a prompt or not one 1 a segment, ``extra`` of another length)."""
    raw = args.get("digests")
    if not isinstance(raw, bytes) or len(raw) % DIGEST_BYTES:
        raise InvalidArgument(f"digests must be bytes of {DIGEST_BYTES}-byte digests")
    count = len(raw) // DIGEST_BYTES
    if count > MAX_LOOKUPS:
        raise InvalidArgument(f"at most {MAX_LOOKUPS} token arrays in one lookup_many")
    carried = args.get("carried")
    if not isinstance(carried, bytes) or len(carried) != count or \
            carried.translate(None, b"\x00\x01"):
        raise InvalidArgument("carried must be bytes of one 0 or 1 per digest")
    if carried.count(1) != len(sizes):
        raise InvalidArgument("lookup_many carries one segment per prompt marked in carried")
    _whole_tokens(sizes)
    return MemoLookups(DigestBatch(raw), carried, _extras(args, count))


def encode_hint(hint: PrefixHint) -> dict:
    """A hint's args (``session_end``, ``keep_until``, ``priority``); defaults are left out."""
    args: dict = {}
    if hint.session_end:
        args["session_end"] = True
    if hint.keep_until is not None:
        args["keep_until"] = hint.keep_until
    if hint.priority:
        args["priority"] = hint.priority
    return args


def decode_hint(args: dict) -> PrefixHint:
    """The ``PrefixHint`` of a ``hint`` request's args (InvalidArgument when malformed)."""
    session_end = args.get("session_end", False)
    keep_until = args.get("keep_until")
    priority = args.get("priority", 0)
    if not isinstance(session_end, bool):
        raise InvalidArgument("session_end must be a bool")
    return PrefixHint(session_end, keep_until, priority)  # checks the numbers
