"""CUDA backend: the kernels of ``pack.cu`` / ``unpack.cu`` through CuPy.

The sources are compiled once per device with NVRTC (``cupy.RawModule``);
``#include "x.cuh"`` lines are inlined here so CuPy's on-disk kernel cache
keys on the full text. Kernels run on the caller's current torch stream
(wrapped with ``cupy.cuda.ExternalStream``) and take torch data pointers:
per-layer K and V base addresses, the engine block ids and the payload slot
addresses travel as small int64 device tables. Right before every launch,
:func:`_check_launch` asserts shapes, strides, dtypes, devices and contiguity.
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.kernels.codecs import INT4, payload_spec
from kvstore.kernels.source import PagedSource

THREADS = 256  # KV_THREADS in kv_common.cuh
MAX_INT4_HEAD_DIM = 512  # g_scale[512] in pack.cu
_DIR = Path(__file__).resolve().parent
_DT = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}
_CODEC = {"none": "none", "fp8_e4m3": "fp8", "int8": "int8", "int4": "int4"}
_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.M)


@functools.cache
def available() -> bool:
    """True when CuPy imports (the CUDA path also needs CUDA tensors)."""
    try:
        import cupy  # noqa: F401
    except Exception:  # ImportError, or a CuPy that finds no CUDA library
        return False
    return True


def source(name: str) -> str:
    """Text of ``kernels/name`` with its local includes inlined (each once)."""
    seen: set[str] = set()

    def expand(fname: str) -> str:
        if fname in seen:
            return ""
        seen.add(fname)
        text = (_DIR / fname).read_text().replace("#pragma once\n", "")
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(name)


@functools.cache
def _module(op: str, device_index: int):
    import cupy

    with cupy.cuda.Device(device_index):
        return cupy.RawModule(code=source(f"{op}.cu"), options=("--std=c++17",))


@functools.cache
def _function(op: str, device_index: int, name: str):
    import cupy

    with cupy.cuda.Device(device_index):
        return _module(op, device_index).get_function(name)


def unsupported(src: PagedSource, codec: str) -> str | None:
    """Why the kernels cannot take this geometry (then the reference runs), or None."""
    if not src.plain:
        return ("the CUDA kernels take [num_blocks, block_size, H, D] views with a contiguous "
                "head dim; vLLM's CPU layouts (transposed K, AMX tiles) live in CPU memory, "
                "where the torch reference runs them")
    if codec == INT4 and src.layout.head_dim > MAX_INT4_HEAD_DIM:
        return f"int4 kernels take head_dim <= {MAX_INT4_HEAD_DIM}"
    if src.num_store_blocks > 65535 or 2 * src.layout.num_layers > 65535:
        return "grid too large"
    strides = src.k[0].stride()
    if any(t.stride() != strides for t in (*src.k, *src.v)):
        return "K and V views of all layers must share strides"
    return None


_TABLES: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_TABLES_LOCK = threading.Lock()


def _table(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An int64 device tensor holding ``values``, cached (its content is its key).

    A table made on one stream and used on another is marked as used there
    (``record_stream``), so evicting it never frees memory a kernel still reads.
    """
    key = (device.index, values)
    with _TABLES_LOCK:
        table = _TABLES.get(key)
        if table is not None:
            _TABLES.move_to_end(key)
    if table is None:
        host = torch.tensor(values, dtype=torch.int64).pin_memory()
        table = host.to(device, non_blocking=True)
        with _TABLES_LOCK:
            _TABLES[key] = table
            if len(_TABLES) > 256:
                _TABLES.popitem(last=False)
    table.record_stream(torch.cuda.current_stream(device))
    return table


def _check_launch(src: PagedSource, rows: list[torch.Tensor], nbytes: int,
                  tables: tuple[torch.Tensor, ...]) -> None:
    lay, dev = src.layout, src.device
    want = (src.num_blocks, src.ebs, lay.num_kv_heads, lay.head_dim)
    strides = src.k[0].stride()
    for t in (*src.k, *src.v):
        if t.device != dev or t.dtype != lay.torch_dtype or tuple(t.shape) != want:
            raise LayoutMismatch(f"cache view {tuple(t.shape)} {t.dtype} on {t.device}: "
                                 f"expected {want} {lay.torch_dtype} on {dev}")
        if t.stride() != strides or t.stride(-1) != 1:
            raise LayoutMismatch("all cache views must share strides with a contiguous head dim")
    ids = src.block_ids
    if ids.dtype != torch.int64 or ids.device != dev or not ids.is_contiguous() \
            or ids.numel() != src.num_store_blocks * (lay.block_tokens // src.ebs):
        raise InvalidArgument("block ids must be a contiguous int64 device tensor")
    for r in rows:
        if r.dtype != torch.uint8 or r.dim() != 1 or r.numel() != nbytes \
                or not r.is_contiguous() or r.device != dev:
            raise InvalidArgument(f"payloads must be contiguous uint8 [{nbytes}] on {dev}")
    for t, n in zip(tables, (lay.num_layers, lay.num_layers, len(rows))):
        if t.dtype != torch.int64 or t.device != dev or not t.is_contiguous() or t.numel() != n:
            raise InvalidArgument("pointer tables must be contiguous int64 device tensors")


def run(op: str, src: PagedSource, codec: str, rows: list[torch.Tensor]) -> None:
    """Launch ``kv_{op}_{codec}`` (op is "pack" or "unpack") over ``src`` and ``rows``."""
    import cupy

    lay, dev = src.layout, src.device
    spec = payload_spec(lay, codec)
    esz, D = lay.itemsize, lay.head_dim
    if not rows:
        return
    slot_align = esz if codec == "none" else 4
    if any(r.data_ptr() % slot_align for r in rows):
        raise InvalidArgument(f"payload slots must be {slot_align}-byte aligned")
    k_tab = _table(tuple(t.data_ptr() for t in src.k), dev)
    v_tab = _table(tuple(t.data_ptr() for t in src.v), dev)
    p_tab = _table(tuple(r.data_ptr() for r in rows), dev)
    _check_launch(src, rows, spec.nbytes, (k_tab, v_tab, p_tab))

    strides = [s * esz for s in src.k[0].stride()[:3]]  # block, token, head (bytes)
    addrs = [t.data_ptr() for t in (*src.k, *src.v)] + [r.data_ptr() for r in rows]
    vec = (D * esz) % 16 == 0 and all(s % 16 == 0 for s in strides) \
        and all(a % 16 == 0 for a in addrs)
    unit = 16 // esz if vec else (2 if codec == INT4 else 1)
    per_row = D // unit
    lanes = 1
    while lanes < min(per_row, 32):
        lanes *= 2
    offsets = list(spec.offsets()) + [0] * (5 - len(spec.sections))
    gaps = [(start << 8) | length for start, length in spec.gaps()]
    gaps += [0] * (5 - len(gaps))
    name = f"kv_{op}_{_CODEC[codec]}_{_DT[lay.torch_dtype]}_{'v' if vec else 's'}"
    i32, i64 = np.int32, np.int64
    args = (
        np.uint64(k_tab.data_ptr()), np.uint64(v_tab.data_ptr()),
        np.uint64(src.block_ids.data_ptr()), np.uint64(p_tab.data_ptr()),
        i32(lay.num_layers), i32(lay.block_tokens), i32(lay.num_kv_heads), i32(D),
        i32(src.ebs), i64(src.num_blocks), *(i64(s) for s in strides),
        *(i64(o) for o in offsets), *(i64(g) for g in gaps), i32(lanes),
    )
    grid = (lay.num_kv_heads, 2 * lay.num_layers, len(rows))
    fn = _function(op, dev.index, name)
    with cupy.cuda.Device(dev.index), _stream(torch.cuda.current_stream(dev).cuda_stream,
                                              dev.index):
        fn(grid, (THREADS,), args)


@functools.lru_cache(maxsize=64)
def _stream(ptr: int, device_index: int):
    """CuPy's handle on the torch stream ``ptr`` (ExternalStream is deprecated in
    CuPy 14 in favour of Stream.from_external; both wrap the same handle)."""
    import cupy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cupy.cuda.ExternalStream(ptr, device_index)
