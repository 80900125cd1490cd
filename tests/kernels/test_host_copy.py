"""host_copy / host_paged: raw CPU copies through numpy give torch's results exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from kvstore.kernels import EngineKind, host_copy, host_paged, pack_paged, unpack_paged
from kvstore.kernels.paged import _paged
from kvstore.kernels.source import SKIP_BLOCK
from kvstore.layout import KVLayout
from tests.kernels.engine_caches import build_cache, engine_of, expected_block
from tests.kernels.engine_caches import tokens as _tokens

pytestmark = pytest.mark.unit

SEED = int(os.environ.get("KVSTORE_TEST_SEED", "7"))
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _rand(shape, dtype, gen):
    return torch.randn(shape, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_take_and_put_equal_index_select_and_index_copy(dtype):
    print(f"KVSTORE_TEST_SEED={SEED}")
    g = torch.Generator().manual_seed(SEED)
    view = _rand((40, 4, 2, 8), dtype, g)
    ids = torch.randperm(40, generator=g)[:12]
    out = torch.empty((12, 4, 2, 8), dtype=dtype)
    host_copy.take(view, ids, out)
    assert torch.equal(out, torch.index_select(view, 0, ids))
    rows = _rand((12, 4, 2, 8), dtype, g)
    want = view.clone().index_copy_(0, ids, rows)
    assert host_copy.put(view, ids, rows)
    assert torch.equal(view, want)


def test_take_blocks_and_put_blocks_per_store_block_with_holes():
    print(f"KVSTORE_TEST_SEED={SEED}")
    g = torch.Generator().manual_seed(SEED)
    view, R, S = _rand((30, 4, 2, 8), torch.bfloat16, g), 3, 4
    ids = torch.randperm(30, generator=g)[: R * S]
    outs = [torch.empty((R * 4, 2, 8), dtype=torch.bfloat16) for _ in range(S)]
    assert host_copy.take_blocks(view, ids, outs, R)
    for s, o in enumerate(outs):
        assert torch.equal(o.view(R, 4, 2, 8), view[ids[s * R:(s + 1) * R]])
    keep = torch.ones(R * S, dtype=torch.bool)
    keep[[1, 7]] = False
    before = view.clone()
    blocks = [_rand((R * 4, 2, 8), torch.bfloat16, g) for _ in range(S)]
    assert host_copy.put_blocks(view, ids, blocks, R, keep)
    for j in range(R * S):
        s, r = divmod(j, R)
        want = blocks[s].view(R, 4, 2, 8)[r] if keep[j] else before[ids[j]]
        assert torch.equal(view[ids[j]], want)


def test_out_of_range_ids_raise_instead_of_wrapping():
    view = torch.zeros((8, 16), dtype=torch.float16)
    with pytest.raises(IndexError):
        host_copy.take(view, torch.tensor([1, 8]), torch.empty((2, 16), dtype=torch.float16))
    with pytest.raises(IndexError):
        host_copy.put(view, torch.tensor([-2]), torch.ones((1, 16), dtype=torch.float16))
    assert bool((view == 0).all())


def test_strided_out_and_dtype_conversions_fall_back_to_torch():
    g = torch.Generator().manual_seed(SEED)
    view = _rand((10, 6), torch.float16, g)
    ids = torch.tensor([3, 1, 4])
    out = torch.empty((6, 3), dtype=torch.float16).t()  # not contiguous
    host_copy.take(view, ids, out)
    assert torch.equal(out, view[ids])
    wide = torch.empty((10, 6), dtype=torch.float32)
    host_copy.copy(wide, view)  # a conversion: torch's copy
    assert torch.equal(wide, view.float())
    assert not host_copy.put(wide, ids, view[:3])


def _flash(L=2, nb=24, ebs=4, H=2, D=8, T=16, seed=SEED):
    tokens = _tokens(L, nb, ebs, H, D, torch.bfloat16, seed=seed)
    caches = [build_cache(EngineKind.VLLM_FLASH, k, v) for k, v in tokens]
    return tokens, caches, KVLayout("m", L, H, D, "bfloat16", T), engine_of(EngineKind.VLLM_FLASH, ebs)


def test_host_paged_packs_flash_caches_and_the_reference_agrees():
    print(f"KVSTORE_TEST_SEED={SEED}")
    tokens, caches, layout, engine = _flash()
    R = layout.block_tokens // engine.block_size
    ids = torch.randperm(24, generator=torch.Generator().manual_seed(SEED))[: 3 * R].tolist()
    rows = [torch.empty(layout.block_nbytes, dtype=torch.uint8) for _ in range(3)]
    assert host_paged.gather(_paged(caches, ids, layout, engine, writing=False), rows)
    for i, row in enumerate(rows):
        want = expected_block(tokens, ids[i * R:(i + 1) * R], layout.block_tokens)
        assert torch.equal(row, want.contiguous().view(torch.uint8).reshape(-1))
    assert all(torch.equal(a, b) for a, b in zip(rows, pack_paged(caches, ids, layout, "none", engine)))


def test_host_paged_unpack_skips_blocks_and_writes_nothing_else():
    _, caches, layout, engine = _flash()
    R = layout.block_tokens // engine.block_size
    src_ids = list(range(2 * R))
    payloads = pack_paged(caches, src_ids, layout, "none", engine)
    _, dst, _, _ = _flash(seed=SEED + 1)
    before = [c.clone() for c in dst]
    ids = list(range(24 - 2 * R, 24))
    ids[1] = SKIP_BLOCK
    unpack_paged(payloads, dst, ids, layout, "none", engine)
    for c, b, s in zip(dst, before, caches):
        for j, e in enumerate(ids):
            if e != SKIP_BLOCK:
                assert torch.equal(c[:, e], s[:, src_ids[j]])
        untouched = [b for b in range(24) if b not in ids]
        assert torch.equal(c[:, untouched], b[:, untouched])
        assert torch.equal(c[:, 24 - 2 * R + 1], b[:, 24 - 2 * R + 1])


def test_host_paged_declines_layouts_that_need_a_reorder():
    tokens = _tokens(2, 24, 4, 2, 8, torch.bfloat16, seed=SEED)
    caches = [build_cache(EngineKind.VLLM_CPU, k, v) for k, v in tokens]
    layout = KVLayout("m", 2, 2, 8, "bfloat16", 16)
    rows = [torch.empty(layout.block_nbytes, dtype=torch.uint8)]
    src = _paged(caches, [0, 1, 2, 3], layout, engine_of(EngineKind.VLLM_CPU, 4), writing=False)
    assert host_paged.gather(src, rows) is False


def test_host_bits_is_a_view_of_the_same_bytes():
    t = torch.arange(6, dtype=torch.bfloat16)
    bits = host_copy.host_bits(t)
    assert bits.dtype == np.int16 and bits.shape == (6,)
    bits[0] = t[1].view(torch.int16).item()
    assert t[0].item() == 1.0
