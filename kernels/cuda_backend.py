"""CUDA backend: the kernels of ``pack.cu`` / ``unpack.cu`` through CuPy.

The sources are compiled once per device with NVRTC (``cupy.RawModule``);
``#include "x.cuh"`` lines are inlined here so CuPy's on-disk kernel cache
keys on the full text. Kernels run on the caller's current torch stream
(wrapped with ``cupy.cuda.ExternalStream``) and take torch data pointers:
per-layer K and V base addresses, the engine block ids and the payload slot
addresses travel as small int64 device tables, each uploaded on the stream
that reads it (cached per stream: a table copied on stream A is never read by
a kernel on stream B before the copy has landed). Right before every launch,
:func:`_check_launch` asserts shapes, strides, dtypes, devices and contiguity.

The one seam: :class:`Launcher` (the stream, the table upload and the kernel
launch). The default, :class:`CupyLauncher`, is the production path; the
tests install the CUDA emulator of ``tests/kernels/emulation`` instead, which
runs the same ``.cu`` sources on CPU tensors (``set_launcher``), so everything
:func:`run` computes (tables, strides, offsets, kernel choice, grid) is what
the emulated kernels receive.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

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


_log = logging.getLogger(__name__)

_PROBE = r'''extern "C" __global__ void kv_probe(int* out) { out[threadIdx.x] = 42 + threadIdx.x; }'''


@functools.cache
def available() -> bool:
    """True when CuPy imports *and* a trivial kernel compiles (NVRTC) and runs
    (driver, device) on the current device: a CuPy without NVRTC or a driver
    would otherwise make every CUDA call raise instead of falling back to the
    reference. Probed once per process; the reason for a False is logged."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
        out = cupy.zeros(2, dtype=cupy.int32)
        cupy.RawKernel(_PROBE, "kv_probe")((1,), (2,), (out,))
        got = [int(x) for x in out.get()]
        if got != [42, 43]:
            raise RuntimeError(f"probe kernel wrote {got}, expected [42, 43]")
    except Exception as e:  # ImportError, no NVRTC / driver / device, a failed launch
        _log.warning("CUDA kernels unavailable, the torch reference runs instead: %s: %s",
                     type(e).__name__, e)
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


class Launcher(Protocol):
    """Where kernels run. :func:`run` builds every argument; a launcher supplies the
    stream, puts pointer tables where the kernel can read them, and launches."""

    def stream(self, device: torch.device) -> object:
        """The stream kernels on ``device`` run on now (a key for the table cache)."""

    def upload(self, host: torch.Tensor, device: torch.device, stream: object) -> torch.Tensor:
        """``host`` (int64, CPU) as a tensor the kernels on ``device`` read, copied on
        ``stream`` (so every later launch on that stream sees it landed)."""

    def launch(self, op: str, name: str, grid: tuple[int, int, int],
               block: tuple[int, int, int], shared_mem: int, args: tuple,
               device: torch.device, stream: object,
               buffers: Sequence[torch.Tensor]) -> None:
        """Run kernel ``name`` of ``{op}.cu`` over ``grid`` x ``block`` threads with
        ``args``; ``buffers`` are every tensor it may touch (for checking launchers)."""


class CupyLauncher:
    """The production launcher: NVRTC through CuPy, on the caller's torch stream."""

    def stream(self, device: torch.device) -> object:
        return torch.cuda.current_stream(device)

    def upload(self, host: torch.Tensor, device: torch.device, stream: object) -> torch.Tensor:
        with torch.cuda.stream(stream):
            return host.pin_memory().to(device, non_blocking=True)

    def launch(self, op, name, grid, block, shared_mem, args, device, stream, buffers) -> None:
        import cupy

        fn = _function(op, device.index, name)
        with cupy.cuda.Device(device.index), _stream(stream.cuda_stream, device.index):
            fn(grid, block, args, shared_mem=shared_mem)


_LAUNCHER: Launcher = CupyLauncher()


def set_launcher(launcher: Launcher | None) -> Launcher:
    """Install ``launcher`` (None: the CuPy one); return the previous one."""
    global _LAUNCHER
    previous, _LAUNCHER = _LAUNCHER, launcher or CupyLauncher()
    return previous


def launcher() -> Launcher:
    return _LAUNCHER


_TABLES: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_TABLES_LOCK = threading.Lock()


def _stream_key(stream: object) -> object:
    return getattr(stream, "cuda_stream", stream)


def _table(values: tuple[int, ...], device: torch.device, stream: object) -> torch.Tensor:
    """An int64 tensor holding ``values`` for kernels on ``stream``, cached.

    The cache key is (device, stream, values): a table is uploaded (asynchronously)
    on the stream whose kernels read it, so its copy is ordered before them. One
    shared per device would be read by a kernel on another stream with nothing
    ordering it after the copy (a race on first use). Tables are only ever used
    on the stream they were copied on, so evicting one never frees memory a
    kernel of another stream still reads.
    """
    key = (str(device), _stream_key(stream), values)
    with _TABLES_LOCK:
        table = _TABLES.get(key)
        if table is not None:
            _TABLES.move_to_end(key)
            return table
    table = _LAUNCHER.upload(torch.tensor(values, dtype=torch.int64), device, stream)
    with _TABLES_LOCK:
        _TABLES[key] = table
        if len(_TABLES) > 256:
            _TABLES.popitem(last=False)
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
    lay, dev = src.layout, src.device
    spec = payload_spec(lay, codec)
    esz, D = lay.itemsize, lay.head_dim
    if not rows:
        return
    slot_align = esz if codec == "none" else 4
    if any(r.data_ptr() % slot_align for r in rows):
        raise InvalidArgument(f"payload slots must be {slot_align}-byte aligned")
    launch = _LAUNCHER
    stream = launch.stream(dev)
    k_tab = _table(tuple(t.data_ptr() for t in src.k), dev, stream)
    v_tab = _table(tuple(t.data_ptr() for t in src.v), dev, stream)
    p_tab = _table(tuple(r.data_ptr() for r in rows), dev, stream)
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
    buffers = (*src.k, *src.v, src.block_ids, *rows, k_tab, v_tab, p_tab)
    launch.launch(op, name, grid, (THREADS, 1, 1), 0, args, dev, stream, buffers)


@functools.lru_cache(maxsize=64)
def _stream(ptr: int, device_index: int):
    """CuPy's handle on the torch stream ``ptr`` (ExternalStream is deprecated in
    CuPy 14 in favour of Stream.from_external; both wrap the same handle)."""
    import cupy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return cupy.cuda.ExternalStream(ptr, device_index)
