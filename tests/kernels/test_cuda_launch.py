"""The host side of a CUDA launch, checked on the CPU.

A launcher (``cuda_backend.set_launcher``, the backend's one seam) replaces
CuPy: tables stay host tensors, and the kernel is a Python emulator of the
"none" kernels that follows the slab addressing of kv_common.cuh through the
raw pointers and byte strides ``cuda_backend.run`` passes. So the pointer
tables, strides, block-id tables, section offsets, padding, vector/scalar
choice and grid are checked without a GPU (the real .cu sources run under
tests/kernels/emulation, test_emulated_kernels.py).
"""

from __future__ import annotations

import ctypes
import sys
from types import SimpleNamespace

import pytest
import torch

from kvstore.errors import LayoutMismatch
from kvstore.kernels import (
    CODECS,
    EngineKind,
    EngineLayout,
    pack_paged,
    payload_spec,
    unpack_paged,
)
from kvstore.kernels import cuda_backend as cb
from kvstore.kernels.paged import _paged
from kvstore.layout import KVLayout


def _int64s(ptr: int, n: int) -> list[int]:
    return list((ctypes.c_int64 * n).from_address(ptr))


class Emulator:
    """A launcher running a kernel's slab walk in Python for codec none; records every
    launch and every table upload, with the stream of each."""

    calls: list[dict] = []
    uploads: list[tuple] = []
    current = "A"  # the stream kernels run on now

    def stream(self, device):
        return self.current

    def upload(self, host, device, stream):
        Emulator.uploads.append((tuple(host.tolist()), stream))
        return host.clone()

    def launch(self, op, name, grid, block, shared_mem, args, device, stream, buffers):
        self.op, self.name = op, name
        (k_tab, v_tab, ids, p_tab, L, T, H, D, ebs, nb, bstride, tstride, hstride,
         *rest) = [int(a) for a in args]
        offsets, gaps, lanes = rest[:5], rest[5:10], rest[10]
        S = grid[2]
        Emulator.calls.append(dict(name=self.name, grid=grid, block=block, offsets=offsets,
                                   gaps=gaps, lanes=lanes, strides=(bstride, tstride, hstride),
                                   stream=stream, tables=(k_tab, v_tab, p_tab)))
        if "_none_" not in self.name:
            return
        esz = 4 if "_f32_" in self.name else 2
        k_ptrs, v_ptrs = _int64s(k_tab, L), _int64s(v_tab, L)
        block_ids, payloads = _int64s(ids, S * (T // ebs)), _int64s(p_tab, S)
        for sb in range(S):
            for lkv in range(2 * L):
                base = (v_ptrs if lkv & 1 else k_ptrs)[lkv >> 1]
                for h in range(H):
                    for t in range(T):
                        eid = block_ids[sb * (T // ebs) + t // ebs]
                        if not 0 <= eid < nb:  # KvSlab::row: -1 (SKIP_BLOCK) is not written
                            assert eid == -1 and self.op == "unpack"
                            continue
                        row = base + eid * bstride + (t % ebs) * tstride + h * hstride
                        canon = payloads[sb] + offsets[0] + (((lkv * T + t) * H + h) * D) * esz
                        src, dst = (row, canon) if self.op == "pack" else (canon, row)
                        ctypes.memmove(dst, src, D * esz)


@pytest.fixture
def fake_cuda():
    Emulator.calls, Emulator.uploads, Emulator.current = [], [], "A"
    cb._TABLES.clear()
    previous = cb.set_launcher(Emulator())
    yield Emulator
    cb.set_launcher(previous)
    cb._TABLES.clear()


def _setup(kind, dtype, D=64, ebs=16, T=32, nb=10, L=2, H=3):
    layout = KVLayout("m", L, H, D, str(dtype).removeprefix("torch."), T)
    engine = EngineLayout(kind, ebs)
    g = torch.Generator().manual_seed(D)
    caches = [torch.randn(engine.cache_shape(nb, layout), generator=g).to(dtype)
              for _ in range(L)]
    return layout, engine, caches


@pytest.mark.parametrize("dtype,D", [(torch.float16, 64), (torch.float32, 80),
                                     (torch.bfloat16, 36)])
def test_emulated_none_kernels_move_the_reference_bytes(fake_cuda, dtype, D):
    layout, engine, caches = _setup(EngineKind.VLLM_FLASH, dtype, D=D)
    ids = [7, 2, 9, 0]
    src = _paged(caches, ids, layout, engine, writing=False)
    out = torch.zeros((2, payload_spec(layout, "none").nbytes), dtype=torch.uint8)
    cb.run("pack", src, "none", list(out.unbind(0)))
    ref = pack_paged(caches, ids, layout, "none", engine, backend="reference")
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    call = fake_cuda.calls[-1]
    vec = (D * dtype.itemsize) % 16 == 0
    assert call["name"] == f"kv_pack_none_{cb._DT[dtype]}_{'v' if vec else 's'}"
    assert call["grid"] == (layout.num_kv_heads, 2 * layout.num_layers, 2)
    assert call["block"] == (cb.THREADS, 1, 1)

    dst = [torch.zeros_like(c) for c in caches]
    ref_dst = [torch.zeros_like(c) for c in caches]
    targets = [1, -1, 3, 8]  # -1: an engine block the unpack leaves alone
    cb.run("unpack", _paged(dst, targets, layout, engine, writing=True), "none",
           list(out.unbind(0)))
    unpack_paged(ref, ref_dst, targets, layout, "none", engine, backend="reference")
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
               for a, b in zip(dst, ref_dst))


@pytest.mark.parametrize("kind", [EngineKind.VLLM_CPU, EngineKind.VLLM_CPU_AMX])
def test_cpu_layouts_are_refused_before_a_launch(fake_cuda, kind):
    """vLLM's CPU layouts (transposed K, AMX tiles) are not rows of D contiguous
    values: the launch checks refuse them and the dispatcher runs the reference."""
    layout, engine, caches = _setup(kind, torch.bfloat16, D=64, ebs=32, T=64)
    src = _paged(caches, [1, 2, 3, 4], layout, engine, writing=False)
    assert "CPU" in cb.unsupported(src, "none")
    rows = list(torch.empty((2, payload_spec(layout, "none").nbytes),
                            dtype=torch.uint8).unbind(0))
    with pytest.raises(LayoutMismatch):
        cb.run("pack", src, "none", rows)
    assert fake_cuda.calls == []


@pytest.mark.parametrize("codec", CODECS)
def test_launch_arguments(fake_cuda, codec):
    layout, engine, caches = _setup(EngineKind.VLLM_FLASH, torch.float16, D=80, T=100, ebs=10,
                                    nb=30)
    src = _paged(caches, list(range(20)), layout, engine, writing=False)
    spec = payload_spec(layout, codec)
    rows = list(torch.empty((2, spec.nbytes), dtype=torch.uint8).unbind(0))
    cb.run("pack", src, codec, rows)
    call = fake_cuda.calls[-1]
    assert call["offsets"][: len(spec.sections)] == list(spec.offsets())
    assert call["gaps"][: len(spec.sections)] == [(a << 8) | n for a, n in spec.gaps()]
    assert call["strides"] == tuple(s * 2 for s in caches[0][0].stride()[:3])
    assert call["lanes"] == 16  # 80 halves = 10 vectors of 8 -> 16 lanes a row
    assert call["name"].endswith("_v")
    misaligned = torch.empty(spec.nbytes + 4, dtype=torch.uint8)[4:]
    cb.run("pack", _paged(caches, list(range(10)), layout, engine, writing=False), codec,
           [misaligned])
    assert fake_cuda.calls[-1]["name"].endswith("_s")
    assert fake_cuda.calls[-1]["lanes"] == 32  # 80 (or 40 int4 pairs) scalar units a row
    with pytest.raises(Exception, match="aligned"):
        cb.run("pack", src, codec, [torch.empty(spec.nbytes + 1, dtype=torch.uint8)[1:]] * 2)


def test_pointer_tables_are_uploaded_on_the_stream_that_reads_them(fake_cuda):
    """A table copied asynchronously on stream A must not be read by a kernel on
    stream B with nothing ordering it after the copy: each stream gets its own
    upload, enqueued on it before its first launch, and reuses it afterwards."""
    layout, engine, caches = _setup(EngineKind.VLLM_FLASH, torch.float16)
    src = _paged(caches, [7, 2, 9, 0], layout, engine, writing=False)
    rows = list(torch.zeros((2, payload_spec(layout, "none").nbytes),
                            dtype=torch.uint8).unbind(0))
    k_ptrs = tuple(t.data_ptr() for t in src.k)
    for stream in ("A", "B", "A", "B"):
        fake_cuda.current = stream
        cb.run("pack", src, "none", rows)
    assert [s for v, s in fake_cuda.uploads if v == k_ptrs] == ["A", "B"]
    assert len(fake_cuda.uploads) == 6  # K, V and payload tables, once per stream
    tables = {}
    for call in fake_cuda.calls:  # every launch reads the tables of its own stream
        tables.setdefault(call["stream"], call["tables"])
        assert call["tables"] == tables[call["stream"]]
    assert set(tables["A"]).isdisjoint(tables["B"])


class _FakeCupy:
    """A CuPy whose probe kernel compiles and runs, or raises like one without
    NVRTC (``fail="compile"``), without a driver (``fail="driver"``), or runs
    and writes garbage (``fail="result"``)."""

    int32 = "int32"

    def __init__(self, fail=None):
        self.fail = fail
        self.cuda = SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=self._count))

    def _count(self):
        if self.fail == "driver":
            raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                               "insufficient for CUDA runtime version")
        return 1

    def zeros(self, n, dtype):
        return _FakeArray(n)

    def RawKernel(self, code, name):  # noqa: N802 (CuPy's name)
        assert name in code
        if self.fail == "compile":
            raise OSError("CuPy failed to load libnvrtc.so.13: cannot open shared object file")

        def run(grid, block, args):
            out = args[0]
            out.data = [42 + i + (self.fail == "result") for i in range(block[0])]
        return run


class _FakeArray:
    def __init__(self, n):
        self.data = [0] * n

    def get(self):
        return self.data


@pytest.mark.parametrize("fail", [None, "compile", "driver", "result"])
def test_available_compiles_and_runs_a_probe_kernel(monkeypatch, caplog, fail):
    """available() is True only when a trivial kernel compiles and runs: a CuPy that
    imports but has no NVRTC or driver makes the dispatcher fall back to the
    reference instead of raising on every call."""
    from kvstore.kernels import dispatch

    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy(fail))
    cb.available.cache_clear()
    try:
        assert cb.available() is (fail is None)
        src = SimpleNamespace(device=torch.device("cuda", 0))
        if fail is None:
            monkeypatch.setattr(cb, "unsupported", lambda src, codec: None)
            assert dispatch.choose(src, "none", None) == dispatch.CUDA
        else:
            assert dispatch.choose(src, "none", None) == dispatch.REFERENCE
            assert "unavailable" in caplog.text
            with pytest.raises(Exception, match="cannot run"):
                dispatch.choose(src, "none", "cuda")
    finally:
        cb.available.cache_clear()


def test_cupy_launcher_launches_on_the_callers_stream(monkeypatch):
    """The production launcher: the NVRTC function of the op, inside the device and
    the caller's stream, with grid, block, args and shared-memory bytes as given."""
    import contextlib

    events = []

    @contextlib.contextmanager
    def ctx(what):
        events.append(("enter", what))
        yield
        events.append(("exit", what))

    fake_cupy = SimpleNamespace(cuda=SimpleNamespace(Device=lambda i: ctx(("device", i))))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(cb, "_stream", lambda ptr, index: ctx(("stream", ptr, index)))
    monkeypatch.setattr(cb, "_function", lambda op, index, name: lambda *a, **k: events.append(
        ("call", op, index, name, a, k)))
    stream = SimpleNamespace(cuda_stream=0xABC)
    cb.CupyLauncher().launch("pack", "kv_pack_int8_f16_v", (2, 4, 3), (256, 1, 1), 0,
                             ("args",), torch.device("cuda", 1), stream, ())
    assert events == [
        ("enter", ("device", 1)), ("enter", ("stream", 0xABC, 1)),
        ("call", "pack", 1, "kv_pack_int8_f16_v", ((2, 4, 3), (256, 1, 1), ("args",)),
         {"shared_mem": 0}),
        ("exit", ("stream", 0xABC, 1)), ("exit", ("device", 1))]
