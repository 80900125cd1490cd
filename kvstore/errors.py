"""Errors of the store, each with a stable numeric code.

The codes travel on the wire (transport error replies) and in the admin API,
so they never change meaning; new ones are appended.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    INTERNAL = 1
    INVALID_ARGUMENT = 2
    LAYOUT_MISMATCH = 3
    NOT_FOUND = 4
    CAPACITY = 5
    UNAUTHORIZED = 6
    PROTOCOL = 7
    TOO_LARGE = 8
    STORAGE = 9
    UNAVAILABLE = 10
    UNSUPPORTED_VERSION = 11
    DRAINING = 12
    TIMEOUT = 13
    UNKNOWN_PROMPT = 14


class KVStoreError(Exception):
    """Base of every error the store raises on purpose."""

    code = ErrorCode.INTERNAL


class InvalidArgument(KVStoreError, ValueError):
    code = ErrorCode.INVALID_ARGUMENT


class LayoutMismatch(InvalidArgument):
    code = ErrorCode.LAYOUT_MISMATCH


class NotFound(KVStoreError, KeyError):
    code = ErrorCode.NOT_FOUND


class CapacityError(KVStoreError):
    code = ErrorCode.CAPACITY


class Unauthorized(KVStoreError):
    code = ErrorCode.UNAUTHORIZED


class ProtocolError(KVStoreError):
    code = ErrorCode.PROTOCOL


class TooLarge(ProtocolError):
    code = ErrorCode.TOO_LARGE


class StorageError(KVStoreError, OSError):
    code = ErrorCode.STORAGE


class Unavailable(KVStoreError, ConnectionError):
    code = ErrorCode.UNAVAILABLE


class UnsupportedVersion(ProtocolError):
    code = ErrorCode.UNSUPPORTED_VERSION


class Draining(KVStoreError):
    code = ErrorCode.DRAINING


class Timeout(KVStoreError, TimeoutError):
    code = ErrorCode.TIMEOUT


class UnknownPrompt(InvalidArgument):
    """A ``lookup_many`` named a prompt by a digest its connection's memo does not hold
    (``transport.prompt_memo``): the client sends that request again with the tokens."""

    code = ErrorCode.UNKNOWN_PROMPT


_BY_CODE = {
    cls.code: cls
    for cls in (
        KVStoreError, InvalidArgument, LayoutMismatch, NotFound, CapacityError,
        Unauthorized, ProtocolError, TooLarge, StorageError, Unavailable,
        UnsupportedVersion, Draining, Timeout, UnknownPrompt,
    )
}


def error_from_code(code: int, message: str) -> KVStoreError:
    """The exception a client raises for an error reply with ``code``."""
    cls = _BY_CODE.get(code, KVStoreError)
    return cls(message)


class QuotaExceeded(CapacityError):
    """A tenant's request can never fit its quota (a put larger than the quota)."""

    code = ErrorCode.CAPACITY


class Stalled(Unavailable):
    """A peer sent part of a frame (or no hello) and then nothing within the deadline."""

    code = ErrorCode.UNAVAILABLE
