"""Torch reference of the block codecs: the oracle the CUDA kernels are held to.

Batched and vectorised: ``encode_blocks`` takes ``[S, L, 2, T, H, D]`` (S store
blocks) and writes ``[S, payload_nbytes]`` bytes; ``decode_blocks`` is the
reverse. Runs on any device torch runs on. The byte layout and the arithmetic
are specified in :mod:`kvstore.kernels.codecs`; every float operation here is
one IEEE float32 operation on tensors (never a division by a Python scalar,
which torch may turn into a multiplication by the reciprocal).
"""

from __future__ import annotations

import torch
from kvstore.kernels.codecs import (
    FP8_E4M3,
    FP8_MAX,
    INT4_K_GROUP,
    INT4_LEVELS,
    INT8,
    INT8_MAX,
    NONE,
    PayloadSpec,
    Section,
    payload_spec,
)

from kvstore.layout import KVLayout


def section_view(buf: torch.Tensor, sec: Section) -> torch.Tensor:
    """``[S, *sec.shape]`` view of ``sec`` inside the rows of ``buf`` ``[S, nbytes]``."""
    rows = buf[:, sec.offset: sec.offset + sec.nbytes]
    return rows.view(sec.dtype).view(buf.shape[0], *sec.shape)


def _div(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """True IEEE division, also by a constant (materialised as a tensor)."""
    if not isinstance(b, torch.Tensor):
        b = torch.full_like(a, b)
    return torch.div(a, b)


def _scale_and_safe(amax_or_range: torch.Tensor, levels: float):
    scale = _div(amax_or_range, levels)
    nonzero = scale > 0
    return scale, torch.where(nonzero, scale, torch.ones_like(scale)), nonzero


def encode_blocks(blocks: torch.Tensor, layout: KVLayout, codec: str,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Encode ``blocks`` ``[S, L, 2, T, H, D]`` into ``out`` ``[S, nbytes]`` (uint8)."""
    spec = payload_spec(layout, codec)
    S = blocks.shape[0]
    if out is None:
        out = torch.empty((S, spec.nbytes), dtype=torch.uint8, device=blocks.device)
    for start, length in spec.gaps():
        if length:
            out[:, start: start + length] = 0
    if codec == NONE:
        section_view(out, spec.section("block")).copy_(blocks)
        return out
    # head-major float32 copy: [S, L, 2, H, T, D]
    x = blocks.permute(0, 1, 2, 4, 3, 5).float()
    if codec == FP8_E4M3:
        _encode_fp8(x, spec, out)
    elif codec == INT8:
        _encode_int8(x, spec, out)
    else:
        _encode_int4(x, spec, out)
    return out


def decode_blocks(payloads: torch.Tensor, layout: KVLayout, codec: str) -> torch.Tensor:
    """Decode ``payloads`` ``[S, nbytes]`` into blocks ``[S, L, 2, T, H, D]``."""
    spec = payload_spec(layout, codec)
    if codec == NONE:
        return section_view(payloads, spec.section("block")).clone()
    if codec == FP8_E4M3:
        x = _decode_fp8(payloads, spec)
    elif codec == INT8:
        x = _decode_int8(payloads, spec)
    else:
        x = _decode_int4(payloads, spec)
    # x is head-major float32 [S, L, 2, H, T, D]
    return x.to(layout.torch_dtype).permute(0, 1, 2, 4, 3, 5).contiguous()


# -- fp8 e4m3: one scale per (layer, K/V, head) -------------------------------
def _encode_fp8(x: torch.Tensor, spec: PayloadSpec, out: torch.Tensor) -> None:
    amax = x.abs().amax(dim=(-2, -1))  # [S, L, 2, H]
    scale, safe, nonzero = _scale_and_safe(amax, FP8_MAX)
    y = _div(x, safe[..., None, None].expand_as(x))
    y = torch.where(nonzero[..., None, None], y, torch.zeros_like(y)).clamp(-FP8_MAX, FP8_MAX)
    section_view(out, spec.section("scale")).copy_(scale)
    section_view(out, spec.section("q")).copy_(y.to(torch.float8_e4m3fn).view(torch.uint8))


def _decode_fp8(payloads: torch.Tensor, spec: PayloadSpec) -> torch.Tensor:
    scale = section_view(payloads, spec.section("scale"))
    q = section_view(payloads, spec.section("q")).view(torch.float8_e4m3fn).float()
    return q * scale[..., None, None]


# -- int8: symmetric, one scale per (layer, K/V, head, token) -----------------
def _encode_int8(x: torch.Tensor, spec: PayloadSpec, out: torch.Tensor) -> None:
    amax = x.abs().amax(dim=-1)  # [S, L, 2, H, T]
    scale, safe, nonzero = _scale_and_safe(amax, INT8_MAX)
    y = _div(x, safe[..., None].expand_as(x)).round().clamp(-INT8_MAX, INT8_MAX)
    y = torch.where(nonzero[..., None], y, torch.zeros_like(y))
    section_view(out, spec.section("scale")).copy_(scale)
    section_view(out, spec.section("q")).copy_(y.to(torch.int8))


def _decode_int8(payloads: torch.Tensor, spec: PayloadSpec) -> torch.Tensor:
    scale = section_view(payloads, spec.section("scale"))
    q = section_view(payloads, spec.section("q")).float()
    return q * scale[..., None]


# -- int4: asymmetric; K per channel over 64-token groups, V per token --------
def _quant4(x: torch.Tensor, mn: torch.Tensor, safe: torch.Tensor, nonzero: torch.Tensor):
    """q in [0, 15] of ``x`` against its group's ``mn`` and scale (all of x's shape)."""
    q = _div(x - mn, safe).round().clamp(0, INT4_LEVELS)
    return torch.where(nonzero, q, torch.zeros_like(q)).to(torch.uint8)


def _encode_int4(x: torch.Tensor, spec: PayloadSpec, out: torch.Tensor) -> None:
    k, v = x[:, :, 0], x[:, :, 1]  # [S, L, H, T, D]
    T = k.shape[-2]
    G = spec.section("k_scale").shape[2]
    # K: groups of INT4_K_GROUP tokens per channel; pad the ragged last group
    # by repeating its last token (min/max unchanged).
    pad_idx = torch.arange(G * INT4_K_GROUP, device=x.device).clamp(max=T - 1)
    kg = k.index_select(-2, pad_idx).unflatten(-2, (G, INT4_K_GROUP))  # [S,L,H,G,64,D]
    k_min, k_max = kg.amin(dim=-2), kg.amax(dim=-2)  # [S, L, H, G, D]
    k_scale, k_safe, k_nz = _scale_and_safe(k_max - k_min, INT4_LEVELS)
    tg = torch.arange(T, device=x.device) // INT4_K_GROUP  # token -> its group
    kq = _quant4(k, k_min[..., tg, :], k_safe[..., tg, :], k_nz[..., tg, :])
    v_min, v_max = v.amin(dim=-1), v.amax(dim=-1)  # [S, L, H, T]
    v_scale, v_safe, v_nz = _scale_and_safe(v_max - v_min, INT4_LEVELS)
    vq = _quant4(v, v_min[..., None].expand_as(v), v_safe[..., None].expand_as(v),
                 v_nz[..., None].expand_as(v))
    section_view(out, spec.section("k_scale")).copy_(k_scale)
    section_view(out, spec.section("k_min")).copy_(k_min)
    section_view(out, spec.section("v_scale")).copy_(v_scale)
    section_view(out, spec.section("v_min")).copy_(v_min)
    q = torch.stack((kq, vq), dim=2)  # [S, L, 2, H, T, D]
    section_view(out, spec.section("q")).copy_(q[..., 0::2] | (q[..., 1::2] << 4))


def _decode_int4(payloads: torch.Tensor, spec: PayloadSpec) -> torch.Tensor:
    packed = section_view(payloads, spec.section("q"))  # [S, L, 2, H, T, D/2]
    q = torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2).float()
    T = q.shape[-2]
    tok_group = torch.arange(T, device=q.device) // INT4_K_GROUP
    k_scale = section_view(payloads, spec.section("k_scale"))[..., tok_group, :]
    k_min = section_view(payloads, spec.section("k_min"))[..., tok_group, :]
    v_scale = section_view(payloads, spec.section("v_scale"))[..., None]
    v_min = section_view(payloads, spec.section("v_min"))[..., None]
    k = q[:, :, 0] * k_scale + k_min
    v = q[:, :, 1] * v_scale + v_min
    return torch.stack((k, v), dim=2)
