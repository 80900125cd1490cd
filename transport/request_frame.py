"""RequestFramer: a request's frame laid out for one gather send, its large arguments uncopied.

The synchronous client (``transport.sync_connection``) sends each request with
one ``sendmsg``. ``pack_header(Request(...).to_header())`` would copy a
lookup's 16 KiB of tokens three times (``tobytes``, into msgpack's buffer, and
behind the length prefix); ``RequestFramer.frame`` produces exactly the same
bytes (``framing``: the 4-byte length, then the msgpack map ``op``, ``id``,
``ns``, ``args``, ``sizes`` in that order, each integer in its shortest form)
as a short list of buffers instead, in which every contiguous ``memoryview``
argument of ``INLINE_BYTES`` or more (``WireOps`` passes the tokens so) is a
buffer of its own, sent from the caller's memory. The constant part of each op's header
(map length, ``op`` and its name, the ``id`` key) is packed once.

Not thread-safe: one framer per connection, used under its lock.
"""

from __future__ import annotations

import struct

import msgpack

from kvstore.errors import ProtocolError
from kvstore.transport.framing import MAX_HEADER_LENGTH, PREFIX, PREFIX_BYTES

INLINE_BYTES = 512  # a bin argument at least this long is sent from its own memory
_BIN16 = struct.Struct(">BH")
_BIN32 = struct.Struct(">BI")
_NS_KEY = b"\xa2ns"
_NS16 = b"\xa2ns\xc4\x10"  # the key and the bin header of a 16-byte namespace id
_ARGS_KEY = b"\xa4args"
_SIZES_KEY = b"\xa5sizes"


def _bin_header(n: int) -> bytes:
    """msgpack's header of a bin of ``n`` bytes (the shortest form, as ``packb`` writes)."""
    if n < 256:
        return bytes((0xC4, n))
    if n < 1 << 16:
        return _BIN16.pack(0xC5, n)
    return _BIN32.pack(0xC6, n)


def _map_header(n: int) -> bytes:
    return msgpack.Packer().pack_map_header(n)


_FIXMAPS = [_map_header(n) for n in range(16)]


class RequestFramer:
    """Frames requests as ``pack_header`` would, as buffers for ``sendmsg`` (see the module)."""

    def __init__(self):
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._heads: dict[tuple[str, int], bytes] = {}  # (op, fields) -> the constant head
        self._keys: dict[str, bytes] = {}  # an argument's name, packed

    def _head(self, op: str, fields: int) -> bytes:
        pack = self._pack
        head = self._heads[(op, fields)] = _map_header(fields) + pack("op") + pack(op) + pack("id")
        return head

    def _key(self, key: str) -> bytes:
        packed = self._keys[key] = self._pack(key)
        return packed

    def frame(self, op: str, request_id: int, ns: bytes | None, args: dict,
              sizes: list[int]) -> tuple[list, int]:
        """The frame (length prefix first) as buffers, and its length in bytes; the
        buffers' bytes, joined, are ``pack_header(Request(op, request_id, ns, args,
        sizes).to_header())``."""
        pack = self._pack
        fields = 2 + (ns is not None) + (not not args) + (not not sizes)
        chunk = self._heads.get((op, fields)) or self._head(op, fields)
        chunk += pack(request_id)
        if ns is not None:
            chunk += _NS16 + ns if len(ns) == 16 else _NS_KEY + pack(ns)
        bufs: list = []
        length = 0  # the bytes in ``bufs``
        if args:
            chunk += _ARGS_KEY + (_FIXMAPS[len(args)] if len(args) < 16 else _map_header(len(args)))
            keys = self._keys
            for key, value in args.items():
                chunk += keys.get(key) or self._key(key)
                if type(value) is memoryview and value.nbytes >= INLINE_BYTES \
                        and value.c_contiguous:
                    chunk += _bin_header(value.nbytes)
                    bufs.append(chunk)
                    bufs.append(value)
                    length += len(chunk) + value.nbytes
                    chunk = b""
                else:
                    chunk += pack(value)
        if sizes:
            chunk += _SIZES_KEY + pack(sizes)
        if chunk:
            bufs.append(chunk)
            length += len(chunk)
        if length > MAX_HEADER_LENGTH:  # pragma: no cover - a 4 GiB header
            raise ProtocolError("header too large to frame")
        bufs[0] = PREFIX.pack(length) + bufs[0]
        return bufs, length + PREFIX_BYTES
