"""Run the CUDA kernels' unmodified ``.cu`` sources on the CPU.

``build(op)`` compiles ``cuda_emu.h`` + ``cuda_backend.source(f"{op}.cu")`` (the
text NVRTC gets) + a typed entry for the kernels' parameter list with g++ into a
shared library, once per content hash, under ``$KV_EMU_CACHE`` (default: a
``kvstore-cuda-emu`` folder in the temp dir). :class:`EmulatorLauncher` is a
``cuda_backend.Launcher``: pointer tables stay host int64 tensors, and a launch
registers every buffer the backend hands it (memcheck bounds), checks the
argument sizes against the kernel's parameters and runs the grid.

Seeds: the thread order after every barrier is shuffled with a seed derived
from ``$KV_EMU_SEED`` (random per process when unset; printed by
:func:`base_seed` and in every failure) and the launch's number.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from kvstore.kernels import cuda_backend

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emu.h"
RUNTIME = HERE / "emu_runtime.cpp"
SIGNATURE = "KV_PARAMS"  # the parameter list every kernel of pack.cu / unpack.cu takes
CXX = os.environ.get("CXX", "g++")
# -fno-gnu-unique and -Bsymbolic: the statics of inline functions (__shared__
# variables) stay private to each library (a mutant's are not the original's).
FLAGS = ["-std=c++17", "-O1", "-fPIC", "-fno-gnu-unique", "-ffp-contract=off",
         "-fno-strict-aliasing",
         "-fno-fast-math", "-Wall", "-Wno-unused-function", "-Wno-unused-variable"]
MEMCHECK = ["-fsanitize=kernel-address", "--param", "asan-instrumentation-with-call-threshold=0",
                "--param", "asan-stack=0", "--param", "asan-globals=0"]

TRAILER = """
// ---- emulator entry (appended by emulator.py) ----
#include <cstddef>
#include <type_traits>
#include <utility>
typedef void emu_kernel_t(%(sig)s);
// Reading the parameter cells is the launch's business, not the kernel's: not checked.
template <class... A, std::size_t... I>
__attribute__((no_sanitize_address)) static void emu_invoke(void (*f)(A...), void** p, std::index_sequence<I...>) {
  f(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}
template <class... A>
static void emu_call_typed(void (*f)(A...), void** p) {
  emu_invoke(f, p, std::index_sequence_for<A...>{});
}
template <class... A>
static int emu_sizes(void (*)(A...), int* out) {
  int n = 0;
  ((out[n++] = (int)sizeof(A)), ...);
  return n;
}
extern "C" void emu_call(void* fn, void** p) {
  emu_call_typed(reinterpret_cast<emu_kernel_t*>(fn), p);
}
extern "C" int emu_param_sizes(int* out) {
  return emu_sizes(static_cast<emu_kernel_t*>(nullptr), out);
}
// This library's .bss (GNU ld's symbols, bound locally): its __shared__ statics.
extern "C" char __bss_start[] __attribute__((visibility("hidden")));
extern "C" char _end[] __attribute__((visibility("hidden")));
extern "C" void emu_shared_range(char** lo, char** hi) {
  *lo = __bss_start;
  *hi = _end;
}
"""


class EmulationError(RuntimeError):
    """A kernel failed under emulation: memcheck, a barrier or warp-exchange
    deadlock, a bad launch."""


_SEED: int | None = None


def base_seed() -> int:
    global _SEED
    if _SEED is None:
        env = os.environ.get("KV_EMU_SEED")
        _SEED = int(env) if env else random.SystemRandom().randrange(1 << 31)
        print(f"[cuda-emu] thread-order seed KV_EMU_SEED={_SEED}", file=sys.stderr)
    return _SEED


def cache_dir() -> Path:
    d = Path(os.environ.get("KV_EMU_CACHE") or Path(tempfile.gettempdir()) / "kvstore-cuda-emu")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _compiler_id() -> str:
    out = subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def _compile(args: list[str], what: str) -> None:
    r = subprocess.run([CXX, *args], capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise EmulationError(f"g++ failed on {what}:\n{r.stderr[-6000:]}")


def _build(kind: str, text: str, flags: list[str], link: list[str]) -> Path:
    """Compile ``text`` into a shared library, once per content hash (file lock)."""
    key = hashlib.sha256("\0".join([_compiler_id(), " ".join(flags + link),
                                     HEADER.read_text(), text]).encode()).hexdigest()[:24]
    d = cache_dir()
    lib = d / f"{kind}-{key}.so"
    if lib.exists():
        return lib
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.exists():
            return lib
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            src = Path(tmp) / "src.cpp"
            src.write_text(text)
            _compile([*flags, "-I", str(HERE), "-c", str(src), "-o", f"{tmp}/o.o"], kind)
            _compile(["-shared", *link, "-o", f"{tmp}/lib.so", f"{tmp}/o.o"], f"{kind} (link)")
            os.replace(f"{tmp}/lib.so", lib)
    return lib


_RUNTIME: ctypes.CDLL | None = None


def runtime() -> ctypes.CDLL:
    """The emulator runtime, loaded once, RTLD_GLOBAL (kernel libraries link to it)."""
    global _RUNTIME
    if _RUNTIME is None:
        path = _build("emu-rt", RUNTIME.read_text(), FLAGS, [])
        rt = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        rt.emu_launch.restype = ctypes.c_int
        rt.emu_launch.argtypes = [ctypes.c_char_p, *[ctypes.c_void_p] * 5,
                                  *[ctypes.c_uint] * 6, ctypes.c_uint64]
        rt.emu_error.restype = ctypes.c_char_p
        rt.emu_add_region.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p]
        _RUNTIME = rt
    return _RUNTIME


def translation_unit(source_text: str, signature: str = SIGNATURE) -> str:
    """The TU g++ compiles: the emulation header, the NVRTC text, the entry."""
    return '#include "cuda_emu.h"\n#line 1 "kernel.cu"\n' + source_text + \
        TRAILER % {"sig": signature}


class Module:
    """One compiled kernel source (``pack.cu`` or ``unpack.cu``, or a mutation)."""

    def __init__(self, source_text: str, signature: str = SIGNATURE):
        """``signature``: the parameter list every kernel of the source takes."""
        self.rt = runtime()
        # no start files: the library's .bss then holds the __shared__ statics alone
        self.path = _build("emu-kernels", translation_unit(source_text, signature),
                           FLAGS + MEMCHECK, ["-nostartfiles", "-Wl,-Bsymbolic"])
        self.lib = ctypes.CDLL(str(self.path))
        sizes = (ctypes.c_int * 64)()
        n = self.lib.emu_param_sizes(sizes)
        self.param_sizes = list(sizes[:n])
        lo, hi = ctypes.c_void_p(), ctypes.c_void_p()
        self.lib.emu_shared_range(ctypes.byref(lo), ctypes.byref(hi))
        self.shared = (lo.value or 0, hi.value or 0)
        self.call = ctypes.cast(self.lib.emu_call, ctypes.c_void_p).value

    def function(self, name: str) -> int:
        try:
            return ctypes.cast(getattr(self.lib, name), ctypes.c_void_p).value
        except AttributeError:
            raise EmulationError(f"no kernel {name!r} in the source") from None


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """Bytes [lo, hi) a strided tensor can reach."""
    if t.numel() == 0:
        return t.data_ptr(), t.data_ptr()
    lo = sum(min(0, (n - 1) * s) for n, s in zip(t.shape, t.stride()))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(t.shape, t.stride())) + 1
    return t.data_ptr() + lo * t.element_size(), t.data_ptr() + hi * t.element_size()


class EmulatorLauncher:
    """``cuda_backend.Launcher`` that runs the kernels on CPU tensors' memory."""

    def __init__(self, sources: dict[str, str] | None = None, seed: int | None = None,
                 signature: str = SIGNATURE):
        """``sources``: op -> source text (default: the real ones, via
        ``cuda_backend.source``); a test of the harness passes mutated texts
        (or its own kernels, whose parameter list is ``signature``)."""
        self.sources = sources or {}
        self.signature = signature
        self.modules: dict[str, Module] = {}
        self.seed = base_seed() if seed is None else seed
        self.launches: list[dict] = []

    def module(self, op: str) -> Module:
        if op not in self.modules:
            text = self.sources.get(op) or cuda_backend.source(f"{op}.cu")
            self.modules[op] = Module(text, self.signature)
        return self.modules[op]

    # -- Launcher ------------------------------------------------------------
    def stream(self, device: torch.device) -> object:
        return None

    def upload(self, host: torch.Tensor, device: torch.device, stream: object) -> torch.Tensor:
        assert device.type == "cpu", "the emulator runs on CPU tensors"
        return host  # device pointer tables are host int64 arrays here

    def launch(self, op, name, grid, block, shared_mem, args, device, stream, buffers) -> None:
        assert device.type == "cpu", "the emulator runs on CPU tensors"
        mod = self.module(op)
        if len(args) != len(mod.param_sizes):
            raise EmulationError(f"{name}: {len(args)} arguments for "
                                 f"{len(mod.param_sizes)} parameters")
        cells = []
        for i, (a, want) in enumerate(zip(args, mod.param_sizes)):
            arr = np.array(a)  # keeps the numpy scalar's type, as CuPy passes it
            if arr.ndim or arr.dtype.kind not in "iuf" or arr.itemsize != want:
                raise EmulationError(f"{name}: argument {i} is {arr.dtype} "
                                     f"({arr.itemsize} bytes); the parameter takes {want}")
            cells.append(arr)
        params = (ctypes.c_void_p * len(cells))(*[c.ctypes.data for c in cells])
        lib = mod.rt
        lib.emu_clear_regions()
        for i, t in enumerate(buffers):
            lo, hi = _extent(t)
            label = f"buffers[{i}] {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            lib.emu_add_region(lo, hi, label.encode())
        seed = (self.seed * 1000003 + len(self.launches)) & 0xFFFFFFFFFFFF
        self.launches.append(dict(op=op, name=name, grid=tuple(grid), block=tuple(block),
                                  args=tuple(args), seed=seed))
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        if shared_mem:
            raise EmulationError(f"{name}: dynamic shared memory is not emulated")
        rc = lib.emu_launch(name.encode(), mod.call, *mod.shared, mod.function(name), params,
                            *g, *b, seed)
        if rc:
            raise EmulationError(f"{lib.emu_error().decode()} [seed {seed}, "
                                 f"KV_EMU_SEED={self.seed}]")
