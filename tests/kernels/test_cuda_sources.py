"""The CUDA sources without a GPU: nvcc compiles every .cu for sm_80 and sm_90,
the number conversions they share run on the host against torch, and the
source handed to NVRTC is self-contained."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from kvstore.kernels import cuda_backend

KERNELS = Path(cuda_backend.__file__).resolve().parent
SOURCES = sorted(KERNELS.glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_there_are_cuda_sources():
    assert {p.name for p in SOURCES} >= {"pack.cu", "unpack.cu"}


def _nvcc(args: list[str]) -> None:
    result = subprocess.run([NVCC, "-std=c++17", "--Werror", "all-warnings", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.integration
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("cu", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles_to_ptx(cu, arch, tmp_path):
    """sm_80 compiles the file as it lies; sm_90 compiles the text CuPy hands to
    NVRTC (the same file with its headers inlined), so both forms are covered."""
    if arch == "sm_90":
        inlined = tmp_path / cu.name
        inlined.write_text(cuda_backend.source(cu.name))
        cu = inlined
    _nvcc(["--ptx", f"-arch={arch}", "-o", str(tmp_path / "out.ptx"), str(cu)])


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("cu", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles_to_cubins_without_spills(cu, tmp_path):
    """Full compile, ptxas included, for both architectures (slow: ~20 s a file)."""
    _nvcc(["-c", "-o", str(tmp_path / "out.o"), str(cu), "-Xptxas", "-warn-spills",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"])


def test_nvrtc_source_is_self_contained():
    for name in ("pack.cu", "unpack.cu"):
        text = cuda_backend.source(name)
        assert "#include" not in text and "#pragma once" not in text
        assert text.count("struct KvSlab {") == 1  # each header inlined once


HARNESS = r"""
#include "kv_convert.cuh"
#include <cstdio>
#include <vector>
int main(int argc, char** argv) {
  FILE* in = std::fopen(argv[1], "rb");
  std::vector<float> xs;
  float f;
  while (std::fread(&f, 4, 1, in) == 1) xs.push_back(f);
  std::fclose(in);
  FILE* out = std::fopen(argv[2], "wb");
  for (float x : xs) { kv_u8 b = kv_f32_to_e4m3(x); std::fwrite(&b, 1, 1, out); }
  for (float x : xs) { kv_u16 h = kv_f32_to_bf16(x); std::fwrite(&h, 2, 1, out); }
  for (float x : xs) { kv_u16 h = kv_f32_to_f16(x); std::fwrite(&h, 2, 1, out); }
  for (int c = 0; c < 256; ++c) { float y = kv_e4m3_to_f32((kv_u8)c); std::fwrite(&y, 4, 1, out); }
  for (int c = 0; c < 65536; ++c) { float y = kv_bf16_to_f32((kv_u16)c); std::fwrite(&y, 4, 1, out); }
  for (int c = 0; c < 65536; ++c) { float y = kv_f16_to_f32((kv_u16)c); std::fwrite(&y, 4, 1, out); }
  std::fclose(out);
  return 0;
}
"""


def _probe_values() -> np.ndarray:
    """Every fp8/fp16/bf16 value, the midpoints between neighbours (ties), one
    float32 ulp either side of them, specials and random float32s."""
    grids = []
    for dt in (torch.float8_e4m3fn, torch.float16, torch.bfloat16):
        bits = torch.arange(256 if dt.itemsize == 1 else 65536, dtype=torch.int32)
        codes = bits.to(torch.uint8) if dt.itemsize == 1 else bits.to(torch.int16)
        vals = codes.view(dt).double().numpy()
        vals = np.unique(vals[np.isfinite(vals)])
        grids += [vals, (vals[1:] + vals[:-1]) / 2]
    base = np.concatenate(grids).astype(np.float32)
    up = np.nextafter(base, np.float32(np.inf))
    down = np.nextafter(base, np.float32(-np.inf))
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 448.0, 464.0, 65504.0, 65520.0,
                         3.4e38, -3.4e38, 1e-45, -1e-45, 2 ** -10, 3 * 2 ** -11], np.float32)
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    rand = rand[np.isfinite(rand)]
    values = np.concatenate([base, up, down, -base, specials, rand]).astype(np.float32)
    return values[~np.isnan(values)]


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler")
def test_device_number_conversions_match_torch(tmp_path):
    src = tmp_path / "harness.cpp"
    src.write_text(HARNESS)
    exe = tmp_path / "harness"
    build = subprocess.run(["g++", "-O1", "-std=c++17", "-I", str(KERNELS), str(src), "-o",
                            str(exe)], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-3000:]
    x = _probe_values()
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True,
                   timeout=60)
    out = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.uint8)
    n = x.size
    e4m3 = out[:n]
    bf16 = out[n: 3 * n].view(np.uint16)
    f16 = out[3 * n: 5 * n].view(np.uint16)
    dec = out[5 * n:].view(np.float32)
    t = torch.from_numpy(x)

    def bits16(dt):
        return t.to(dt).view(torch.int16).numpy().view(np.uint16)

    np.testing.assert_array_equal(e4m3, t.to(torch.float8_e4m3fn).view(torch.uint8).numpy())
    np.testing.assert_array_equal(bf16, bits16(torch.bfloat16))
    np.testing.assert_array_equal(f16, bits16(torch.float16))
    expect = np.concatenate([
        torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float(),
        torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float(),
        torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16).float(),
    ])
    same = (dec.view(np.uint32) == expect.view(np.uint32)) | (np.isnan(dec) & np.isnan(expect))
    assert same.all(), np.flatnonzero(~same)[:10]
