"""An independent numpy implementation of the documented block codecs.

Written from the payload diagrams and the arithmetic rules in
``kernels/codecs.py`` (not from the torch reference): float32 numpy
arithmetic, round-half-to-even, float8 e4m3fn and bfloat16 rounding done
with float64 / integer math. Used by the tests as the oracle of both the
torch reference and the CUDA kernels.
"""

from __future__ import annotations

import numpy as np

K_GROUP = 64


def align16(n: int) -> int:
    return (n + 15) // 16 * 16


def sections(codec: str, L: int, T: int, H: int, D: int, itemsize: int):
    """[(name, offset, numpy dtype, shape)] and total size, from the docstring."""
    if codec == "none":
        return [("block", 0, None, (L, 2, T, H, D))], L * 2 * T * H * D * itemsize
    if codec == "fp8_e4m3":
        parts = [("scale", np.float32, (L, 2, H)), ("q", np.uint8, (L, 2, H, T, D))]
    elif codec == "int8":
        parts = [("scale", np.float32, (L, 2, H, T)), ("q", np.int8, (L, 2, H, T, D))]
    else:
        G = -(-T // K_GROUP)
        parts = [("k_scale", np.float32, (L, H, G, D)), ("k_min", np.float32, (L, H, G, D)),
                 ("v_scale", np.float32, (L, H, T)), ("v_min", np.float32, (L, H, T)),
                 ("q", np.uint8, (L, 2, H, T, D // 2))]
    out, off = [], 0
    for name, dt, shape in parts:
        out.append((name, off, dt, shape))
        off = align16(off + int(np.prod(shape)) * np.dtype(dt).itemsize)
    return out, off


# -- number formats ----------------------------------------------------------
def to_e4m3(y: np.ndarray) -> np.ndarray:
    """float32 values with |y| <= 448 -> e4m3fn codes (round half to even)."""
    a = np.abs(y.astype(np.float64))
    _, e = np.frexp(a)  # a = m * 2^e, m in [0.5, 1)
    quantum = np.where(a >= 2.0 ** -6, np.ldexp(1.0, e - 4), 2.0 ** -9)
    q = np.minimum(np.round(a / quantum) * quantum, 448.0)
    _, e2 = np.frexp(q)
    normal = q >= 2.0 ** -6
    e2 = np.where(normal, e2 - 1, 0)  # q = 1.f * 2^e2
    man = np.where(normal, (q / np.ldexp(1.0, e2) - 1.0) * 8.0, q / 2.0 ** -9)
    code = np.where(normal, (e2 + 7) * 8 + man, man).astype(np.int64)
    return (code | (np.signbit(y).astype(np.int64) << 7)).astype(np.uint8)


def from_e4m3(b: np.ndarray) -> np.ndarray:
    b = b.astype(np.int64)
    exp, man = (b >> 3) & 15, b & 7
    mag = np.where(exp == 0, man * 2.0 ** -9, (1 + man / 8.0) * np.exp2(exp - 7.0))
    return np.where(b & 0x80, -mag, mag).astype(np.float32)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 ``x`` rounded (nearest even) to ``dtype``, as float32 values."""
    x = x.astype(np.float32)
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def _div(a, b):
    return (np.asarray(a, np.float32) / np.asarray(b, np.float32)).astype(np.float32)


def _scale(amax_or_range, levels):
    """amax / levels; NaN (0x7fc00000) where not finite: a NaN or an infinity in
    the group (numpy's max / min propagate NaN) poisons it (codecs.py)."""
    with np.errstate(invalid="ignore", over="ignore"):
        scale = _div(amax_or_range, levels)
        return np.where(scale <= np.finfo(np.float32).max, scale, np.float32("nan")) \
            .astype(np.float32)


# -- codecs ------------------------------------------------------------------
def encode(x: np.ndarray, codec: str, itemsize: int, raw: bytes | None = None) -> np.ndarray:
    """Payload bytes of block values ``x`` (float32 [L, 2, T, H, D]).

    ``raw``: the block's own bytes, for codec ``none``.
    """
    L, _, T, H, D = x.shape
    secs, total = sections(codec, L, T, H, D, itemsize)
    buf = np.zeros(total, np.uint8)
    if codec == "none":
        buf[:] = np.frombuffer(raw, np.uint8)
        return buf
    hm = np.ascontiguousarray(x.transpose(0, 1, 3, 2, 4)).astype(np.float32)  # [L,2,H,T,D]
    values = {}
    if codec == "fp8_e4m3":
        scale = _scale(np.abs(hm).max(axis=(3, 4)), 448.0)
        safe = np.where(scale > 0, scale, 1).astype(np.float32)
        y = np.clip(_div(hm, safe[..., None, None]), -448, 448)
        y = np.where(scale[..., None, None] > 0, y, 0).astype(np.float32)
        values = {"scale": scale, "q": to_e4m3(y)}
    elif codec == "int8":
        scale = _scale(np.abs(hm).max(axis=4), 127.0)
        safe = np.where(scale > 0, scale, 1).astype(np.float32)
        q = np.clip(np.round(_div(hm, safe[..., None])), -127, 127)
        values = {"scale": scale, "q": np.where(scale[..., None] > 0, q, 0).astype(np.int8)}
    else:
        k, v = hm[:, 0], hm[:, 1]  # [L, H, T, D]
        G = -(-T // K_GROUP)
        # "+ 0" makes a -0 minimum / maximum +0 (the documented canonical zero)
        k_min = np.stack([k[:, :, g * K_GROUP:(g + 1) * K_GROUP].min(axis=2) for g in range(G)],
                         2) + np.float32(0)
        k_max = np.stack([k[:, :, g * K_GROUP:(g + 1) * K_GROUP].max(axis=2) for g in range(G)],
                         2) + np.float32(0)
        k_scale = _scale(k_max - k_min, 15.0)
        k_min = np.where(np.isnan(k_scale), k_scale, k_min)
        v_min, v_max = v.min(axis=3) + np.float32(0), v.max(axis=3) + np.float32(0)
        v_scale = _scale(v_max - v_min, 15.0)
        v_min = np.where(np.isnan(v_scale), v_scale, v_min)
        tg = np.arange(T) // K_GROUP
        kq = _q4(k, k_min[:, :, tg], k_scale[:, :, tg])
        vq = _q4(v, v_min[..., None], v_scale[..., None])
        q = np.stack([kq, vq], axis=1)  # [L, 2, H, T, D]
        values = {"k_scale": k_scale, "k_min": k_min, "v_scale": v_scale, "v_min": v_min,
                  "q": (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)}
    for name, off, dt, shape in secs:
        data = np.ascontiguousarray(values[name], dtype=dt).reshape(shape)
        buf[off: off + data.nbytes] = data.view(np.uint8).reshape(-1)
    return buf


def _q4(x, mn, scale):
    safe = np.where(scale > 0, scale, 1).astype(np.float32)
    q = np.clip(np.round(_div((x - mn).astype(np.float32), safe)), 0, 15)
    return np.where(scale > 0, q, 0).astype(np.uint8)


def decode(buf: np.ndarray, codec: str, L: int, T: int, H: int, D: int,
           dtype: str) -> np.ndarray:
    """Decoded block values (float32 [L, 2, T, H, D], already rounded to dtype)."""
    itemsize = {"float16": 2, "bfloat16": 2, "float32": 4}[dtype]
    secs, total = sections(codec, L, T, H, D, itemsize)
    assert buf.size == total
    arr = {}
    for name, off, dt, shape in secs:
        if dt is not None:
            n = int(np.prod(shape)) * np.dtype(dt).itemsize
            arr[name] = buf[off: off + n].view(dt).reshape(shape)
    if codec == "fp8_e4m3":
        hm = (from_e4m3(arr["q"]) * arr["scale"][..., None, None]).astype(np.float32)
    elif codec == "int8":
        hm = (arr["q"].astype(np.float32) * arr["scale"][..., None]).astype(np.float32)
    else:
        p = arr["q"]
        q = np.empty(p.shape[:-1] + (D,), np.float32)
        q[..., 0::2], q[..., 1::2] = p & 15, p >> 4
        tg = np.arange(T) // K_GROUP
        k = q[:, 0] * arr["k_scale"][:, :, tg] + arr["k_min"][:, :, tg]
        v = q[:, 1] * arr["v_scale"][..., None] + arr["v_min"][..., None]
        hm = np.stack([k, v], axis=1).astype(np.float32)
    return round_to(hm.transpose(0, 1, 3, 2, 4), dtype)
