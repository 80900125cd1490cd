"""One dispatcher in front of the two implementations.

Automatic choice (``backend=None``): CUDA tensors and a CuPy that compiles and
runs a probe kernel (``cuda_backend.available``) run the CUDA kernels; anything else runs the torch reference (which also runs on
CUDA tensors, e.g. where CuPy is missing). ``backend="reference"`` or
``"cuda"`` forces one; forcing CUDA where it cannot run is an error.

Payload buffers: callers may pass ``out`` as nothing (a fresh ``[S, nbytes]``
buffer on the cache's device), one 2-D uint8 tensor, or a list of 1-D slots
(e.g. slots of a CPU arena); payloads to unpack as a 2-D tensor or a list of
1-D tensors, on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvstore.errors import InvalidArgument
from kvstore.kernels import cuda_backend, reference
from kvstore.kernels.codecs import payload_nbytes
from kvstore.kernels.source import PagedSource

REFERENCE = "reference"
CUDA = "cuda"
BACKENDS = (REFERENCE, CUDA)


def choose(src: PagedSource, codec: str, backend: str | None) -> str:
    """The backend that runs ``codec`` over ``src``."""
    if backend is not None and backend not in BACKENDS:
        raise InvalidArgument(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == REFERENCE:
        return REFERENCE
    problem = None
    if src.device.type != "cuda":
        problem = f"tensors are on {src.device}, not a CUDA device"
    elif not cuda_backend.available():
        problem = "CuPy cannot compile and run kernels here (no CuPy, NVRTC, driver or device)"
    else:
        problem = cuda_backend.unsupported(src, codec)
    if problem is None:
        return CUDA
    if backend == CUDA:
        raise InvalidArgument(f"the CUDA backend cannot run this call: {problem}")
    return REFERENCE


def _rows_of(payloads, count: int, nbytes: int, what: str) -> list[torch.Tensor]:
    """Validate ``count`` payloads of ``nbytes`` bytes; return them as 1-D tensors."""
    if isinstance(payloads, torch.Tensor):
        if payloads.dim() != 2:
            raise InvalidArgument(f"{what} must be a 2-D [S, nbytes] tensor or a list of 1-D ones")
        rows = list(payloads.unbind(0))
    elif isinstance(payloads, Sequence):
        rows = list(payloads)
    else:
        raise InvalidArgument(f"{what} must be a tensor or a list of tensors")
    if len(rows) != count:
        raise InvalidArgument(f"{what}: expected {count} payloads, got {len(rows)}")
    for r in rows:
        if not isinstance(r, torch.Tensor) or r.dtype != torch.uint8 or r.dim() != 1:
            raise InvalidArgument(f"{what} must be 1-D torch.uint8 tensors")
        if r.numel() != nbytes:
            raise InvalidArgument(f"{what}: a payload has {r.numel()} bytes, expected {nbytes}")
    return rows


def pack(src: PagedSource, codec: str, out, backend: str | None) -> list[torch.Tensor]:
    """Gather and encode ``src``'s store blocks; return one payload per block.

    ``out`` elsewhere than the cache's device (e.g. arena slots for a CUDA cache):
    the kernels write one device buffer, then one copy per payload lands it
    (one copy in all for a 2-D ``out``), asynchronous on the current stream
    where the host memory is pinned or registered (synchronise before reading
    it); nothing is staged on the host.
    """
    S, nbytes, dev = src.num_store_blocks, payload_nbytes(src.layout, codec), src.device
    if out is None:
        buf = torch.empty((S, nbytes), dtype=torch.uint8, device=dev)
        rows = list(buf.unbind(0))
    else:
        rows = _rows_of(out, S, nbytes, "out")
        buf = out if isinstance(out, torch.Tensor) else None
    if S == 0:
        return rows
    which = choose(src, codec, backend)
    direct = all(r.device == dev and r.is_contiguous() for r in rows)
    work_buf = None if direct else torch.empty((S, nbytes), dtype=torch.uint8, device=dev)
    work = rows if direct else list(work_buf.unbind(0))
    if which == CUDA:
        cuda_backend.run("pack", src, codec, work)
    else:
        whole = buf if direct and buf is not None and buf.is_contiguous() else work_buf
        reference.pack(src, codec, work, whole)
    if not direct:
        if buf is not None and buf.is_contiguous():
            buf.copy_(work_buf, non_blocking=True)  # one copy of every payload
        else:
            for r, w in zip(rows, work):
                r.copy_(w, non_blocking=True)
    return rows


def unpack(src: PagedSource, codec: str, payloads, backend: str | None) -> None:
    """Decode ``payloads`` and scatter them into ``src``'s engine slots only.

    Payloads elsewhere than the cache's device are copied once into one device
    buffer (asynchronously where pinned); the call returns once those copies
    landed (the caller may then release them), not waiting for the kernel.
    """
    S, nbytes, dev = src.num_store_blocks, payload_nbytes(src.layout, codec), src.device
    rows = _rows_of(payloads, S, nbytes, "payloads")
    if S == 0:
        return
    which = choose(src, codec, backend)
    copied = None  # the event after the copies of payloads from elsewhere
    if isinstance(payloads, torch.Tensor) and payloads.device == dev and payloads.is_contiguous():
        buf, rows = payloads, list(payloads.unbind(0))
    elif all(r.device == dev and r.is_contiguous() for r in rows):
        buf = None  # the slots as they are (e.g. an arena's, under a read lease)
    elif isinstance(payloads, torch.Tensor) and payloads.is_contiguous():
        buf = torch.empty((S, nbytes), dtype=torch.uint8, device=dev)
        buf.copy_(payloads, non_blocking=True)  # one copy of every payload
        rows = list(buf.unbind(0))
    else:  # one copy per payload straight into one device buffer, no host staging
        buf = torch.empty((S, nbytes), dtype=torch.uint8, device=dev)
        for dst, r in zip(buf.unbind(0), rows):
            dst.copy_(r, non_blocking=True)
        rows = list(buf.unbind(0))
    if buf is not None and buf is not payloads and dev.type == "cuda":
        copied = torch.cuda.Event()
        copied.record()
    if which == CUDA:
        cuda_backend.run("unpack", src, codec, rows)
    else:
        reference.unpack(src, codec, rows, buf)
    if copied is not None:  # the caller may reuse pinned payloads on return (not the kernel)
        copied.synchronize()
