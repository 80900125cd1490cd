"""NamespaceSpec: what a namespace is (layout, codec, tenant) and its block size."""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.errors import InvalidArgument
from kvstore.layout import KVLayout


@dataclass(frozen=True)
class NamespaceSpec:
    """A namespace of blocks: engines share blocks only within one.

    ``block_bytes`` is the size of one stored block's payload under ``codec``
    (``kvstore.kernels.payload_nbytes(layout, codec)``); every block of a
    namespace has exactly this size, which is what lets the CPU arena use one
    fixed slot size per namespace.
    """

    layout: KVLayout
    codec: str = "none"
    tenant: str = ""
    block_bytes: int = 0

    def __post_init__(self) -> None:
        if self.block_bytes == 0:
            if self.codec != "none":
                raise InvalidArgument("block_bytes is required for a compressed codec")
            object.__setattr__(self, "block_bytes", self.layout.block_nbytes)
        if self.block_bytes < 0:
            raise InvalidArgument("block_bytes must be positive")

    @property
    def fingerprint(self) -> bytes:
        return self.layout.fingerprint(self.codec, self.tenant)

    @property
    def block_tokens(self) -> int:
        return self.layout.block_tokens

    def to_dict(self) -> dict:
        return {
            "layout": self.layout.to_dict(),
            "codec": self.codec,
            "tenant": self.tenant,
            "block_bytes": self.block_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict) -> NamespaceSpec:
        return cls(
            layout=KVLayout.from_dict(data["layout"]),
            codec=data.get("codec", "none"),
            tenant=data.get("tenant", ""),
            block_bytes=int(data.get("block_bytes", 0)),
        )
