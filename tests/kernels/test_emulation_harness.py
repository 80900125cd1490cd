"""The CUDA emulation harness itself: it catches planted kernel bugs, and its
barriers, warp exchanges and memcheck behave as a GPU (and compute-sanitizer)
would.

Planted bugs: each mutation below is applied to the text NVRTC would get
(``cuda_backend.source``), compiled by the harness, and run through the same
checks as test_emulated_kernels.py until one fails; the test asserts one does.
docs/kernels.md ("CUDA on the CPU") lists what each produced.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from kvstore.kernels import cuda_backend as cb
from tests.kernels.emulation.cases import Geo, check
from tests.kernels.emulation.emulator import CXX, EmulationError, EmulatorLauncher

# integration: every module compiles the CUDA sources with g++ (tests/markers.py)
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which(CXX) is None, reason=f"{CXX} not on PATH")]

# (name, op, original text, planted text)
MUTATIONS = [
    ("reduction over half the lanes", "pack",
     "for (int o = width >> 1; o > 0; o >>= 1) v = fmaxf(",
     "for (int o = width >> 2; o > 0; o >>= 1) v = fmaxf("),
    ("removed __syncthreads in the block max", "pack",
     "  if (lane == 0) part[warp] = v;\n  __syncthreads();\n",
     "  if (lane == 0) part[warp] = v;\n"),
    ("removed __syncthreads before the int4 K quantization", "pack",
     "    __syncthreads();\n    if (active) {\n      for (int t = t0 + rl; t < t1; t += NR) {\n"
     "        const char* src = s.row(t);\n        if (!src) continue;\n        float x[VEC];\n"
     "        kv_load<DT, VEC, VL>(src + u * VEC * esz, x);\n        kv_u8 b[VEC / 2];",
     "    if (active) {\n      for (int t = t0 + rl; t < t1; t += NR) {\n"
     "        const char* src = s.row(t);\n        if (!src) continue;\n        float x[VEC];\n"
     "        kv_load<DT, VEC, VL>(src + u * VEC * esz, x);\n        kv_u8 b[VEC / 2];"),
    ("off-by-one in the padding index", "pack",
     "if (byte < (int)(g & 0xff)) payload[(g >> 8) + byte] = 0;",
     "if (byte <= (int)(g & 0xff)) payload[(g >> 8) + byte] = 0;"),
    ("off-by-one in the int4 K group of a token", "unpack",
     "const long long ch = (long long)(t / 64) * D + unit[b] * VEC;",
     "const long long ch = (long long)((t + 1) / 64) * D + unit[b] * VEC;"),
    ("a thread leaves before the block max's barrier", "pack",
     "  if (lane == 0) part[warp] = v;\n  __syncthreads();\n",
     "  if (lane == 0) part[warp] = v;\n  if (threadIdx.x == 37) return v;\n"
     "  __syncthreads();\n"),
]

# The checks each mutant meets, in order (quick-subset geometries and codecs).
SUITE = [
    (Geo("flash-nhd-d64-ebs16-T64"), "fp8_e4m3", torch.float16),
    (Geo("flash-nhd-d64-ebs16-T64"), "int8", torch.bfloat16),
    (Geo("flash-nhd-d64-ebs16-T64"), "int4", torch.float32),
    (Geo("gqa-h5-d80-T100-ebs10", H=5, D=80, ebs=10, T=100, S=2, nb=24), "int4",
     torch.float16),
    (Geo("slots-off-by-4-d66", slot_offset=4, D=66, T=48, ebs=16, nb=8), "int8",
     torch.float16),
]


def run_suite(launcher) -> str | None:
    """The first failure of ``launcher`` over SUITE as 'case: message', or None."""
    for g, codec, dtype in SUITE:
        case = f"{g}-{codec}-{str(dtype).removeprefix('torch.')}"
        try:
            check(launcher, g, codec, dtype)
        except (AssertionError, EmulationError) as e:
            return f"{case}: {type(e).__name__}: {e}"
    return None


def test_the_real_sources_pass_the_suite():
    assert run_suite(EmulatorLauncher()) is None


@pytest.mark.parametrize("name,op,old,new", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_planted_bug_fails_the_suite(name, op, old, new):
    text = cb.source(f"{op}.cu")
    assert text.count(old) == 1, f"the mutation site of {name!r} moved"
    mutant = EmulatorLauncher(sources={op: text.replace(old, new)})
    failure = run_suite(mutant)
    print(f"\n[planted bug] {name}: {failure}")
    assert failure is not None, f"planted bug {name!r} passed the suite"


# ---- the primitives, on kernels of the test's own ----------------------------
PROBE = r"""
extern "C" __global__ void shuffles(int* out, int n) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int* o = out + threadIdx.x * 8;
  o[0] = __shfl_xor_sync(0xffffffffu, 100 + lane, 5);
  o[1] = __shfl_down_sync(0xffffffffu, 100 + lane, 3, 8);
  o[2] = __shfl_up_sync(0xffffffffu, 100 + lane, 2, 16);
  o[3] = __shfl_sync(0xffffffffu, 100 + lane, 7, 4);
  o[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
  o[5] = __float_as_int(__shfl_xor_sync(0xffffffffu, 0.5f * lane, 16));
  __shared__ int sum[64];
  sum[threadIdx.x] = lane * (w + 1);
  __syncthreads();
  o[6] = sum[(threadIdx.x + 1) % blockDim.x];
  o[7] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, lane, 1) : -1;
}
extern "C" __global__ void early_exit(int* out, int n) {
  if (threadIdx.x == 3) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}
extern "C" __global__ void lane_missing(int* out, int n) {
  if ((threadIdx.x & 31) == 9) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}
extern "C" __global__ void read_outside_mask(int* out, int n) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1, 16);
}
extern "C" __global__ void oob(int* out, int n) {
  out[threadIdx.x + blockIdx.x * blockDim.x + n] = 7;
}
"""


def _launch(kernel: str, threads: int, n_out: int, extra: int = 0, blocks: int = 1):
    emu = EmulatorLauncher(sources={"probe": PROBE}, signature="int* out, int n", seed=5)
    out = torch.zeros(n_out, dtype=torch.int32)
    emu.launch("probe", kernel, (blocks, 1, 1), (threads, 1, 1), 0,
               (np.uint64(out.data_ptr()), np.int32(extra)), torch.device("cpu"), None, [out])
    return out


def test_warp_exchanges_follow_ptx_shfl_sync():
    out = _launch("shuffles", 64, 64 * 8).view(64, 8)
    for tid in range(64):
        lane = tid % 32
        assert out[tid, 0] == 100 + (lane ^ 5)
        seg = lane // 8 * 8  # width 8: a lane past its segment reads itself
        assert out[tid, 1] == 100 + (lane + 3 if lane + 3 < seg + 8 else lane)
        seg = lane // 16 * 16
        assert out[tid, 2] == 100 + (lane - 2 if lane - 2 >= seg else lane)
        assert out[tid, 3] == 100 + (lane // 4 * 4 + (7 & 3))
        assert out[tid, 4] == sum(1 << j for j in range(32) if j % 3 == 0)
        assert np.float32(0.5 * (lane ^ 16)).view(np.int32) == out[tid, 5]
        nxt = (tid + 1) % 64
        assert out[tid, 6] == (nxt % 32) * (nxt // 32 + 1)  # after the barrier
        assert out[tid, 7] == (lane ^ 1 if lane < 16 else -1)


@pytest.mark.parametrize("kernel,match", [
    ("early_exit", r"__syncthreads \(line \d+\) never completes: thread \(3,0,0\) has exited"),
    ("lane_missing", r"names lane 9, which has exited"),
    ("read_outside_mask", r"lane 0 reads lane 16, which is not in the mask"),
])
def test_barriers_and_exchanges_abort_when_a_thread_is_missing(kernel, match):
    with pytest.raises(EmulationError, match=match):
        _launch(kernel, 64, 64)


def test_memcheck_names_the_kernel_thread_and_address():
    _launch("oob", 32, 64, extra=32)  # in bounds: [32, 64)
    _launch("oob", 32, 64, extra=0, blocks=2)  # [0, 64)
    with pytest.raises(EmulationError, match=r"memcheck: invalid store of 4 bytes at 0x[0-9a-f]+ "
                       r"\(\d+ bytes past the end of buffers\[0\] \(64,\) int32 .*kernel oob, "
                       r"block \(2,0,0\), thread \(\d+,0,0\)"):
        _launch("oob", 32, 64, extra=0, blocks=3)  # block 2 writes [64, 96)


CONVERT = r"""
extern "C" __global__ void convert(const float* x, unsigned short* h, unsigned short* b,
                                   unsigned char* sat, unsigned char* nosat, float* h2f,
                                   float* b2f, unsigned short* f8h, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    h[i] = __float2half_rn(x[i]).__x;
    b[i] = __float2bfloat16_rn(x[i]).__x;
    sat[i] = __nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E4M3);
    nosat[i] = __nv_cvt_float_to_fp8(x[i], __NV_NOSAT, __NV_E4M3);
    if (i < 65536) h2f[i] = __half2float(__half{(unsigned short)i});
    if (i < 65536) b2f[i] = __bfloat162float(__nv_bfloat16{(unsigned short)i});
    if (i < 256) f8h[i] = __nv_cvt_fp8_to_halfraw((unsigned char)i, __NV_E4M3).x;
  }
}
"""


def test_cuda_half_bf16_fp8_conversions_match_torch():
    """cuda_emu.h's __half / __nv_bfloat16 / e4m3 conversions round to nearest even
    like torch (and CUDA) on every f16, bf16 and e4m3 value, their rounding ties
    and neighbours, and random floats; NaN results are CUDA's canonical ones."""
    g = torch.Generator().manual_seed(1)
    every16 = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
    halves = every16.view(torch.float16).float()
    bf16s = every16.view(torch.bfloat16).float()
    e4m3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    base = torch.cat([halves, bf16s, e4m3, torch.randn(20000, generator=g) * 300,
                      torch.tensor([448.0, 464.0, 480.0, 1e30, float("inf"), -float("inf"),
                                    65504.0, 65520.0, 2.0 ** -24, 2.0 ** -25, 2.0 ** -10])])
    base = base[base.isfinite() | base.isinf()]
    bits = base.view(torch.int32)
    x = torch.cat([base, (bits + 1).view(torch.float32), (bits - 1).view(torch.float32),
                   (halves[:-1] + halves[1:]) / 2, (bf16s[:-1] + bf16s[1:]) / 2])
    x = torch.cat([x, torch.tensor([float("nan")])]).contiguous()
    n = x.numel()
    outs = [torch.empty(n, dtype=d) for d in (torch.int16, torch.int16, torch.uint8,
                                                torch.uint8)]
    h2f, b2f = torch.empty(1 << 16), torch.empty(1 << 16)
    f8h = torch.empty(256, dtype=torch.int16)
    emu = EmulatorLauncher(sources={"cvt": CONVERT}, seed=1, signature=(
        "const float* x, unsigned short* h, unsigned short* b, unsigned char* sat, "
        "unsigned char* nosat, float* h2f, float* b2f, unsigned short* f8h, int n"))
    args = [x, *outs, h2f, b2f, f8h]
    emu.launch("cvt", "convert", (1, 1, 1), (256, 1, 1), 0,
               (*(np.uint64(t.data_ptr()) for t in args), np.int32(n)), torch.device("cpu"),
               None, args)
    nan = x.isnan()
    finite = ~nan
    assert torch.equal(outs[0][finite], x[finite].half().view(torch.int16))
    assert torch.equal(outs[1][finite], x[finite].bfloat16().view(torch.int16))
    assert (outs[0][nan] == 0x7FFF).all() and (outs[1][nan] == 0x7FFF).all()
    sat = x.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(outs[2][finite], sat[finite])
    # NOSAT (cuda_fp8.hpp): beyond 448 + half an ulp (464) is NaN; torch saturates
    sign = (x.view(torch.int32) < 0).to(torch.uint8) << 7
    nosat = torch.where(x.abs() > 464, sign | 0x7F, sat)
    assert torch.equal(outs[3][finite], nosat[finite])
    assert int(((x.abs() > 464) & finite).sum()) > 100 and (outs[2][x == 464] == 0x7E).all()
    assert torch.equal(h2f.view(torch.int32)[~halves.isnan()],
                       halves[~halves.isnan()].view(torch.int32))
    assert torch.equal(b2f.view(torch.int32)[~bf16s.isnan()],
                       bf16s[~bf16s.isnan()].view(torch.int32))
    ok = ~e4m3.isnan()
    assert torch.equal(f8h[ok], e4m3[ok].half().view(torch.int16))
    assert (f8h[~ok] == 0x7FFF).all()
