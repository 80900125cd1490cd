"""The SSD tier's on-disk format: segment file header and block records.

A segment is one file ``seg-<id as 16 hex digits>.kvs`` in the tier's
directory. Segments are append-only: records are written at the end, never
overwritten; a segment is freed whole (unlinked). Segment ids only grow.

Segment file::

    0            2048          4096                                 file size
    +------------+-------------+--------------+--------------+-----+
    | seg header | seg header  |   record 0   |   record 1   | ... |
    |  (copy A)  |  (copy B)   | (ALIGN-sized | multiple)    |     |
    +------------+-------------+--------------+--------------+-----+

    segment header, 64 bytes, little-endian, stored twice (at 0 and 2048; the
    rest of the first 4 KiB is zero). A segment is usable when either copy
    verifies:

      0  magic        8s  b"KVSSDSEG"
      8  version      u16 (1)
     10  reserved     u16
     12  align        u32 record alignment in bytes (4096)
     16  segment_id   u64 (the id in the file name)
     24  nonce        u64 random; seeds every record header checksum
     32  created_ns   u64 wall clock at creation (informational)
     40  header_size  u32 4096: the first record starts here
     44  reserved     u32
     48  reserved     u64
     56  checksum     u64 xxh3_64(bytes [0, 56), seed 0)

Record (starts at a multiple of ``align`` from the start of the file)::

    |<------- payload_offset ------->|
    +--------------+-------------+---+------------------+---------+
    | fixed header | meta        | 0 | payload          | 0       |
    | 128 bytes    | tokens u32, |   | stored_len bytes |         |
    |              | codec, extra|   |                  |         |
    +--------------+-------------+---+------------------+---------+
    |<------------- record_len (a multiple of align) ------------>|

    payload_offset = align_up(128 + meta_len, align): the payload starts on
    an aligned file offset too, so it can be written and read with O_DIRECT
    straight from and into the caller's (aligned) buffer.

    fixed header, little-endian:

      0  magic        4s  b"KVRC"
      4  version      u16 (1)
      6  flags        u16 bit 0: payload is lz4 (lz4.block, no size prefix)
                          bit 1: tombstone (payload = (namespace, key) pairs,
                                 32 bytes each, that are deleted)
      8  meta_len     u32 4 * n_tokens + codec_len + extra_len
     12  n_tokens     u32
     16  seq          u64 record sequence number, grows across segments
     24  namespace    16s namespace fingerprint
     40  key          16s block key
     56  parent       16s parent block key (ROOT_KEY for a first block)
     72  codec_len    u16
     74  reserved     u16
     76  extra_len    u32
     80  stored_len   u64 payload bytes on disk (compressed size when lz4)
     88  raw_len      u64 payload bytes as the store gave them
     96  record_len   u64 whole record incl. padding (multiple of align)
    104  payload_sum  u64 xxh3_64(stored payload, seed 0)
    112  meta_sum     u64 xxh3_64(meta, seed 0)
    120  header_sum   u64 xxh3_64(bytes [0, 120), seed = segment nonce)

Checks: the header checksum makes the lengths trustworthy, so a record whose
meta or payload checksum fails is skipped alone (the next record starts ``record_len``
later). A header that does not verify is resynchronised past: the scan looks
at each following ``align`` boundary for a header that verifies. The header
checksum is seeded with the segment's random nonce, so bytes inside a payload
(which a client controls) can never pass for a record header: a forged
header would need the nonce, which never leaves the segment file. A header
whose record would run past the end of the file is a torn tail and ends the
scan of that segment. Bytes that are not covered by a checksum (padding, the
zero tail of the segment header block) carry no information.

Alignment (4 KiB by default) keeps every record and every payload on
file-system block boundaries: file sizes are exact disk usage (the capacity
cap counts them), resync only probes block boundaries, and payloads move with
O_DIRECT without a bounce copy. It costs at most 2 x align per record (under
1% for blocks of 1 MiB and more).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import xxhash

from kvstore.errors import InvalidArgument
from kvstore.keys import KEY_BYTES
from kvstore.tokens import TOKEN_DTYPE, as_tokens

FORMAT_VERSION = 1
DEFAULT_ALIGN = 4096

SEGMENT_MAGIC = b"KVSSDSEG"
SEGMENT_HEADER_SIZE = 4096
SEGMENT_COPY_OFFSETS = (0, 2048)
_SEG = struct.Struct("<8sHHIQQQIIQQ")
assert _SEG.size == 64

RECORD_MAGIC = b"KVRC"
RECORD_HEADER_SIZE = 128
_REC = struct.Struct("<4sHHIIQ16s16s16sHHIQQQQQQ")
assert _REC.size == RECORD_HEADER_SIZE
_HEADER_SUM_OFFSET = 120

FLAG_LZ4 = 1
FLAG_TOMBSTONE = 2
_KNOWN_FLAGS = FLAG_LZ4 | FLAG_TOMBSTONE

TOMBSTONE_ENTRY = 2 * KEY_BYTES


def align_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def payload_offset(meta_len: int, align: int) -> int:
    """Where the payload starts, relative to the record."""
    return align_up(RECORD_HEADER_SIZE + meta_len, align)


def record_length(meta_len: int, stored_len: int, align: int) -> int:
    return payload_offset(meta_len, align) + align_up(stored_len, align)


@dataclass(frozen=True, eq=False)
class SSDRecordHeader:
    """What a record says about its block (everything but the payload)."""

    namespace: bytes  # 16-byte namespace fingerprint
    key: bytes  # 16-byte block key
    parent: bytes  # 16-byte parent key (ROOT_KEY for a first block)
    tokens: np.ndarray  # the block's token ids, uint32
    extra: bytes = b""  # key salt of the prefix
    codec: str = "none"  # the namespace's codec name (informational)
    payload_len: int = 0  # payload length as the store gave it (uncompressed)

    def __post_init__(self) -> None:
        for name in ("namespace", "key", "parent"):
            value = getattr(self, name)
            if not isinstance(value, (bytes, bytearray)) or len(value) != KEY_BYTES:
                raise InvalidArgument(f"{name} must be {KEY_BYTES} bytes")
            object.__setattr__(self, name, bytes(value))
        object.__setattr__(self, "tokens", as_tokens(self.tokens))
        object.__setattr__(self, "extra", bytes(self.extra))
        if len(self.codec.encode()) > 0xFFFF:
            raise InvalidArgument("codec name too long")
        if self.payload_len < 0:
            raise InvalidArgument("payload_len must be >= 0")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SSDRecordHeader):
            return NotImplemented
        return (
            self.namespace == other.namespace
            and self.key == other.key
            and self.parent == other.parent
            and np.array_equal(self.tokens, other.tokens)
            and self.extra == other.extra
            and self.codec == other.codec
            and self.payload_len == other.payload_len
        )

    __hash__ = None  # type: ignore[assignment]

    def meta_bytes(self) -> bytes:
        return self.tokens.tobytes() + self.codec.encode() + self.extra


@dataclass(frozen=True)
class SSDLocation:
    """Where a record lies. Opaque to the store; valid until its segment is freed."""

    segment: int  # segment id
    offset: int  # record start in the segment file
    length: int  # record_len (with padding)
    payload_offset: int  # payload start, relative to ``offset``
    stored_len: int  # payload bytes on disk
    payload_len: int  # payload bytes after decompression
    flags: int = 0

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_LZ4)


@dataclass(frozen=True)
class RecordFields:
    """A decoded fixed header (what a scan or a read checks)."""

    flags: int
    meta_len: int
    n_tokens: int
    seq: int
    namespace: bytes
    key: bytes
    parent: bytes
    codec_len: int
    extra_len: int
    stored_len: int
    raw_len: int
    record_len: int
    payload_sum: int
    meta_sum: int


def pack_record_header(
    *,
    nonce: int,
    flags: int,
    seq: int,
    namespace: bytes,
    key: bytes,
    parent: bytes,
    n_tokens: int,
    codec_len: int,
    extra_len: int,
    stored_len: int,
    raw_len: int,
    record_len: int,
    payload_sum: int,
    meta_sum: int,
) -> bytes:
    meta_len = 4 * n_tokens + codec_len + extra_len
    head = _REC.pack(
        RECORD_MAGIC, FORMAT_VERSION, flags, meta_len, n_tokens, seq,
        namespace, key, parent, codec_len, 0, extra_len,
        stored_len, raw_len, record_len, payload_sum, meta_sum, 0,
    )[:_HEADER_SUM_OFFSET]
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head, seed=nonce))


def unpack_record_header(buf, nonce: int, align: int) -> RecordFields | None:
    """Decode a fixed header; ``None`` unless magic, checksum and lengths all hold."""
    if len(buf) < RECORD_HEADER_SIZE:
        return None
    mv = memoryview(buf)[:RECORD_HEADER_SIZE]
    if bytes(mv[:4]) != RECORD_MAGIC:
        return None
    (want,) = struct.unpack_from("<Q", mv, _HEADER_SUM_OFFSET)
    if xxhash.xxh3_64_intdigest(mv[:_HEADER_SUM_OFFSET], seed=nonce) != want:
        return None
    (_, version, flags, meta_len, n_tokens, seq, ns, key, parent, codec_len, _r1,
     extra_len, stored_len, raw_len, record_len, payload_sum, meta_sum, _) = _REC.unpack(mv)
    if version != FORMAT_VERSION or flags & ~_KNOWN_FLAGS:
        return None
    if meta_len != 4 * n_tokens + codec_len + extra_len:
        return None
    if record_len % align or record_len != record_length(meta_len, stored_len, align):
        return None
    if not flags & FLAG_LZ4 and stored_len != raw_len:
        return None
    return RecordFields(
        flags, meta_len, n_tokens, seq, ns, key, parent, codec_len, extra_len,
        stored_len, raw_len, record_len, payload_sum, meta_sum,
    )


def header_from_fields(f: RecordFields, meta) -> SSDRecordHeader:
    """The SSDRecordHeader of a verified record from its fixed header and meta bytes."""
    mv = memoryview(meta)
    ntok = 4 * f.n_tokens
    tokens = np.frombuffer(bytes(mv[:ntok]), dtype=TOKEN_DTYPE)
    codec = bytes(mv[ntok : ntok + f.codec_len]).decode(errors="replace")
    extra = bytes(mv[ntok + f.codec_len : ntok + f.codec_len + f.extra_len])
    return SSDRecordHeader(f.namespace, f.key, f.parent, tokens, extra, codec, f.raw_len)


def tombstone_payload(pairs) -> bytes:
    out = bytearray()
    for ns, key in pairs:
        if len(ns) != KEY_BYTES or len(key) != KEY_BYTES:
            raise InvalidArgument("namespace and key must be 16 bytes")
        out += ns
        out += key
    return bytes(out)


def tombstone_pairs(payload) -> list[tuple[bytes, bytes]]:
    mv = memoryview(payload)
    return [
        (bytes(mv[i : i + KEY_BYTES]), bytes(mv[i + KEY_BYTES : i + TOMBSTONE_ENTRY]))
        for i in range(0, len(mv) - TOMBSTONE_ENTRY + 1, TOMBSTONE_ENTRY)
    ]


@dataclass(frozen=True)
class SegmentHeader:
    segment_id: int
    nonce: int
    align: int
    created_ns: int = 0


def pack_segment_header(h: SegmentHeader) -> bytes:
    body = _SEG.pack(
        SEGMENT_MAGIC, FORMAT_VERSION, 0, h.align, h.segment_id, h.nonce, h.created_ns,
        SEGMENT_HEADER_SIZE, 0, 0, 0,
    )[:56]
    one = body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
    out = bytearray(SEGMENT_HEADER_SIZE)
    for off in SEGMENT_COPY_OFFSETS:
        out[off : off + len(one)] = one
    return bytes(out)


def unpack_segment_header(buf) -> SegmentHeader | None:
    """The first copy of the segment header that verifies, or ``None``."""
    mv = memoryview(buf)
    for off in SEGMENT_COPY_OFFSETS:
        one = mv[off : off + _SEG.size]
        if len(one) < _SEG.size or bytes(one[:8]) != SEGMENT_MAGIC:
            continue
        (want,) = struct.unpack_from("<Q", one, 56)
        if xxhash.xxh3_64_intdigest(one[:56]) != want:
            continue
        (_, version, _r, align, seg_id, nonce, created, hsize, _r2, _r3, _) = _SEG.unpack(one)
        if version != FORMAT_VERSION or hsize != SEGMENT_HEADER_SIZE:
            continue
        if align < 512 or align & (align - 1) or SEGMENT_HEADER_SIZE % align:
            continue
        return SegmentHeader(seg_id, nonce, align, created)
    return None
