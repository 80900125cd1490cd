"""Quotas: how many bytes each tenant may hold in the CPU and SSD tiers.

A quota is a ceiling per tenant and tier. ``default_cpu`` / ``default_ssd``
apply to every tenant without its own entry (None: the whole tier). Set by
``StoreConfig.tenant_quotas`` (``{"alice": {"cpu": "1GiB", "ssd": "10GiB"}}``),
the daemon's ``--tenant-quota alice=cpu:1GiB,ssd:10GiB`` flag, env and TOML,
and at run time through ``TieredStore.set_quota`` (the admin API).

What a quota means for the CPU tier: a tenant's blocks and its outstanding
write leases live in the tenant's own arena and count against its CPU quota;
a tenant at its quota evicts its own blocks, never another tenant's. A tenant
under its quota whose allocation finds the whole tier full may evict blocks
of tenants above their fair share (``min(quota, capacity / tenants)``) or its
own; every other tenant's blocks stay. A request that can never fit (a put
larger than the quota) is refused with ``QuotaExceeded``.

The SSD tier follows the same rules with one segment log per tenant, capped
at its SSD quota (``kvstore.store.tenant_ssd``).
"""

from __future__ import annotations

import threading

from kvstore.errors import InvalidArgument
from kvstore.sizes import parse_size

TIERS = ("cpu", "ssd")


def parse_quota_spec(text: str) -> dict[str, dict[str, int]]:
    """``"alice=cpu:1GiB,ssd:10GiB;bob=cpu:512MiB"`` -> ``{"alice": {"cpu": ..., "ssd": ...}}``."""
    out: dict[str, dict[str, int]] = {}
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        tenant, sep, rest = part.partition("=")
        if not sep:
            raise InvalidArgument(f"tenant quota {part!r} must read TENANT=cpu:SIZE,ssd:SIZE")
        out[tenant.strip()] = check_quota_entry(
            dict(item.split(":", 1) for item in rest.split(",") if ":" in item), tenant)
    return out


def check_quota_entry(entry: dict, tenant: str = "") -> dict[str, int]:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"quota of tenant {tenant!r} must be a table of cpu/ssd sizes")
    out = {}
    for tier, size in entry.items():
        tier = str(tier).strip()
        if tier not in TIERS:
            raise InvalidArgument(f"unknown quota tier {tier!r} for tenant {tenant!r} (cpu, ssd)")
        out[tier] = parse_size(size.strip() if isinstance(size, str) else size)
    return out


class Quotas:
    """Per-tenant byte ceilings (thread-safe reads; ``set`` for run-time changes)."""

    def __init__(self, cpu_capacity: int, ssd_capacity: int, default_cpu: int | None = None,
                 default_ssd: int | None = None, tenants: dict | None = None):
        self.cpu_capacity = cpu_capacity
        self.ssd_capacity = ssd_capacity
        self.default = {"cpu": default_cpu, "ssd": default_ssd}
        self._lock = threading.Lock()
        self._tenants: dict[str, dict[str, int]] = {}
        for tenant, entry in (tenants or {}).items():
            self._tenants[str(tenant)] = check_quota_entry(entry, tenant)

    def _cap(self, tier: str) -> int:
        return self.cpu_capacity if tier == "cpu" else self.ssd_capacity

    def of(self, tenant: str, tier: str) -> int:
        """Tenant ``tenant``'s ceiling in ``tier`` (bytes; at most the tier's capacity)."""
        entry = self._tenants.get(tenant, {})
        quota = entry.get(tier, self.default[tier])
        cap = self._cap(tier)
        return cap if quota is None else min(int(quota), cap)

    def cpu(self, tenant: str) -> int:
        return self.of(tenant, "cpu")

    def ssd(self, tenant: str) -> int:
        return self.of(tenant, "ssd")

    def set(self, tenant: str, cpu: int | None = None, ssd: int | None = None) -> None:
        with self._lock:
            entry = dict(self._tenants.get(tenant, {}))
            if cpu is not None:
                entry["cpu"] = parse_size(cpu)
            if ssd is not None:
                entry["ssd"] = parse_size(ssd)
            self._tenants[tenant] = entry

    def explicit(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {t: dict(e) for t, e in self._tenants.items()}


def tenant_usage(quotas: Quotas, allocator, namespaces, ssd=None) -> dict[str, dict[str, int]]:
    """Per tenant: CPU bytes used (``allocator``), SSD bytes used (``ssd``'s per-tenant
    logs, ``kvstore.store.tenant_ssd.TenantSSD``; 0 without an SSD tier) and both
    quotas; under the store lock. Every tenant with a namespace, an arena or a quota."""
    names = set(allocator.tenants()) | set(quotas.explicit())
    names |= {nst.spec.tenant for nst in namespaces}
    return {t: {"cpu_used": allocator.used_by(t), "cpu_quota": quotas.cpu(t),
                "ssd_used": ssd.used_by(t) if ssd is not None else 0, "ssd_quota": quotas.ssd(t)}
            for t in sorted(names)}
