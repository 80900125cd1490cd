"""TenantSSD: the SSD tier as one segment log per tenant, so no tenant's writes push out another's blocks.

The SSD tier is a log that frees whole segments, oldest first. Shared by
every tenant, one tenant writing a lot would free segments holding the
others' blocks, whatever its quota; so, like the CPU tier's arenas
(``tenant_arenas``), each tenant has a log of its own (an ``SSDTier``)::

    <ssd_dir>/                      the default tenant "" (and the namespace manifest)
    <ssd_dir>/tenant-<hex(name)>/   tenant <name>'s segments (made on its first write)

Behind the one ``SSDTier`` face ``WriteBack`` and the rebuild use: writes
go to the log of the tenant that owns the record's namespace; a location
carries its tenant (``TenantLocation``), so reads go to the right log.

Capacity, by the rules of ``kvstore.store.quotas``:

* tenant T's log is capped at T's SSD quota (``Quotas.ssd``, at most the
  tier): a tenant at its quota frees its own oldest segments, never another
  tenant's; ``set_quota`` lowering it frees them at once;
* all logs together stay within the tier's capacity: when a write would take
  the sum past it, the oldest segment of the tenant most above its fair share
  (``min(quota, capacity / tenants with bytes on SSD)``) goes; when no other
  tenant is above its fair share, the writer's own oldest; when the writer
  has nothing left to free, the write is refused (``CapacityError``);
* a tenant whose quota cannot hold one record (``ssd:0``: no SSD) ``accepts``
  nothing: the store drops its memory victims instead of demoting them and
  write-behind skips its blocks; a put larger than the quota is refused
  (``check_ssd_quota``, ``QuotaExceeded``).

Used bytes are disk bytes (segment files: headers, records, padding), what
``kvstore admin stats`` shows per tenant. Appends of every tenant are
serialised by one lock (the room check must see the others' bytes; it is one
disk). A folder written by a daemon before per-tenant logs holds every
tenant's records in ``<ssd_dir>``: they come back and are served from there,
counted against the default tenant, until their segments are freed (a
removal looks there too, so a deleted block does not come back).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields

from kvstore.errors import CapacityError, QuotaExceeded
from kvstore.ssd.record import (
    DEFAULT_ALIGN,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    SSDLocation,
    SSDRecordHeader,
)
from kvstore.ssd.tier import SSDTier
from kvstore.store.quotas import Quotas
from kvstore.store_api import TierStats

PREFIX = "tenant-"
MIN_LOG_BYTES = SEGMENT_HEADER_SIZE + 2 * DEFAULT_ALIGN  # the smallest SSDTier
Factory = Callable[[str, int, int, str], SSDTier]  # (directory, capacity, segment, compression)


@dataclass(frozen=True)
class TenantLocation(SSDLocation):
    """An ``SSDLocation`` in tenant ``tenant``'s log."""

    tenant: str = ""


_PLAIN = [f.name for f in fields(SSDLocation)]


def _plain(loc: SSDLocation) -> SSDLocation:
    return SSDLocation(**{name: getattr(loc, name) for name in _PLAIN})


def _tagged(loc: SSDLocation, tenant: str) -> TenantLocation:
    return TenantLocation(**{name: getattr(loc, name) for name in _PLAIN}, tenant=tenant)


def record_bytes(payload_len: int, align: int = DEFAULT_ALIGN) -> int:
    """An upper bound of the disk bytes of one record of ``payload_len`` (header, tokens, padding)."""
    return -(-(payload_len + RECORD_HEADER_SIZE + align) // align) * align


def check_ssd_quota(ssd: TenantSSD | None, tenant: str, nblocks: int, block_bytes: int) -> None:
    """A write whose blocks can never all sit on its tenant's SSD quota is refused.

    A tenant with no room for even one record (``ssd:0``) has no SSD tier: its
    writes stay in memory only and are not refused here."""
    if ssd is None or nblocks <= 0 or not ssd.accepts(tenant, block_bytes):
        return
    quota, need = ssd.quota_of(tenant), nblocks * block_bytes
    if need > quota:
        raise QuotaExceeded(
            f"a write of {need} bytes ({nblocks} blocks) exceeds tenant {tenant!r}'s SSD "
            f"quota of {quota} bytes")


def log_dir(directory: str, tenant: str) -> str:
    return directory if not tenant else os.path.join(directory, PREFIX + tenant.encode().hex())


class TenantSSD:
    def __init__(self, directory: str, capacity: int, segment_bytes: int, compression: str,
                 factory: Factory, quotas: Quotas, tenant_of: Callable[[bytes], str | None]):
        self.directory = os.fspath(directory)
        self.capacity = int(capacity)
        self.segment_bytes = int(segment_bytes)
        self._compression = compression
        self._factory = factory
        self._quotas = quotas
        self._tenant_of = tenant_of  # namespace fingerprint -> tenant (None: unknown)
        self._lock = threading.RLock()  # the table of logs; the room check with its append
        self._logs: dict[str, SSDTier] = {}
        self._callback = None
        try:
            self._open("")
            for name in sorted(os.listdir(self.directory)):
                if name.startswith(PREFIX) and os.path.isdir(os.path.join(self.directory, name)):
                    self._open(bytes.fromhex(name[len(PREFIX):]).decode())
        except BaseException:
            self.close()
            raise

    # -- logs -------------------------------------------------------------------
    def quota_of(self, tenant: str) -> int:
        return min(self._quotas.ssd(tenant), self.capacity)

    def accepts(self, tenant: str, payload_len: int) -> bool:
        """Whether a record of ``payload_len`` can ever sit in ``tenant``'s log."""
        return record_bytes(payload_len) + SEGMENT_HEADER_SIZE <= self.quota_of(tenant) and (
            self.quota_of(tenant) >= MIN_LOG_BYTES)

    def _open(self, tenant: str) -> SSDTier:
        cap = max(self.quota_of(tenant), MIN_LOG_BYTES)
        # a small quota gets small segments: freeing one takes a fraction of its log
        seg = min(self.segment_bytes, max(SEGMENT_HEADER_SIZE + DEFAULT_ALIGN,
                                          cap // 4 // DEFAULT_ALIGN * DEFAULT_ALIGN))
        if not tenant:
            seg = self.segment_bytes  # the default log keeps the tier's own geometry
        tier = self._factory(log_dir(self.directory, tenant), cap, seg, self._compression)
        tier.set_eviction_callback(self._callback)
        self._logs[tenant] = tier
        return tier

    def _log_of(self, tenant: str) -> SSDTier:
        with self._lock:
            tier = self._logs.get(tenant)
            return tier if tier is not None else self._open(tenant)

    def tenant_for(self, fp: bytes) -> str:
        return self._tenant_of(bytes(fp)) or ""

    def used_by(self, tenant: str) -> int:
        tier = self._logs.get(tenant)
        return tier.used_bytes if tier is not None else 0

    def apply_quota(self, tenant: str) -> None:
        """``tenant``'s quota changed: cap its log, freeing its own oldest segments now."""
        tier = self._logs.get(tenant)
        if tier is not None:
            with self._lock:
                tier.capacity_bytes = max(self.quota_of(tenant), MIN_LOG_BYTES)
                tier.free_oldest(self.quota_of(tenant))

    def _fair_share(self, tenant: str, active: int) -> int:
        return min(self.quota_of(tenant), self.capacity // max(active, 1))

    def _make_room(self, tenant: str, need: int) -> None:
        """Free segments until ``need`` more bytes fit the tier (the rules above); under the lock."""
        while True:
            used = {t: log.used_bytes for t, log in self._logs.items()}
            if sum(used.values()) + need <= self.capacity:
                return
            active = sum(1 for b in used.values() if b > SEGMENT_HEADER_SIZE)
            over = sorted(((b - self._fair_share(t, active), t) for t, b in used.items()
                           if t != tenant and b > self._fair_share(t, active)), reverse=True)
            for _, victim in over + [(0, tenant)]:
                log = self._logs[victim]
                if log.free_oldest(log.used_bytes - 1):
                    break
            else:
                raise CapacityError(
                    f"ssd: no room for tenant {tenant!r}: every other tenant is within its share")

    # -- the SSDTier face ---------------------------------------------------------
    def write(self, header: SSDRecordHeader, payload) -> SSDLocation:
        (result,) = self.write_many([(header, payload)])
        if isinstance(result, Exception):
            raise result
        return result

    def write_many(self, items) -> list[SSDLocation | Exception]:
        """Each tenant's records to its own log (after making room in the tier)."""
        items = list(items)
        out: list[SSDLocation | Exception] = [CapacityError("ssd: not written")] * len(items)
        groups: dict[str, list[int]] = {}
        for i, (header, _) in enumerate(items):
            groups.setdefault(self.tenant_for(header.namespace), []).append(i)
        for tenant, idx in groups.items():
            fit = []
            for i in idx:
                size = memoryview(items[i][1]).nbytes
                if self.accepts(tenant, size):
                    fit.append(i)
                else:
                    out[i] = CapacityError(
                        f"ssd: a block of {size} bytes cannot fit tenant {tenant!r}'s SSD quota "
                        f"of {self.quota_of(tenant)} bytes")
            for chunk in self._chunks(tenant, fit, items):
                with self._lock:
                    log = self._log_of(tenant)
                    log.capacity_bytes = self.quota_of(tenant)
                    need = sum(record_bytes(memoryview(items[i][1]).nbytes) for i in chunk)
                    try:
                        self._make_room(tenant, need + SEGMENT_HEADER_SIZE)
                    except CapacityError as exc:
                        for i in chunk:
                            out[i] = exc
                        continue
                    results = log.write_many([items[i] for i in chunk])
                for i, r in zip(chunk, results):
                    out[i] = r if isinstance(r, Exception) else _tagged(r, tenant)
        return out

    def _chunks(self, tenant: str, idx: list[int], items) -> list[list[int]]:
        """``idx`` cut into runs of at most half the room the tenant may hold, so that
        room for each run can be made (a batch of demotions may exceed the whole tier)."""
        limit = max(min(self.quota_of(tenant), self.capacity) // 2, 1)
        chunks: list[list[int]] = []
        size = 0
        for i in idx:
            n = record_bytes(memoryview(items[i][1]).nbytes)
            if chunks and size + n <= limit:
                chunks[-1].append(i)
                size += n
            else:
                chunks.append([i])
                size = n
        return chunks

    def read(self, loc: SSDLocation) -> bytes:
        return self._log_at(loc).read(_plain(loc))

    def read_into(self, loc: SSDLocation, out) -> None:
        self._log_at(loc).read_into(_plain(loc), out)

    def read_many_into(self, locs: list[SSDLocation], outs: list) -> list[Exception | None]:
        """Per item, like ``SSDTier.read_many_into``: each tenant's log reads its own
        records in one batch."""
        results: list[Exception | None] = [None] * len(locs)
        by_log: dict[int, tuple[SSDTier, list[int]]] = {}
        for i, loc in enumerate(locs):
            log_ = self._log_at(loc)
            by_log.setdefault(id(log_), (log_, []))[1].append(i)
        for log_, idx in by_log.values():
            errors = log_.read_many_into([_plain(locs[i]) for i in idx], [outs[i] for i in idx])
            for i, err in zip(idx, errors):
                results[i] = err
        return results

    def _log_at(self, loc: SSDLocation) -> SSDTier:
        return self._logs[loc.tenant if isinstance(loc, TenantLocation) else ""]

    def remove(self, namespace: bytes, key: bytes) -> None:
        self.remove_many([(namespace, key)])

    def remove_many(self, pairs) -> int:
        """Remove from the owner's log (a namespace not known: from every log); from the
        default log too, which may hold records of a folder from before per-tenant logs
        (a tombstone is written only where the block is)."""
        removed = 0
        by_log: dict[str, list] = {}
        for ns, key in pairs:
            tenant = self._tenant_of(bytes(ns))
            for t in ({tenant, ""} if tenant is not None else list(self._logs)):
                by_log.setdefault(t, []).append((ns, key))
        for tenant, group in by_log.items():
            log = self._logs.get(tenant)
            if log is not None:
                removed += log.remove_many(group)
        return removed

    def recover(self, verify: bool | None = None):
        """Every log's live records (each namespace lives in one log: parents still come first)."""
        out = []
        for tenant, log in list(self._logs.items()):
            out.extend((h, _tagged(loc, tenant)) for h, loc in log.recover(verify))
        return out

    def save_namespaces(self, specs: dict[bytes, dict]) -> None:
        self._logs[""].save_namespaces(specs)

    def load_namespaces(self) -> dict[bytes, dict]:
        return self._logs[""].load_namespaces()

    def set_eviction_callback(self, fn) -> None:
        self._callback = fn
        for log in self._logs.values():
            log.set_eviction_callback(fn)

    @property
    def degraded(self) -> bool:
        return any(log.degraded for log in list(self._logs.values()))

    def reset_degraded(self) -> None:
        for log in list(self._logs.values()):
            if log.degraded:
                log.reset_degraded()

    def flush(self) -> None:
        for log in list(self._logs.values()):
            log.flush()

    @property
    def used_bytes(self) -> int:
        return sum(log.used_bytes for log in list(self._logs.values()))

    @property
    def capacity_bytes(self) -> int:
        return self.capacity

    def __len__(self) -> int:
        return sum(len(log) for log in list(self._logs.values()))

    def stats(self) -> TierStats:
        parts = [log.stats() for log in list(self._logs.values())]
        return TierStats(
            name="ssd", capacity_bytes=self.capacity, used_bytes=sum(p.used_bytes for p in parts),
            blocks=sum(p.blocks for p in parts), evictions=sum(p.evictions for p in parts),
            bytes_in=sum(p.bytes_in for p in parts), bytes_out=sum(p.bytes_out for p in parts),
            errors=sum(p.errors for p in parts), degraded=any(p.degraded for p in parts))

    def close(self) -> None:
        err = None
        for log in list(self._logs.values()):
            try:
                log.close()
            except Exception as exc:  # close every log; report the first failure
                err = err or exc
        if err is not None:
            raise err
