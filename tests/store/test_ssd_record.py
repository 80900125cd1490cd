"""The SSD tier's on-disk format: record and segment headers, tombstones."""

from __future__ import annotations

import numpy as np
import pytest

from kvstore.errors import InvalidArgument
from kvstore.keys import ROOT_KEY
from kvstore.ssd.record import (
    RECORD_HEADER_SIZE,
    SEGMENT_COPY_OFFSETS,
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    SSDRecordHeader,
    pack_record_header,
    pack_segment_header,
    payload_offset,
    record_length,
    tombstone_pairs,
    tombstone_payload,
    unpack_record_header,
    unpack_segment_header,
)


def fields(**kw):
    base = dict(nonce=42, flags=0, seq=7, namespace=b"n" * 16, key=b"k" * 16, parent=ROOT_KEY,
                n_tokens=3, codec_len=4, extra_len=2, stored_len=1000, raw_len=1000,
                record_len=record_length(12 + 4 + 2, 1000, 4096), payload_sum=1, meta_sum=2)
    base.update(kw)
    return base


def test_record_header_round_trip():
    raw = pack_record_header(**fields())
    assert len(raw) == RECORD_HEADER_SIZE
    f = unpack_record_header(raw, 42, 4096)
    assert (f.seq, f.key, f.n_tokens, f.meta_len, f.stored_len) == (7, b"k" * 16, 3, 18, 1000)
    assert payload_offset(f.meta_len, 4096) == 4096


def test_record_header_rejects_damage_and_foreign_nonce():
    raw = bytearray(pack_record_header(**fields()))
    assert unpack_record_header(raw, 43, 4096) is None  # another segment's nonce
    for i in range(RECORD_HEADER_SIZE):
        bad = bytearray(raw)
        bad[i] ^= 1
        assert unpack_record_header(bad, 42, 4096) is None, i
    assert unpack_record_header(raw[:100], 42, 4096) is None
    # lengths that disagree are refused even with a valid checksum
    assert unpack_record_header(pack_record_header(**fields(record_len=4096)), 42, 4096) is None
    assert unpack_record_header(pack_record_header(**fields(raw_len=5)), 42, 4096) is None


def test_segment_header_survives_one_damaged_copy():
    raw = bytearray(pack_segment_header(SegmentHeader(9, 1234, 4096, 55)))
    assert len(raw) == SEGMENT_HEADER_SIZE
    assert unpack_segment_header(raw) == SegmentHeader(9, 1234, 4096, 55)
    first, second = SEGMENT_COPY_OFFSETS
    raw[first + 20] ^= 0xFF
    assert unpack_segment_header(raw).nonce == 1234
    raw[second + 30] ^= 0xFF
    assert unpack_segment_header(raw) is None


def test_record_header_dataclass():
    h = SSDRecordHeader(b"n" * 16, b"k" * 16, ROOT_KEY, [1, 2, 3], b"x", "fp8", 10)
    assert h.tokens.dtype == np.uint32
    assert h == SSDRecordHeader(b"n" * 16, b"k" * 16, ROOT_KEY, np.array([1, 2, 3]), b"x", "fp8", 10)
    assert h != SSDRecordHeader(b"n" * 16, b"k" * 16, ROOT_KEY, [1, 2, 4], b"x", "fp8", 10)
    assert h.meta_bytes() == np.array([1, 2, 3], "<u4").tobytes() + b"fp8" + b"x"
    with pytest.raises(InvalidArgument):
        SSDRecordHeader(b"short", b"k" * 16, ROOT_KEY, [1], b"", "none", 1)
    with pytest.raises(InvalidArgument):
        SSDRecordHeader(b"n" * 16, b"k" * 16, ROOT_KEY, [-1], b"", "none", 1)


def test_tombstone_payload_round_trip():
    pairs = [(bytes([i]) * 16, bytes([i + 1]) * 16) for i in range(5)]
    assert tombstone_pairs(tombstone_payload(pairs)) == pairs
    with pytest.raises(InvalidArgument):
        tombstone_payload([(b"a", b"b")])
