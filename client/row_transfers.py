"""Synchronous row transfers between a device and a namespace (the HF adapter's GPU path).

``save_rows`` / ``load_rows`` move whole store blocks ("rows": one payload
each) between an engine's tensors and the store, through the same timeline
and ordering rules as ``kvstore.client.transfer.PagedTransfers`` (see its
module docstring for the event diagrams), but one call at a time and
returning once the data is where it goes: the caller packs or unpacks the
rows with a kernel (``pack``/``unpack``), these functions lease, stage, copy,
and commit or release.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kvstore.client.codec import _as_uint8
from kvstore.client.transfer import STREAM, host_buffer
from kvstore.kernels.streams import Event, Timeline


def save_rows(ns, toks, extra: bytes, n: int, pack: Callable[[list, int, int], None],
              tl: Timeline, after: Event | None = None) -> int:
    """Store the ``n`` whole blocks of ``toks`` whose payloads ``pack(out, first, count)``
    writes (``out``: ``count`` 1-D uint8 rows on the timeline's device, for blocks
    ``first..first+count``); returns the tokens cached. Runs on the transfer stream after
    ``after`` (default: what the compute stream enqueued so far), and returns once the
    store has the blocks."""
    be, s, nbytes = ns.backend, tl.stream(STREAM), ns.spec.block_bytes
    toks = toks[: n * ns.block_tokens]
    tl.wait(s, after or tl.record(tl.compute(), "written"))
    if not be.capabilities.leases:
        out = tl.empty((n, nbytes), torch.uint8, s)
        with tl.on(s):
            tl.kernel(s, "pack")
            pack(list(out.unbind(0)), 0, n)
        host = out if not tl.separate_memory else host_buffer((n, nbytes), True)
        if tl.separate_memory:
            tl.copy(host, out, s, "d2h")
        tl.record(s, "copied").synchronize()
        return be.put(ns.id, toks, [r.numpy() for r in host.unbind(0)], extra)
    lease = be.lease_write(ns.id, toks, extra)
    try:
        if lease.slots:
            dest = [_as_uint8(be.read_slot(slot)) for slot in lease.slots]
            out = dest
            if tl.separate_memory:
                stage = tl.empty((len(dest), nbytes), torch.uint8, s)
                out = list(stage.unbind(0))
            with tl.on(s):
                tl.kernel(s, "pack")
                pack(out, lease.first_block, len(dest))
            if tl.separate_memory:
                for d, o in zip(dest, out):
                    tl.copy(d, o, s, "d2h")
            tl.record(s, "copied").synchronize()  # committed only once the copy landed
    except BaseException:
        be.release(lease.lease_id)
        raise
    return be.commit_lease(lease.lease_id)


def load_rows(ns, toks, extra: bytes, limit_blocks: int,
              unpack: Callable[[list, int, int], None], tl: Timeline) -> int:
    """Load the cached prefix of ``toks`` (at most ``limit_blocks`` blocks):
    ``unpack(rows, first, count)`` decodes ``count`` payload rows on the device into the
    engine. Returns the tokens found; the data is in place (on the compute stream's
    order) when it returns."""
    be, s, nbytes, T = ns.backend, tl.stream(STREAM), ns.spec.block_bytes, ns.block_tokens
    tl.wait(s, tl.record(tl.compute(), "load-ready"))

    def run(rows) -> None:
        count = min(len(rows), limit_blocks)
        if count == 0:
            return
        rows = rows[:count]
        if tl.separate_memory:
            stage = tl.empty((count, nbytes), torch.uint8, s)
            for i, row in enumerate(rows):
                tl.copy(stage[i], row, s, "h2d")
            rows = list(stage.unbind(0))
        with tl.on(s):
            tl.kernel(s, "unpack")
            unpack(rows, 0, count)
        done = tl.record(s, "loaded")
        tl.wait(tl.compute(), done)
        done.synchronize()  # the lease may go, the received bytes may be reused

    if not be.capabilities.leases:
        n, payloads = be.get(ns.id, toks, extra)
        if n:
            run([p if isinstance(p, torch.Tensor) else _as_uint8(p) for p in payloads])
        return min(n, limit_blocks * T)
    lease = be.lease_read(ns.id, toks, extra)
    try:
        if lease.num_tokens:
            run([_as_uint8(be.read_slot(slot)) for slot in lease.slots])
        return min(lease.num_tokens, limit_blocks * T)
    finally:
        be.release(lease.lease_id)
