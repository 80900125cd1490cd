"""Bytes-like inputs as flat byte views, without copying when the input allows it."""

from __future__ import annotations

import numpy as np

from kvstore.errors import InvalidArgument


def byte_view(obj) -> memoryview:
    """A 1-D unsigned-byte memoryview of ``obj`` (bytes, bytearray, memoryview,
    a contiguous numpy array or a contiguous CPU torch tensor)."""
    if hasattr(obj, "detach") and hasattr(obj, "untyped_storage"):  # torch.Tensor
        if obj.device.type != "cpu":
            obj = obj.detach().cpu()
        if not obj.is_contiguous():
            raise InvalidArgument("tensor payload must be contiguous")
        import torch

        obj = obj.detach().reshape(-1).view(torch.uint8).numpy()
    if isinstance(obj, np.ndarray):
        if not obj.flags.c_contiguous:
            raise InvalidArgument("array payload must be C-contiguous")
        obj = obj.reshape(-1).view(np.uint8)
    try:
        view = memoryview(obj)
    except TypeError as exc:
        raise InvalidArgument(f"payload is not bytes-like: {type(obj).__name__}") from exc
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise InvalidArgument("payload must be contiguous")
        view = view.cast("B")
    return view
