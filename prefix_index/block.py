"""Per-block metadata carried by the radix tree's nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Tier(IntEnum):
    """Where a block's bytes live. Lower is faster."""

    GPU = 0
    CPU = 1
    SSD = 2


@dataclass(eq=False)
class BlockMeta:
    """One stored block: its key, where it lives and how it is used.

    ``handle`` is the owning tier's location of the bytes (an arena slot, an
    SSD record address); the tree never looks inside it.
    """

    key: bytes
    size: int = 0
    tier: Tier = Tier.CPU
    handle: Any = None
    hits: int = 0
    last_access: float = 0.0
    inserted_at: float = 0.0
    extra_fields: dict = field(default_factory=dict)
