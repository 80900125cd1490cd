"""StoreConfig: how a TieredStore is built (sizes, directories, policies, threads).

Sizes accept ints or strings with binary suffixes (``"4GiB"``, see
``kvstore.sizes``). ``ssd_bytes = 0`` (or no ``ssd_dir``) disables the SSD
tier; ``gpu_bytes = 0`` (the default) disables the GPU tier, which is also
skipped when CUDA is not available.

Eviction policies are named per tier and built by ``policy_factory(name)``;
the default factory is ``kvstore.eviction.registry.get_policy``.

``pin_budget_bytes``: what the operator may pin resident (``ManagedStore.pin``);
None (the default) is a quarter of ``cpu_bytes``. This is the one default of
the pin budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from kvstore.dataclass_dict import reject_unknown
from kvstore.errors import InvalidArgument, KVStoreError
from kvstore.eviction import EvictionPolicy
from kvstore.eviction.registry import OFFLINE, get_policy
from kvstore.sizes import parse_size
from kvstore.store.quotas import parse_quota_spec

_SIZE_FIELDS = (
    "cpu_bytes", "cpu_page_bytes", "gpu_bytes", "ssd_bytes", "segment_bytes",
    "demotion_buffer_bytes",
)


def default_policy_factory(name: str) -> EvictionPolicy:
    """A fresh policy called ``name``, from the eviction registry."""
    return get_policy(name)


@dataclass
class StoreConfig:
    cpu_bytes: int | str = "1GiB"
    cpu_page_bytes: int | str = 0  # 0: auto (power of two <= min(64 MiB, cpu_bytes / 32))
    arena_dir: str = "/dev/shm"
    gpu_bytes: int | str = 0
    gpu_device: str = "cuda"
    ssd_dir: str | None = None
    ssd_bytes: int | str = 0
    segment_bytes: int | str = "256MiB"
    ssd_compression: str = "auto"
    gpu_policy: str = "lru"
    cpu_policy: str = "lru"
    policy_factory: Callable[[str], EvictionPolicy] | None = None
    demotion_threads: int = 1
    demotion_buffer_bytes: int | str = "256MiB"  # evicted blocks staged in RAM for the SSD writer
    promote_on_get: bool = True
    pin_budget_bytes: int | str | None = None  # None: cpu_bytes // 4
    persist_on_close: bool = False  # write CPU-resident blocks to SSD on close (as flush)
    ssd_factory: Callable[..., Any] | None = None  # builds the SSD tier (tests inject faults)
    # tenants (kvstore.store.quotas): per-tenant ceilings; None: the whole tier
    tenant_cpu_bytes: int | str | None = None
    tenant_ssd_bytes: int | str | None = None
    tenant_quotas: dict = field(default_factory=dict)  # {"alice": {"cpu": "1GiB", "ssd": ...}}
    write_lease_seconds: float = 600.0  # an uncommitted write lease is taken back after this
    # every put reaches the SSD tier within about this lag (0, the embedded default: only on
    # eviction/flush; the daemon's default is 1 s, kvstore.daemon.config)
    write_behind_seconds: float = 0.0
    # room a write frees ahead of the next one (``DataPath.make_room``): at most 1/share of
    # the CPU tier (0, the embedded default: evict only when room is needed; the daemon's
    # default is 16, kvstore.daemon.config: it evicts during the client's copy)
    evict_ahead_share: int = 0

    def __post_init__(self) -> None:
        for name in _SIZE_FIELDS:
            setattr(self, name, parse_size(getattr(self, name)))
        if self.cpu_bytes <= 0:
            raise InvalidArgument("cpu_bytes must be positive (the CPU tier is required)")
        if self.pin_budget_bytes in (None, ""):
            self.pin_budget_bytes = self.cpu_bytes // 4
        self.pin_budget_bytes = parse_size(self.pin_budget_bytes)
        if self.evict_ahead_share < 0:
            raise InvalidArgument("evict_ahead_share must be >= 0 (0: off)")
        if self.demotion_threads < 1:
            raise InvalidArgument("demotion_threads must be >= 1")
        if self.ssd_bytes and not self.ssd_dir:
            raise InvalidArgument("ssd_bytes needs ssd_dir")
        for name in ("tenant_cpu_bytes", "tenant_ssd_bytes"):
            if getattr(self, name) not in (None, ""):
                setattr(self, name, parse_size(getattr(self, name)))
            else:
                setattr(self, name, None)
        if isinstance(self.tenant_quotas, str):
            self.tenant_quotas = parse_quota_spec(self.tenant_quotas)
        self.write_lease_seconds = float(self.write_lease_seconds)
        self.write_behind_seconds = float(self.write_behind_seconds)
        if self.write_lease_seconds <= 0 or self.write_behind_seconds < 0:
            raise InvalidArgument("write_lease_seconds must be > 0, write_behind_seconds >= 0")
        if self.policy_factory is None:
            self.policy_factory = default_policy_factory

    @property
    def ssd_enabled(self) -> bool:
        return bool(self.ssd_dir) and self.ssd_bytes > 0

    def make_policy(self, name: str) -> EvictionPolicy:
        """A fresh online policy called ``name``; ``InvalidArgument`` for an unknown name
        and for an offline-only one (``opt``: it needs the future, a store has none)."""
        if name in OFFLINE:
            raise InvalidArgument(
                f"eviction policy {name!r} is offline-only (it needs the future): not for a store")
        try:
            return self.policy_factory(name)
        except KVStoreError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidArgument(f"unknown eviction policy {name!r}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict) -> StoreConfig:
        """From a TOML table / env mapping; unknown keys are an error."""
        reject_unknown(cls, data, "store settings")
        return cls(**data)

    def to_dict(self) -> dict:
        skip = {"policy_factory", "ssd_factory"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
