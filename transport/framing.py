"""Framing: how a message is laid out as bytes on every carrier.

::

    0        4                   4+H
    +--------+-------------------+-----------+-----------+-- ... --+
    | H (u32 | msgpack map       | segment 0 | segment 1 |         |
    |  BE)   | (H bytes)         | sizes[0]  | sizes[1]  |         |
    +--------+-------------------+-----------+-----------+-- ... --+

The header's ``sizes`` array declares the payload segments that follow. The
reader checks ``H`` before it allocates the header and the ``sizes`` before
it reads (or allocates room for) any payload byte (``Limits``). Stream
carriers (tcp, the shm control socket) send the frame as one byte stream;
ucx sends the 4-byte prefix, the header and each segment as separate tagged
messages of exactly those lengths.
"""

from __future__ import annotations

import struct

import msgpack

from kvstore.errors import ProtocolError

PREFIX = struct.Struct(">I")
PREFIX_BYTES = PREFIX.size
MAX_HEADER_LENGTH = (1 << 32) - 1


def _refuse_ext(code: int, data: bytes):
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def pack_header(header: dict) -> bytes:
    """The 4-byte length prefix followed by the msgpack header."""
    body = msgpack.packb(header, use_bin_type=True)
    if len(body) > MAX_HEADER_LENGTH:  # pragma: no cover - 4 GiB header
        raise ProtocolError("header too large to frame")
    return PREFIX.pack(len(body)) + body


def header_length(prefix) -> int:
    return PREFIX.unpack(prefix)[0]


def unpack_header(raw) -> object:
    """Decode a header body; any malformation raises ProtocolError.

    Strings must be UTF-8, map keys must be str or bytes, extension types are
    refused, and nothing may follow the map. The decoder's own container and
    string limits default to the body's length, which ``Limits`` caps.
    """
    try:
        return msgpack.unpackb(
            raw, raw=False, strict_map_key=True, ext_hook=_refuse_ext, use_list=True
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types: ExtraData, ValueError, ...
        raise ProtocolError(f"malformed header: {type(exc).__name__}: {exc}") from None


def frame(header: dict, payloads=()) -> list:
    """A whole message as a list of buffers ready for ``sendmsg`` (no payload copy)."""
    return [pack_header(header), *payloads]
