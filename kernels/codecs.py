"""Block codecs: names, constants and the byte layout of every payload.

A store block is the canonical tensor of ``block_tokens`` tokens::

    block[L, 2, T, H, D]     L layers, 2 = (K, V), T tokens, H kv-heads, D head dim

A codec turns it into a 1-D ``uint8`` payload. The store allocates fixed-size
slots per namespace, so the payload size is a pure function of the layout and
the codec (:func:`payload_nbytes`); it never depends on the values. Every
payload carries its own scales: nothing else is needed to decode it.

Codecs and their payloads (E = bytes per element of the layout's dtype; every
section of a quantized payload starts at a multiple of 16 bytes, and the total
is rounded up to 16; all multi-byte numbers are little-endian)::

  none        exact bytes of the block, nothing else (total L*2*T*H*D*E)
              +--------------------------------------------+
              | block  dtype [L, 2, T, H, D]                |
              +--------------------------------------------+

  fp8_e4m3    one scale per (layer, K/V, head) of the block
              +--------------------------------------------+ 0
              | scale  f32  [L, 2, H]                       |  amax / 448
              +--------------------------------------------+ align16
              | q      e4m3fn [L, 2, H, T, D]   (1 B each)  |  x / scale, saturated to +-448
              +--------------------------------------------+
              ~ 1/2 of fp16: L*2*H*T*D + 4*L*2*H bytes

  int8        symmetric, one scale per (layer, K/V, head, token)
              +--------------------------------------------+ 0
              | scale  f32  [L, 2, H, T]                    |  amax / 127 over the D values
              +--------------------------------------------+ align16
              | q      i8   [L, 2, H, T, D]                 |  round(x / scale) in [-127, 127]
              +--------------------------------------------+
              ~ 1/2 of fp16 + 4 B per D values

  int4        asymmetric (min, scale), two values a byte
              K: grouped per channel, a group = 64 consecutive tokens of one
                 (layer, head, channel) (the last group of a block with T not
                 a multiple of 64 is shorter), as in KIVI: K has outlier channels
              V: grouped per token, a group = the D values of one
                 (layer, head, token)
              +--------------------------------------------+ 0
              | k_scale f32 [L, H, G, D]    G = ceil(T/64)  |  (max - min) / 15
              | k_min   f32 [L, H, G, D]                    |  min
              | v_scale f32 [L, H, T]                       |
              | v_min   f32 [L, H, T]                       |  (each section align16)
              | q       u8  [L, 2, H, T, D/2]               |  q = round((x - min) / scale)
              +--------------------------------------------+     in [0, 15]; byte j of a
              ~ 1/4 of fp16 + metadata (0.297 for D=128)        row = q[2j] | q[2j+1] << 4

The quantized data is stored head-major (``[.., H, T, D]``) so the values of
one scale group are contiguous, which is what the CUDA kernels want.

Arithmetic (identical in the torch reference and the CUDA kernels, so both
produce the same bytes): values are widened to float32; every operation is a
single IEEE float32 operation rounded to nearest even (no fused multiply-add);
rounding to an integer is round-half-to-even; a group whose scale is 0 (all
values equal, e.g. all zero) encodes q = 0; a zero amax, int4 min or int4 max
is taken as +0 (never -0), so the bytes do not depend on reduction order. Decoding computes
``q * scale`` (+ ``min`` for int4) in float32 and rounds to the layout's dtype.

Non-finite input (NaN, +-inf): a scale group (fp8: a (layer, K/V, head) of the
block; int8: a row; int4: a K channel group or a V row) that holds a NaN or an
infinity, or whose int4 range ``max - min`` overflows float32, is *poisoned*:
its scale is stored as the NaN ``0x7fc00000`` (int4: its min too) and its q
are 0, so the whole group decodes to NaN. Other groups are unaffected. A NaN
never turns into a number and an infinity decodes as NaN (the quantized
formats have no infinity). ``none`` copies the bytes, NaN and infinities
included. The torch reference and the CUDA kernels write the same payload
bytes; the bit pattern of a decoded NaN is not specified (CUDA's arithmetic
returns its canonical NaN).

Error bounds, relative to the group's ``amax = max |x|`` (plus the rounding of
the decoded value to the layout's dtype, at most half an ulp of that dtype):

  fp8_e4m3  |x - x'| <= amax / 28       (3 mantissa bits: <= |x| / 16 + amax * 2^-10 / 448)
  int8      |x - x'| <= amax / 254      (scale / 2)
  int4      |x - x'| <= (max - min) / 30 <= amax / 15
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from kvstore.errors import InvalidArgument
from kvstore.layout import KVLayout

NONE = "none"
FP8_E4M3 = "fp8_e4m3"
INT8 = "int8"
INT4 = "int4"
CODECS: tuple[str, ...] = (NONE, FP8_E4M3, INT8, INT4)

FP8_MAX = 448.0  # largest finite float8 e4m3fn
INT8_MAX = 127.0
INT4_LEVELS = 15.0  # q in [0, 15]
INT4_K_GROUP = 64  # tokens per K group (per channel)

ALIGN = 16


def check_codec(codec: str) -> str:
    """Return ``codec`` if it is known, else raise ``InvalidArgument``."""
    if codec not in CODECS:
        raise InvalidArgument(f"unknown codec {codec!r}; known codecs: {', '.join(CODECS)}")
    return codec


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Section:
    """One typed array inside a payload: ``shape`` of ``dtype`` at byte ``offset``."""

    name: str
    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class PayloadSpec:
    """The byte layout of one codec's payload for one block geometry."""

    codec: str
    sections: tuple[Section, ...]
    nbytes: int

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(name)

    def offsets(self) -> tuple[int, ...]:
        return tuple(s.offset for s in self.sections)

    def gaps(self) -> tuple[tuple[int, int], ...]:
        """``(offset, length)`` of the alignment padding after each section
        (length 0 where there is none); encoders write zeros there, so a
        payload's bytes are a function of the block alone."""
        ends = [s.offset + s.nbytes for s in self.sections]
        starts = [s.offset for s in self.sections[1:]] + [self.nbytes]
        return tuple((e, n - e) for e, n in zip(ends, starts))


def payload_spec(layout: KVLayout, codec: str) -> PayloadSpec:
    """Byte layout of ``codec``'s payload for a block of ``layout``."""
    check_codec(codec)
    return _spec(layout.num_layers, layout.block_tokens, layout.num_kv_heads,
                 layout.head_dim, layout.dtype, codec)


def payload_nbytes(layout: KVLayout, codec: str) -> int:
    """Size in bytes of one encoded block: a pure function of layout and codec."""
    return payload_spec(layout, codec).nbytes


@lru_cache(maxsize=256)
def _spec(L: int, T: int, H: int, D: int, dtype: str, codec: str) -> PayloadSpec:
    if codec == NONE:
        tdt = getattr(torch, dtype)
        sec = Section("block", 0, tdt, (L, 2, T, H, D))
        return PayloadSpec(codec, (sec,), sec.nbytes)
    if codec == FP8_E4M3:
        parts = [("scale", torch.float32, (L, 2, H)), ("q", torch.uint8, (L, 2, H, T, D))]
    elif codec == INT8:
        parts = [("scale", torch.float32, (L, 2, H, T)), ("q", torch.int8, (L, 2, H, T, D))]
    else:
        if D % 2:
            raise InvalidArgument(f"int4 packs two values a byte: head_dim must be even, got {D}")
        G = (T + INT4_K_GROUP - 1) // INT4_K_GROUP
        parts = [
            ("k_scale", torch.float32, (L, H, G, D)),
            ("k_min", torch.float32, (L, H, G, D)),
            ("v_scale", torch.float32, (L, H, T)),
            ("v_min", torch.float32, (L, H, T)),
            ("q", torch.uint8, (L, 2, H, T, D // 2)),
        ]
    sections = []
    offset = 0
    for name, dt, shape in parts:
        sec = Section(name, offset, dt, shape)
        sections.append(sec)
        offset = _align(offset + sec.nbytes)
    return PayloadSpec(codec, tuple(sections), offset)
