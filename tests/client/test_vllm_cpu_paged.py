"""vLLM's CPU paged cache layout, as its own write op lays it out.

The connector's gather/scatter rest on ``CpuPagedLayout.probe``; these tests
hold them to vLLM's ``cpu_attn_reshape_and_cache`` on real cache tensors with
random K/V, for every ISA this CPU runs, and pin the documented "vec" order.
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from kvstore.client.vllm_cpu_paged import (  # noqa: E402
    CpuPagedLayout,
    gather_blocks,
    scatter_blocks,
)

H, BS, D = 4, 32, 64


def _isas():
    cases = [(torch.float32, "vec"), (torch.bfloat16, "vec"), (torch.float16, "vec16")]
    if torch.cpu._is_amx_tile_supported():
        cases.append((torch.bfloat16, "amx"))
    return cases


def _write(cache, isa, slots, k, v):
    from vllm import _custom_ops as ops

    nb = cache.shape[0]
    key_cache, value_cache = cache.view(nb, H, 2 * BS, D).chunk(2, dim=2)
    ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, isa,
                                   k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto")


@pytest.mark.parametrize("fast", [True, False], ids=["strided", "perm"])
@pytest.mark.parametrize("dtype,isa", _isas(), ids=lambda x: str(x).removeprefix("torch."))
def test_gather_and_scatter_match_vllm_write(dtype, isa, fast):
    layout = CpuPagedLayout.probe(dtype, isa, H, BS, D, fast=fast)
    if fast and isa.startswith("vec"):
        assert layout.strides is not None  # K^T and V are strided views: the fast path
    nb, blocks = 9, [7, 2, 5]
    caches = [torch.zeros(nb, H, BS, 2 * D, dtype=dtype) for _ in range(2)]
    slots = torch.cat([torch.arange(b * BS, (b + 1) * BS) for b in blocks])
    expect = []
    for cache in caches:
        k = torch.randn(len(slots), H, D).to(dtype)
        v = torch.randn(len(slots), H, D).to(dtype)
        _write(cache, isa, slots, k, v)
        expect.append(torch.stack([k, v]))
    got = gather_blocks(layout, caches, blocks)
    assert got.shape == (2, 2, len(slots), H, D)
    assert torch.equal(got, torch.stack(expect))

    fresh = [torch.zeros_like(c) for c in caches]
    scatter_blocks(layout, fresh, blocks, got)
    for a, b in zip(fresh, caches):
        assert torch.equal(a, b)  # byte for byte what vLLM itself wrote


def test_vec_layout_is_k_transposed_then_v():
    """The diagram of vllm_cpu_paged: per (block, head), K as [D, bs] then V as [bs, D]."""
    cache = torch.zeros(1, H, BS, 2 * D)
    k, v = torch.randn(BS, H, D), torch.randn(BS, H, D)
    _write(cache, "vec", torch.arange(BS), k, v)
    per_head = cache.view(H, 2, BS * D)
    assert torch.equal(per_head[:, 0].view(H, D, BS), k.permute(1, 2, 0))
    assert torch.equal(per_head[:, 1].view(H, BS, D), v.permute(1, 0, 2))
    assert not torch.equal(cache[0, :, :, :D], k.transpose(0, 1))  # the naive reading is wrong


def test_partial_writes_land_where_a_full_probe_says():
    """Decode writes one token at a time; the probe writes whole blocks: same places."""
    layout = CpuPagedLayout.probe(torch.float32, "vec", H, BS, D)
    cache = torch.zeros(3, H, BS, 2 * D)
    k, v = torch.randn(BS, H, D), torch.randn(BS, H, D)
    for t in range(BS):
        slot = torch.tensor([BS + t])
        _write(cache, "vec", slot, k[t : t + 1].contiguous(), v[t : t + 1].contiguous())
    assert torch.equal(gather_blocks(layout, [cache], [1])[0], torch.stack([k, v]))
