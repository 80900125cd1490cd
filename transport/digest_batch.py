"""Prompt digests, and a batch's digests as ``lookup_many`` carries them.

A digest names a prompt's tokens on one connection (``transport.prompt_memo``):
the 16-byte xxh3_128 of its token array's bytes. A memo request carries the
digests of all its prompts back to back in one ``bin``::

    digests:  | digest 0 (16 B) | digest 1 (16 B) | ... | digest n-1 (16 B) |

``DigestBatch`` keeps that blob as it is: a scheduler's step that repeats the
last one is recognised by comparing blobs (one ``memcmp`` of n x 16 bytes),
and the blob is split into n ``bytes`` keys only when a batch must be walked
prompt by prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash

DIGEST_BYTES = 16
_DIGEST_DTYPE = np.dtype(f"V{DIGEST_BYTES}")  # ``tolist`` gives one ``bytes`` each


def digest(tokens: np.ndarray) -> bytes:
    """The 16-byte xxh3_128 digest of a token array's bytes (contiguous little-endian uint32)."""
    return xxhash.xxh3_128_digest(tokens)


def digests(arrays: Sequence[np.ndarray]) -> list[bytes]:
    """``digest`` of each array (one C call each, no Python frame between)."""
    return list(map(xxhash.xxh3_128_digest, arrays))


class DigestBatch:
    """The digests of a batch's prompts, in order: ``blob`` as on the wire, ``keys`` split."""

    __slots__ = ("blob", "_keys")

    def __init__(self, blob: bytes, keys: list[bytes] | None = None):
        if len(blob) % DIGEST_BYTES:
            raise ValueError(f"a digest batch is whole {DIGEST_BYTES}-byte digests")
        self.blob = blob
        self._keys = keys

    @classmethod
    def of(cls, keys: Sequence[bytes]) -> DigestBatch:
        """The batch of these digests (each ``DIGEST_BYTES`` long)."""
        keys = list(keys)
        blob = b"".join(keys)
        if len(blob) != DIGEST_BYTES * len(keys):
            raise ValueError(f"a digest is {DIGEST_BYTES} bytes")
        return cls(blob, keys)

    @property
    def keys(self) -> list[bytes]:
        """Each prompt's digest (split from the blob once, in one C pass)."""
        if self._keys is None:
            self._keys = np.frombuffer(self.blob, _DIGEST_DTYPE).tolist()
        return self._keys

    def __len__(self) -> int:
        return len(self.blob) // DIGEST_BYTES
