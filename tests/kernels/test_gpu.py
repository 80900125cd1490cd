"""The CUDA kernels held to the torch reference, byte for byte (needs a GPU and CuPy)."""

from __future__ import annotations

import pytest
import torch

from kvstore.kernels import (
    CODECS,
    EngineKind,
    EngineLayout,
    decode,
    encode,
    pack_hf,
    pack_paged,
    payload_nbytes,
    unpack_paged,
)
from kvstore.kernels import dispatch as kdispatch
from kvstore.kernels.source import block_source
from kvstore.layout import KVLayout

pytestmark = pytest.mark.gpu
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.fixture(scope="module", autouse=True)
def _needs_cupy():
    pytest.importorskip("cupy")


def _caches(kind: EngineKind, L, nb, ebs, H, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    engine = EngineLayout(kind, ebs)
    layout = KVLayout("m", L, H, D, str(dtype).removeprefix("torch."), 64)
    shape = engine.cache_shape(nb, layout)
    scales = 10.0 ** (torch.rand((L, 1) + (1,) * (len(shape) - 1), generator=g) * 4 - 2)
    return [(torch.randn(shape, generator=g) * scales[i]).to(dtype).cuda() for i in range(L)]


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [EngineKind.VLLM_FLASH])  # the CPU layouts are CPU-only
@pytest.mark.parametrize("ebs,T,D", [(16, 64, 128), (16, 256, 80), (32, 96, 112), (8, 40, 66)])
def test_cuda_pack_and_unpack_equal_the_reference(codec, dtype, kind, ebs, T, D):
    L, H, nb = 3, 4, 64
    R = T // ebs
    caches = _caches(kind, L, nb, ebs, H, D, dtype, seed=T + D)
    layout = KVLayout("m", L, H, D, str(dtype).removeprefix("torch."), T)
    engine = EngineLayout(kind, ebs)
    ids = torch.randperm(nb)[: 3 * R].tolist()
    ref = pack_paged(caches, ids, layout, codec, engine, backend="reference")
    got = pack_paged(caches, ids, layout, codec, engine, backend="cuda")
    for r, g in zip(ref, got):
        assert torch.equal(r, g)
    targets = torch.randperm(nb)[: 3 * R]
    targets[1] = -1  # SKIP_BLOCK: an engine block the unpack leaves alone
    targets = targets.cuda()
    dst_ref = [c.clone() for c in caches]
    dst_cuda = [c.clone() for c in caches]
    unpack_paged(ref, dst_ref, targets, layout, codec, engine, backend="reference")
    unpack_paged(ref, dst_cuda, targets, layout, codec, engine, backend="cuda")
    for a, b in zip(dst_ref, dst_cuda):
        assert _same_bytes(a, b)


@pytest.mark.parametrize("codec", CODECS)
def test_scalar_kernels_on_unaligned_slots(codec):
    """Payload slots 4 bytes off a 16-byte boundary force the scalar kernels."""
    L, H, D, T, ebs, nb = 2, 2, 128, 128, 16, 32
    caches = _caches(EngineKind.VLLM_FLASH, L, nb, ebs, H, D, torch.float32, seed=1)
    layout = KVLayout("m", L, H, D, "float32", T)
    engine = EngineLayout.vllm_flash(ebs)
    n = payload_nbytes(layout, codec)
    arena = torch.zeros(2 * n + 64, dtype=torch.uint8, device="cuda")
    slots = [arena[4:4 + n], arena[n + 36: 2 * n + 36]]
    ids = list(range(2 * (T // ebs)))
    pack_paged(caches, ids, layout, codec, engine, out=slots, backend="cuda")
    ref = pack_paged(caches, ids, layout, codec, engine, backend="reference")
    assert torch.equal(slots[0], ref[0]) and torch.equal(slots[1], ref[1])
    dst = [torch.zeros_like(c) for c in caches]
    dst_ref = [torch.zeros_like(c) for c in caches]
    unpack_paged(slots, dst, ids, layout, codec, engine, backend="cuda")
    unpack_paged(ref, dst_ref, ids, layout, codec, engine, backend="reference")
    assert all(_same_bytes(a, b) for a, b in zip(dst, dst_ref))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_encode_decode_equal_the_reference(codec, dtype):
    g = torch.Generator().manual_seed(3)
    block = (torch.randn((4, 2, 100, 8, 64), generator=g) * 3).to(dtype).cuda()
    block[0, 0, :, 1] = 0  # scale-0 groups
    layout = KVLayout("m", 4, 8, 64, str(dtype).removeprefix("torch."), 100)
    p_ref = encode(block, codec, backend="reference")
    p_cuda = encode(block, codec, backend="cuda")
    assert torch.equal(p_ref, p_cuda)
    assert _same_bytes(decode(p_ref, layout, codec, backend="reference"),
                       decode(p_ref, layout, codec, backend="cuda"))


def test_auto_dispatch_picks_cuda_and_matches_cpu():
    caches = _caches(EngineKind.VLLM_FLASH, 2, 16, 16, 2, 64, torch.float16, seed=2)
    layout = KVLayout("m", 2, 2, 64, "float16", 64)
    engine = EngineLayout.vllm_flash(16)
    block = torch.zeros(layout.block_shape, dtype=torch.float16, device="cuda")
    assert kdispatch.choose(block_source(block, layout), "fp8_e4m3", None) == kdispatch.CUDA
    on_gpu = pack_paged(caches, [0, 1, 2, 3], layout, "fp8_e4m3", engine)[0]
    on_cpu = pack_paged([c.cpu() for c in caches], [0, 1, 2, 3], layout, "fp8_e4m3", engine)[0]
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), on_cpu)


def test_cpu_layouts_on_a_gpu_run_the_reference():
    """vLLM's CPU layouts are not rows of contiguous D: auto dispatch falls back."""
    layout = KVLayout("m", 2, 2, 64, "bfloat16", 64)
    engine = EngineLayout.vllm_cpu(32, isa="amx")
    caches = _caches(engine.kind, 2, 8, 32, 2, 64, torch.bfloat16, seed=6)
    got = pack_paged(caches, [0, 1, 2, 3], layout, "int8", engine)
    ref = pack_paged([c.cpu() for c in caches], [0, 1, 2, 3], layout, "int8", engine)
    assert all(torch.equal(g.cpu(), r) for g, r in zip(got, ref))
    with pytest.raises(Exception, match="CUDA backend"):
        pack_paged(caches, [0, 1, 2, 3], layout, "int8", engine, backend="cuda")


def test_kernels_run_on_the_callers_stream():
    caches = _caches(EngineKind.VLLM_FLASH, 2, 64, 16, 8, 128, torch.bfloat16, seed=4)
    layout = KVLayout("m", 2, 8, 128, "bfloat16", 256)
    engine = EngineLayout.vllm_flash(16)
    ids = list(range(32))
    expected = pack_paged(caches, ids, layout, "int8", engine, backend="reference")
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keep the side stream busy
        for c in caches:
            c.mul_(2)  # ordered on the side stream, before the pack
        got = pack_paged(caches, ids, layout, "int8", engine, backend="cuda")
    side.synchronize()
    again = pack_paged(caches, ids, layout, "int8", engine, backend="reference")
    assert not torch.equal(expected[0], again[0])  # the pack saw the doubled cache
    assert all(torch.equal(a, b) for a, b in zip(got, again))


def test_hf_and_pinned_output_on_gpu():
    L, B, H, D, T = 2, 2, 4, 128, 64
    g = torch.Generator().manual_seed(5)
    pkv = [(torch.randn((B, H, 300, D), generator=g).half().cuda(),
            torch.randn((B, H, 300, D), generator=g).half().cuda()) for _ in range(L)]
    layout = KVLayout("m", L, H, D, "float16", T)
    n = payload_nbytes(layout, "fp8_e4m3")
    pinned = torch.empty((4, n), dtype=torch.uint8).pin_memory()
    pack_hf(pkv, layout, "fp8_e4m3", start=10, batch_index=1, out=pinned)
    torch.cuda.synchronize()
    ref = pack_hf([(k.cpu(), v.cpu()) for k, v in pkv], layout, "fp8_e4m3", start=10,
                  batch_index=1)
    assert all(torch.equal(pinned[i], ref[i]) for i in range(4))
