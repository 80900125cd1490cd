"""Torch reference of the block codecs: the oracle the CUDA kernels are held to.

Batched and vectorised over S store blocks and a few layers at a time:
``encode_f32`` quantizes a head-major float32 copy ``[S, n, 2, H, T, D]`` into
the payload sections of ``[S, payload_nbytes]`` bytes; ``decode_into`` writes
the decoded blocks into any ``[S, n, 2, T, H, D]`` view of the layout's dtype
(one copy transposes the float32 result and rounds it there). Runs on
any device torch runs on. The byte layout and the arithmetic are specified in
:mod:`kvstore.kernels.codecs`; every float operation here is one IEEE float32
operation on tensors (never a division by a Python scalar, which torch may
turn into a multiplication by the reciprocal).
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
    PayloadSpec,
    Section,
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


FLT_MIN = 2.0 ** -126  # smallest normal float32
FLT_MAX = torch.finfo(torch.float32).max


def _scale_and_safe(amax_or_range: torch.Tensor, levels: float):
    """(scale, divisor, nonzero). A group holding a NaN or an infinity (its amax or
    range is then NaN or inf, as is one whose range overflows float32) is poisoned
    (codecs.py): its scale is the NaN 0x7fc00000, its divisor 1, nonzero False (its
    q are zeroed by the caller), as in the CUDA kernels' kv_poison."""
    scale = _div(amax_or_range, levels)
    scale.masked_fill_(~(scale <= FLT_MAX), float("nan"))
    nonzero = scale > 0
    return scale, torch.where(nonzero, scale, torch.ones_like(scale)), nonzero


def _clamp_(y: torch.Tensor, scale: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Saturate ``y`` = values / scale to [lo, hi], skipping the pass when no scale
    is below FLT_MIN: with a normal scale = range / levels (one rounding), |y| <=
    levels * (1 + 2^-23), which rounds (to an integer, or to e4m3) within the
    range already. Subnormal or zero scales lose that precision and are clamped."""
    if bool((scale < FLT_MIN).any()):
        y.clamp_(lo, hi)
    return y


CHUNK_ELEMENTS = 1 << 20  # float32 temporaries per step: a few MB, cache friendly


def section_views(buf: torch.Tensor, spec: PayloadSpec) -> dict[str, torch.Tensor]:
    """Every section of ``spec`` as a ``[S, L, ...]`` view into ``buf`` ``[S, nbytes]``."""
    return {sec.name: section_view(buf, sec) for sec in spec.sections}


def layer_chunks(S: int, layout: KVLayout):
    """``(l0, l1)`` ranges of layers, each small enough for CHUNK_ELEMENTS."""
    per_layer = S * 2 * layout.block_tokens * layout.num_kv_heads * layout.head_dim
    step = max(1, CHUNK_ELEMENTS // max(per_layer, 1))
    for l0 in range(0, layout.num_layers, step):
        yield l0, min(layout.num_layers, l0 + step)


def zero_gaps(out: torch.Tensor, spec: PayloadSpec) -> None:
    for start, length in spec.gaps():
        if length:
            out[:, start: start + length] = 0


def encode_f32(x: torch.Tensor, views: dict[str, torch.Tensor], codec: str, l0: int) -> None:
    """Encode layers ``[l0, l0 + n)``, given as a private head-major float32 copy
    ``x`` ``[S, n, 2, H, T, D]`` (consumed), into the payload section ``views``."""
    n = x.shape[1]
    part = {name: v[:, l0:l0 + n] for name, v in views.items()}
    {FP8_E4M3: _encode_fp8, INT8: _encode_int8}.get(codec, _encode_int4)(x, part)


def decode_into(views: dict[str, torch.Tensor], codec: str, l0: int, l1: int,
                out: torch.Tensor) -> None:
    """Decode layers ``[l0, l1)`` of the payloads into ``out`` ``[S, n, 2, T, H, D]``
    (any strides, the layout's dtype). The arithmetic runs in place on a contiguous
    head-major float32 tensor (torch's mixed-dtype ops, e.g. int8 * float32 or a
    float32 result cast into a strided half ``out``, are slower on CPU than
    converting first); one copy then transposes and rounds it into ``out``."""
    part = {name: v[:, l0:l1] for name, v in views.items()}
    x = {FP8_E4M3: _decode_fp8, INT8: _decode_int8}.get(codec, _decode_int4)(part)
    out.copy_(x.permute(0, 1, 2, 4, 3, 5))


# The encoders own ``x`` (a private float32 copy) and work on it in place.
def _absmax(x: torch.Tensor, dims) -> torch.Tensor:
    """max |x| over ``dims`` without a |x| temporary (exact: max(max x, -min x));
    abs_ makes a zero maximum +0, as fabsf does in the kernels. (amax and amin are
    each ~10x faster than one aminmax on CPU.)"""
    return torch.maximum(x.amax(dim=dims), x.amin(dim=dims).neg_()).abs_()


# -- fp8 e4m3: one scale per (layer, K/V, head) -------------------------------
def _zero_groups_(y: torch.Tensor, nonzero: torch.Tensor) -> None:
    """q = 0 (+0) in the groups whose scale is 0 or NaN (rare: touched only if any);
    ``nonzero`` broadcasts against ``y``."""
    if not bool(nonzero.all()):
        y.masked_fill_(~nonzero, 0.0)


def _encode_fp8(x: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
    scale, safe, nonzero = _scale_and_safe(_absmax(x, (-2, -1)), FP8_MAX)  # [S, n, 2, H]
    y = _clamp_(x.div_(safe[..., None, None]), scale, -FP8_MAX, FP8_MAX)
    _zero_groups_(y, nonzero[..., None, None])  # x / 1 may hold -0 (byte 0x80): want +0
    out["scale"].copy_(scale)
    out["q"].view(torch.float8_e4m3fn).copy_(y)  # round to e4m3 straight into the payload


def _decode_fp8(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return p["q"].view(torch.float8_e4m3fn).float().mul_(p["scale"][..., None, None])


# -- int8: symmetric, one scale per (layer, K/V, head, token) -----------------
def _encode_int8(x: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
    scale, safe, nonzero = _scale_and_safe(_absmax(x, -1), INT8_MAX)  # [S, n, 2, H, T]
    y = _clamp_(x.div_(safe[..., None]).round_(), scale, -INT8_MAX, INT8_MAX)
    # a scale-0 group (amax / 127 underflowed) divides by 1 values of magnitude at
    # most 127 * 2^-150: they round to +-0, q = 0 as an int8; a poisoned (NaN
    # scale) group holds anything: zeroed
    if bool(torch.isnan(scale).any()):
        _zero_groups_(y, nonzero[..., None])
    out["scale"].copy_(scale)
    out["q"].copy_(y)  # exact small integers -> int8


def _decode_int8(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return p["q"].float().mul_(p["scale"][..., None])  # int8 -> float32 is exact


# -- int4: asymmetric; K per channel over 64-token groups, V per token --------
def _quant4_(x: torch.Tensor, mn: torch.Tensor, safe: torch.Tensor,
             scale: torch.Tensor) -> torch.Tensor:
    """In place: x -> q in [0, 15] against its group's min and scale (broadcast).
    A scale-0 group ((max - min) / 15 underflowed) divides by 1 values x - min of at
    most 15 * 2^-150: q rounds to +-0, which is 0 as a nibble: no masking needed."""
    return _clamp_(x.sub_(mn).div_(safe).round_(), scale, 0, INT4_LEVELS)


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """Pairs along the last dim into bytes: low nibble = even index."""
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def _encode_int4(x: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
    k, v = x[:, :, 0], x[:, :, 1]  # [S, n, H, T, D] views of the private copy
    T = k.shape[-2]
    G = out["k_scale"].shape[3]
    # K: groups of INT4_K_GROUP tokens per channel. A ragged last group is
    # padded by repeating its last token (min/max unchanged), then cut off.
    if T == G * INT4_K_GROUP:
        kg = k.unflatten(-2, (G, INT4_K_GROUP))  # [S, n, H, G, 64, D], a view
    else:
        pad = torch.arange(G * INT4_K_GROUP, device=x.device).clamp(max=T - 1)
        kg = k.index_select(-2, pad).unflatten(-2, (G, INT4_K_GROUP))
    # + 0.0 turns a -0 minimum / maximum into +0, so the stored bytes do not
    # depend on which of +0 / -0 a reduction happened to return (as in the kernels)
    k_min, k_max = kg.amin(dim=-2).add_(0.0), kg.amax(dim=-2).add_(0.0)  # [S, n, H, G, D]
    k_scale, k_safe, k_nonzero = _scale_and_safe(k_max - k_min, INT4_LEVELS)
    kq = _quant4_(kg, k_min[..., None, :], k_safe[..., None, :], k_scale)
    v_min, v_max = v.amin(dim=-1).add_(0.0), v.amax(dim=-1).add_(0.0)  # [S, n, H, T]
    v_scale, v_safe, v_nonzero = _scale_and_safe(v_max - v_min, INT4_LEVELS)
    vq = _quant4_(v, v_min[..., None], v_safe[..., None], v_scale)
    for scale, mn, q, nonzero in ((k_scale, k_min, kq, k_nonzero[..., None, :]),
                                  (v_scale, v_min, vq, v_nonzero[..., None])):
        poisoned = torch.isnan(scale)  # a NaN or inf in the group: min NaN, q = 0
        if bool(poisoned.any()):
            mn.masked_fill_(poisoned, float("nan"))
            _zero_groups_(q, nonzero)
    out["k_scale"].copy_(k_scale)
    out["k_min"].copy_(k_min)
    out["v_scale"].copy_(v_scale)
    out["v_min"].copy_(v_min)
    out["q"][:, :, 0].copy_(_nibbles(kq.flatten(-3, -2)[..., :T, :]))
    out["q"][:, :, 1].copy_(_nibbles(vq))


def _decode_int4(p: dict[str, torch.Tensor]) -> torch.Tensor:
    packed = p["q"]  # [S, n, 2, H, T, D/2]
    q = torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2).float()
    T = q.shape[-2]
    G = p["k_scale"].shape[3]
    if T == G * INT4_K_GROUP:  # broadcast each group's scale over its 64 tokens
        k = q[:, :, 0].unflatten(-2, (G, INT4_K_GROUP))
        k.mul_(p["k_scale"][..., None, :]).add_(p["k_min"][..., None, :])
    else:
        tg = torch.arange(T, device=q.device) // INT4_K_GROUP
        q[:, :, 0].mul_(p["k_scale"][..., tg, :]).add_(p["k_min"][..., tg, :])
    q[:, :, 1].mul_(p["v_scale"][..., None]).add_(p["v_min"][..., None])
    return q
