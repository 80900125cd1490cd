"""Namespace: the engine-facing API (tokens + canonical KV tensors) over any backend.

The logic here (tokens -> whole blocks -> payloads -> tensors) is shared by
every carrier: a backend is a ``kvstore.store_api.BlockStore``. One that
declares ``capabilities.leases`` (the embedded store; an shm carrier that
maps the arena) is a ``LeasingStore``: blocks are then copied once, straight
between the caller's tensor and the arena slots of a lease. Others receive a
get into one reused buffer (``get_into``).

A daemon that cannot be reached is a miss unless ``strict``
(``kvstore.availability``); a hint (``Namespace.hint``) to it is dropped.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from kvstore.availability import SoftFailures
from kvstore.client.codec import BlockCodec
from kvstore.client.host_buffers import host_empty
from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.layout import KVLayout
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import BlockStore, PrefixHint, read_lease, write_lease
from kvstore.tokens import as_tokens, full_blocks


class _LazyBlocks:
    """payloads[i] encodes block i on demand: the store never asks for cached ones.

    Each block is encoded into its place in ``staging`` (``n`` payloads back
    to back, a buffer the namespace reuses), not into a new array per block:
    a new 2 MiB array is 512 fresh pages whose first-touch faults cost more
    than the copy.
    """

    def __init__(self, kv: torch.Tensor, codec: BlockCodec, n: int, staging: np.ndarray):
        self._encode, self._n = codec.encoder(kv), n
        self._staging, self._size = staging, codec.payload_nbytes

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int):
        if not 0 <= i < self._n:
            raise IndexError(i)
        out = self._staging[i * self._size : (i + 1) * self._size]
        self._encode(i, out)
        return out


class ReceiveBuffer:
    """A grow-only byte buffer that remote gets receive into, reused between reads.

    A fresh buffer per get would be a fresh ``mmap`` of tens of MiB whose
    pages fault in while the socket fills them; reusing one keeps them mapped.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self._buf = np.empty(0, dtype=np.uint8)

    def alloc(self, nbytes: int) -> np.ndarray:
        if nbytes > self._buf.size:
            self._buf = np.empty(nbytes, dtype=np.uint8)
        return self._buf[:nbytes]


class Namespace:
    """One namespace (layout, codec, tenant) of a backend, in tokens and KV tensors.

    ``availability``: the soft-failure rule its calls follow (shared by the
    namespaces of one client); by default one of its own, ``strict`` or not.
    """

    def __init__(self, backend: BlockStore, layout: KVLayout, codec: str = "none",
                 tenant: str = "", strict: bool = True,
                 availability: SoftFailures | None = None):
        self.backend, self.layout = backend, layout
        self.codec = BlockCodec(layout, codec)
        self.spec = NamespaceSpec(layout, codec, tenant, self.codec.payload_nbytes)
        self.id = backend.register(self.spec)
        self.block_tokens = layout.block_tokens
        self.availability = availability or SoftFailures(strict, type(backend).__name__)
        self.uses_leases = backend.capabilities.leases  # copy straight to and from arena slots
        self._receive = ReceiveBuffer()
        self._staging = ReceiveBuffer()  # puts over the wire encode their blocks into it

    @property
    def strict(self) -> bool:
        return self.availability.strict

    # -- checks -------------------------------------------------------------
    def _check_kv(self, kv) -> int:
        if not isinstance(kv, torch.Tensor):
            raise InvalidArgument(f"kv must be a torch.Tensor, got {type(kv).__name__}")
        if kv.dim() != 5:
            raise InvalidArgument(f"kv must be [layers, 2, tokens, heads, dim], got shape {tuple(kv.shape)}")
        lay = self.layout
        want = (lay.num_layers, 2, lay.num_kv_heads, lay.head_dim)
        got = (kv.shape[0], kv.shape[1], kv.shape[3], kv.shape[4])
        if got != want:
            raise LayoutMismatch(f"kv shape {tuple(kv.shape)} does not match the layout "
                                 f"[{want[0]}, 2, T, {want[2]}, {want[3]}]")
        if kv.dtype != self.codec.dtype:
            raise LayoutMismatch(f"kv dtype {kv.dtype} but the layout says {self.codec.dtype}")
        return kv.shape[2]

    def _soft(self, fn, default, *args):
        return self.availability.call(fn, default, *args)

    # -- API ------------------------------------------------------------------
    def lookup(self, tokens, extra: bytes = b"") -> int:
        """Leading tokens cached (a multiple of block_tokens)."""
        return self.availability.call(self.backend.lookup, 0, self.id, as_tokens(tokens), extra)

    def lookup_many(self, tokens_list, extras=None) -> list[int]:
        """``lookup`` of each token array (``extras[i]`` with each, default ``b""``), asked
        together: one round trip to a daemon (a scheduler's waiting requests)."""
        toks = list(tokens_list)  # the backend makes each one ``as_tokens`` (once)
        extras = list(extras) if extras is not None else None
        return self.availability.call(self.backend.lookup_many, [0] * len(toks), self.id, toks,
                                      extras)

    def put(self, tokens, kv: torch.Tensor, extra: bytes = b"") -> int:
        """Store the whole blocks of ``tokens`` from ``kv``; returns the tokens stored."""
        toks = as_tokens(tokens)
        bt = self.block_tokens
        n = min(full_blocks(toks, bt), self._check_kv(kv) // bt)
        if n == 0:
            return 0
        toks = toks[: n * bt]
        if self.uses_leases and self.codec.codec == "none":
            return self._soft(lambda: self._put_leased(toks, kv, extra), 0)
        if self.backend.capabilities.gathered_payloads:  # sent from kv itself, unstaged
            gathered = self.codec.gathered(kv, n)
            if gathered is not None:
                return self._soft(lambda: self.backend.put(self.id, toks, gathered, extra), 0)
        with self._staging.lock:  # one writer of the reused buffer at a time
            staging = self._staging.alloc(n * self.codec.payload_nbytes)
            blocks = _LazyBlocks(kv, self.codec, n, staging)
            return self._soft(lambda: self.backend.put(self.id, toks, blocks, extra), 0)

    def _put_leased(self, toks, kv, extra) -> int:
        be, encode = self.backend, self.codec.encoder(kv)
        with write_lease(be, self.id, toks, extra) as held:
            for j, slot in enumerate(held.lease.slots):
                encode(held.lease.first_block + j, be.read_slot(slot))
        return held.stored

    def get(self, tokens, extra: bytes = b"", device=None):
        """``(n, kv)``: leading cached tokens and their KV ``[L, 2, n, H, D]``; ``(0, None)`` on a miss."""
        toks = as_tokens(tokens)
        if self.uses_leases:
            return self._soft(lambda: self._get_leased(toks, extra, device), (0, None))
        n, payloads = self._soft(lambda: self.backend.get(self.id, toks, extra), (0, []))
        if n == 0:
            return 0, None
        out = self._empty(n, device)
        decode = self.codec.decoder(out)
        for i, payload in enumerate(payloads):
            decode(i, payload)
        return n, out

    def get_into(self, tokens, out: torch.Tensor, extra: bytes = b"") -> int:
        """Decode the cached prefix of ``tokens`` into ``out``; returns the tokens decoded.

        ``out`` is ``[L, 2, T, H, D]`` in the layout's dtype, an engine's own
        buffer (any device): nothing is allocated, each block is copied once
        (from the arena slot on shm/embedded, from the reused receive buffer
        otherwise). Only the blocks that fit in ``T`` are read; 0 on a miss.
        """
        bt = self.block_tokens
        toks = as_tokens(tokens)
        toks = toks[: min(len(toks), self._check_kv(out)) // bt * bt]
        if len(toks) == 0:
            return 0

        def consume(payloads):
            decode = self.codec.decoder(out)
            for i, payload in enumerate(payloads):
                decode(i, payload)

        return self.read_blocks(toks, consume, extra)

    def _get_leased(self, toks, extra, device):
        be = self.backend
        with read_lease(be, self.id, toks, extra) as lease:
            if lease.num_tokens == 0:
                return 0, None
            out = self._empty(lease.num_tokens, device)
            decode = self.codec.decoder(out)
            for i, slot in enumerate(lease.slots):
                decode(i, be.read_slot(slot))
            return lease.num_tokens, out

    def read_blocks(self, tokens, consume, extra: bytes = b"") -> int:
        """Leading cached tokens of ``tokens``; ``consume(payloads)`` sees their blocks first.

        ``payloads`` is one bytes-like per cached block (``spec.block_bytes``
        each, this namespace's codec), valid only during the call: on shm and
        embedded stores they are the arena slots themselves, under a read
        lease, so a caller that decodes them straight into its own tensors
        (``BlockCodec.decode_into``, ``kvstore.client.hf_adapter``) copies the
        prefix exactly once. On a miss ``consume`` is not called and 0 returned.
        """
        toks = as_tokens(tokens)
        if self.uses_leases:
            return self._soft(lambda: self._read_leased(toks, consume, extra), 0)
        with self._receive.lock:  # one reader of the reused buffer at a time
            n, buf = self._soft(lambda: self.backend.get_into(
                self.id, toks, self._receive.alloc, extra), (0, None))
            if n and buf is not None:
                bb, view = self.spec.block_bytes, memoryview(buf)
                consume([view[i : i + bb] for i in range(0, n // self.block_tokens * bb, bb)])
            return n

    def _read_leased(self, toks, consume, extra) -> int:
        be = self.backend
        with read_lease(be, self.id, toks, extra) as lease:
            if lease.num_tokens:
                consume([be.read_slot(slot) for slot in lease.slots])
            return lease.num_tokens

    def _empty(self, n: int, device) -> torch.Tensor:
        shape = self.layout.kv_shape(n)
        if device is not None and torch.device(device).type != "cpu":
            return torch.empty(shape, dtype=self.codec.dtype, device=device)
        return host_empty(shape, self.codec.dtype)

    def put_blocks(self, tokens, payloads, extra: bytes = b"") -> int:
        """Store raw payloads (``spec.block_bytes`` each) for the whole blocks of ``tokens``."""
        return self.backend.put(self.id, as_tokens(tokens), payloads, extra)

    def get_blocks(self, tokens, extra: bytes = b"") -> tuple[int, list[bytes]]:
        """Raw payloads of the cached prefix of ``tokens``."""
        return self.backend.get(self.id, as_tokens(tokens), extra)

    def delete(self, tokens, extra: bytes = b"") -> int:
        return self.backend.delete(self.id, as_tokens(tokens), extra)

    def hint(self, tokens, *, session_end: bool = False, keep_until: float | None = None,
             priority: int = 0, extra: bytes = b"") -> int:
        """Tell the store's eviction policies about the cached prefix of ``tokens``.

        ``session_end``: this conversation will not continue (its private
        blocks go first); ``keep_until``: protect the blocks for that many
        seconds from now; ``priority`` > 0: protect them until told otherwise
        (the lowest goes first when protected blocks must go). A new hint
        replaces the last one on the same blocks. Returns the leading tokens it
        applied to (0: nothing cached, a no-op). Hints change the order of
        eviction, never what a lookup or get returns; an unreachable daemon
        drops them (unless ``strict``).
        """
        hint = PrefixHint(session_end, keep_until, priority)
        toks = as_tokens(tokens)
        return self._soft(lambda: self.backend.hint(self.id, toks, hint, extra), 0)
