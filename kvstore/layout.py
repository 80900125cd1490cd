"""KVLayout: the geometry of one model's KV cache, and the namespace it names.

The canonical KV tensor of ``num_tokens`` tokens is::

    [num_layers, 2, num_tokens, num_kv_heads, head_dim]     (2 = key, value)

A stored block is that tensor for ``block_tokens`` tokens. Two engines share
blocks only when everything that changes the bytes of a block agrees: model,
geometry, dtype, codec, tensor-parallel rank/size and the tenant's salt. The
``fingerprint`` hashes exactly those fields, so it names the namespace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import msgpack
import xxhash

from kvstore.dataclass_dict import known_fields
from kvstore.errors import InvalidArgument

DTYPE_SIZES = {"float16": 2, "bfloat16": 2, "float32": 4}
FINGERPRINT_SEED = 0x4B56_4C41_594F_5554  # "KVLAYOUT": fixed, never random


@dataclass(frozen=True)
class KVLayout:
    """Geometry of a model's KV cache as the store sees it."""

    model_id: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str = "float16"
    block_tokens: int = 256
    tp_rank: int = 0
    tp_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.dtype, str) is False:  # accept torch dtypes
            object.__setattr__(self, "dtype", str(self.dtype).removeprefix("torch."))
        if self.dtype not in DTYPE_SIZES:
            raise InvalidArgument(f"dtype must be one of {sorted(DTYPE_SIZES)}, got {self.dtype!r}")
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_tokens", "tp_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InvalidArgument(f"{name} must be a positive int, got {value!r}")
        if not (0 <= self.tp_rank < self.tp_size):
            raise InvalidArgument(f"tp_rank {self.tp_rank} outside [0, {self.tp_size})")
        if not self.model_id:
            raise InvalidArgument("model_id must not be empty")

    # -- sizes and shapes -------------------------------------------------
    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def kv_shape(self, num_tokens: int) -> tuple[int, int, int, int, int]:
        """Shape of the canonical KV tensor for ``num_tokens`` tokens."""
        return (self.num_layers, 2, num_tokens, self.num_kv_heads, self.head_dim)

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        return self.kv_shape(self.block_tokens)

    @property
    def block_nbytes(self) -> int:
        """Bytes of one uncompressed (codec ``none``) block."""
        layers, two, tokens, heads, dim = self.block_shape
        return layers * two * tokens * heads * dim * self.itemsize

    # -- identity -----------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> KVLayout:
        return cls(**known_fields(cls, data))

    def fingerprint(self, codec: str = "none", tenant: str = "") -> bytes:
        """16 stable bytes naming the namespace of (this layout, codec, tenant)."""
        fields = sorted(self.to_dict().items()) + [("codec", codec), ("tenant", tenant)]
        packed = msgpack.packb(fields, use_bin_type=True)
        return xxhash.xxh3_128_digest(packed, seed=FINGERPRINT_SEED)

    def fingerprint_hex(self, codec: str = "none", tenant: str = "") -> str:
        return self.fingerprint(codec, tenant).hex()
