"""DaemonConfig: what ``kvstore serve`` runs with, from defaults, a TOML file, env and flags.

Precedence, highest first: command-line flags > ``KVSTORE_*`` environment
variables > the TOML file > defaults. The file is ``--config FILE``, else
``$KVSTORE_CONFIG``, else ``$XDG_CONFIG_HOME/kvstore/kvstore.toml`` when it
exists. Example::

    listen = ["shm:///run/kvstore/kvstore.sock", "tcp://127.0.0.1:7801"]
    admin = "127.0.0.1:7803"       # "" turns the admin API off
    admin_token_file = "/etc/kvstore/admin-token"
    pin_budget = "1GiB"           # pins of the admin API (default: a quarter of cpu_bytes)
    metrics = "127.0.0.1:7804"    # "" turns the metrics endpoint off
    cpu_bytes = "8GiB"
    ssd_dir = "/var/cache/kvstore"
    ssd_bytes = "200GiB"          # 0 disables the SSD tier
    auth_token_file = "/etc/kvstore/token"
    log_level = "info"
    drain_timeout = 30
    prefault = true               # allocate the arena's pages at start
    etcd = "http://127.0.0.1:2379"  # join a cluster (off when unset)
    cluster = "prod"
    advertise = ["tcp://10.0.0.5:7801"]

    [limits]                      # transport.limits.Limits
    max_connections = 1024
    max_payload_bytes = "4GiB"

    [store]                       # any other StoreConfig setting
    cpu_policy = "lru"

Environment: ``KVSTORE_LISTEN`` (comma-separated URLs), ``KVSTORE_ADMIN``,
``KVSTORE_ADMIN_TOKEN_FILE``, ``KVSTORE_PIN_BUDGET``, ``KVSTORE_METRICS``,
``KVSTORE_CPU_BYTES``, ``KVSTORE_SSD_DIR``, ``KVSTORE_SSD_BYTES``,
``KVSTORE_AUTH_TOKEN_FILE``, ``KVSTORE_LOG_LEVEL``, ``KVSTORE_LOG_FORMAT``,
``KVSTORE_DRAIN_TIMEOUT``, ``KVSTORE_ARENA_DIR``, ``KVSTORE_PREFAULT``, and each
limit as ``KVSTORE_MAX_...`` (``KVSTORE_MAX_CONNECTIONS``). Cluster:
``KVSTORE_ETCD``, ``KVSTORE_CLUSTER``, ``KVSTORE_ADVERTISE`` (comma-separated),
``KVSTORE_NODE_ID``, ``KVSTORE_CLUSTER_TTL``, ``KVSTORE_REPLICAS``,
``KVSTORE_HOT_THRESHOLD``, ``KVSTORE_PEER_FANOUT``.

Defaults (``kvstore serve`` with nothing else): listeners on loopback only
(the shm socket in ``$XDG_RUNTIME_DIR/kvstore`` or ``/tmp/kvstore-UID``, tcp
on 127.0.0.1:7801), a CPU arena of a quarter of the available memory (capped
at 64 GiB and by the free space of /dev/shm), an SSD tier under
``$XDG_CACHE_HOME/kvstore`` (``~/.cache/kvstore``) of a quarter of that
filesystem's free space (capped at 256 GiB).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kvstore.dataclass_dict import reject_unknown
from kvstore.default_listen import default_listen
from kvstore.errors import InvalidArgument
from kvstore.sizes import parse_size
from kvstore.transport.limits import Limits
from kvstore.transport.urls import parse_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GiB = 1 << 30
CPU_CAP = 64 * GiB
SSD_CAP = 256 * GiB
MIN_CPU = 64 << 20
# The daemon frees room ahead of writes while a client copies (``transport.room_ahead``):
# at most a sixteenth of the CPU tier (``[store] evict_ahead_share``; 0 turns it off).
EVICT_AHEAD_SHARE = 16
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_SCALARS = (
    "admin", "admin_token_file", "pin_budget", "metrics", "cpu_bytes", "ssd_dir", "ssd_bytes",
    "auth_token_file", "log_level", "log_format", "drain_timeout", "arena_dir", "prefault",
    "etcd", "cluster", "node_id", "cluster_ttl", "replicas", "hot_threshold", "peer_fanout",
    "admin_insecure", "metrics_tenant_labels", "shm_allow_uids", "tenant_quota",
    "tenant_cpu_bytes", "tenant_ssd_bytes", "write_behind_seconds", "write_lease_seconds",
    "peer_timeout", "rebalance_rate",
)
_BOOLS = ("prefault", "admin_insecure", "metrics_tenant_labels")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvstore"


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 4 * GiB


def default_cpu_bytes(arena_dir: str = "/dev/shm") -> int:
    size = min(mem_available() // 4, CPU_CAP)
    try:
        size = min(size, shutil.disk_usage(arena_dir).free * 3 // 4)
    except OSError:
        pass
    return max(MIN_CPU, size >> 20 << 20)


def default_ssd_bytes(directory: Path) -> int:
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return 0
    return min(free // 4, SSD_CAP) >> 20 << 20


@dataclass
class DaemonConfig:
    listen: list[str] = field(default_factory=list)
    admin: str = "127.0.0.1:7803"  # "": no admin API
    admin_token_file: str | None = None  # one token; admin calls send "authorization: Bearer T"
    pin_budget: int | None = None  # bytes the admin API may pin; None: cpu_bytes / 4
    metrics: str = "127.0.0.1:7804"  # "": no metrics endpoint
    cpu_bytes: int = 0  # 0: sized from the available memory
    ssd_dir: str = ""
    ssd_bytes: int | None = None  # None: sized from the free space; 0 disables SSD
    arena_dir: str = "/dev/shm"
    prefault: bool = True  # allocate the arena's pages at start (fails early if they do not fit)
    auth_token_file: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    drain_timeout: float = 30.0
    limits: Limits = field(default_factory=Limits)
    store: dict = field(default_factory=dict)  # extra StoreConfig settings
    # cluster (kvstore/cluster/node.py): off unless ``etcd`` names an endpoint
    etcd: str = ""  # http://HOST:PORT of etcd's client listener
    cluster: str = "default"
    advertise: list[str] = field(default_factory=list)  # URLs peers/clients use; [] = listeners
    node_id: str = ""  # "": kept in <ssd_dir>/node-id (so a restart rejoins as itself)
    cluster_ttl: int = 5  # lease TTL (s): a dead node leaves the membership within it
    replicas: int = 2  # nodes that serve a hot prefix
    hot_threshold: int = 16  # read hits within a minute that make a prefix hot
    peer_fanout: int = 2  # owners asked for a prefix this node lacks
    # tenants and trust (kvstore/OPERATIONS.md, "Tenants and trust")
    admin_insecure: bool = False  # with auth on, run the admin API without a token (warned)
    metrics_tenant_labels: bool = False  # tenant names in metric labels only when asked
    shm_allow_uids: list[int] | str | None = None  # uids that may use shm; None: the daemon's
    tenant_quota: str | dict = ""  # "alice=cpu:1GiB,ssd:10GiB;bob=cpu:512MiB" or a TOML table
    tenant_cpu_bytes: int | str | None = None  # default CPU quota of a tenant (None: no ceiling)
    tenant_ssd_bytes: int | str | None = None  # default SSD quota of a tenant
    write_behind_seconds: float = 1.0  # puts reach the SSD within about this lag (0: off)
    write_lease_seconds: float = 600.0  # uncommitted write leases are taken back after this (a slow prefill holds one)
    peer_timeout: float = 0.3  # deadline (s) of a request to a peer; a silent peer costs this
    rebalance_rate: int | str = "64MiB"  # bytes/s a node pushes to a newcomer after a join
    source: dict = field(default_factory=dict)  # setting -> where it came from

    def __post_init__(self) -> None:
        if not self.listen:
            self.listen = default_listen()
        for url in self.listen:
            parse_url(url)
        for name in ("admin", "metrics"):
            value = getattr(self, name)
            if value and ":" not in value:
                raise InvalidArgument(f"{name} must be HOST:PORT, got {value!r}")
        self.cpu_bytes = parse_size(self.cpu_bytes) or default_cpu_bytes(self.arena_dir)
        if self.pin_budget in (None, ""):
            self.pin_budget = None  # the store's default (StoreConfig.pin_budget_bytes)
        else:
            self.pin_budget = parse_size(self.pin_budget)
        if not self.ssd_dir:
            self.ssd_dir = str(cache_dir())
        self.ssd_dir = os.path.expanduser(self.ssd_dir)
        if self.ssd_bytes is None:
            self.ssd_bytes = default_ssd_bytes(Path(self.ssd_dir))
        self.ssd_bytes = parse_size(self.ssd_bytes)
        self.log_level = str(self.log_level).lower()
        if self.log_level not in LOG_LEVELS:
            raise InvalidArgument(f"log_level must be one of {LOG_LEVELS}")
        if self.log_format not in ("text", "json"):
            raise InvalidArgument("log_format must be text or json")
        self.drain_timeout = float(self.drain_timeout)
        for name in _BOOLS:
            if isinstance(getattr(self, name), str):
                setattr(self, name, getattr(self, name).strip().lower() in ("1", "true", "yes", "on"))
        from kvstore.store.quotas import check_quota_entry, parse_quota_spec
        from kvstore.transport.peer_credentials import UidAllowList

        UidAllowList.parse(self.shm_allow_uids)  # checked now, used by the server
        if isinstance(self.tenant_quota, str):
            self.tenant_quota = parse_quota_spec(self.tenant_quota)
        else:
            self.tenant_quota = {str(t): check_quota_entry(e, t) for t, e in self.tenant_quota.items()}
        for name in ("tenant_cpu_bytes", "tenant_ssd_bytes"):
            value = getattr(self, name)
            setattr(self, name, None if value in (None, "") else parse_size(value))
        self.write_behind_seconds = float(self.write_behind_seconds)
        self.write_lease_seconds = float(self.write_lease_seconds)
        if isinstance(self.limits, dict):
            self.limits = Limits.from_dict(self.limits)
        self._check_cluster()

    def _check_cluster(self) -> None:
        from kvstore.cluster.records import check_name, parse_endpoint

        if isinstance(self.advertise, str):
            self.advertise = [u.strip() for u in self.advertise.split(",") if u.strip()]
        for url in self.advertise:
            parse_url(url)
        for name in ("cluster_ttl", "replicas", "hot_threshold", "peer_fanout"):
            try:
                setattr(self, name, int(getattr(self, name)))
            except (TypeError, ValueError):
                raise InvalidArgument(f"{name} must be an integer") from None
        try:
            self.peer_timeout = float(self.peer_timeout)
            self.rebalance_rate = parse_size(self.rebalance_rate)
        except (TypeError, ValueError):
            raise InvalidArgument("peer_timeout must be seconds, rebalance_rate a size") from None
        if not 0 < self.peer_timeout <= 60:
            raise InvalidArgument("peer_timeout must be within (0, 60] seconds")
        if self.cluster_ttl < 2:
            raise InvalidArgument("cluster_ttl must be at least 2 seconds")
        if self.replicas < 1 or self.hot_threshold < 1 or self.peer_fanout < 1:
            raise InvalidArgument("replicas, hot_threshold and peer_fanout must be at least 1")
        if self.etcd:
            parse_endpoint(self.etcd)
            check_name("cluster", self.cluster)
        if self.node_id:
            check_name("node", self.node_id)

    @property
    def ssd_enabled(self) -> bool:
        return self.ssd_bytes > 0

    def store_config(self):
        from kvstore.store.config import StoreConfig

        settings = dict(self.store)
        settings.update(cpu_bytes=self.cpu_bytes, arena_dir=self.arena_dir)
        settings.setdefault("tenant_quotas", self.tenant_quota)
        settings.setdefault("tenant_cpu_bytes", self.tenant_cpu_bytes)
        settings.setdefault("tenant_ssd_bytes", self.tenant_ssd_bytes)
        settings.setdefault("write_behind_seconds", self.write_behind_seconds)
        settings.setdefault("write_lease_seconds", self.write_lease_seconds)
        settings.setdefault("evict_ahead_share", EVICT_AHEAD_SHARE)
        if self.pin_budget is not None:
            settings.update(pin_budget_bytes=self.pin_budget)
        if self.ssd_enabled:
            settings.update(ssd_dir=self.ssd_dir, ssd_bytes=self.ssd_bytes)
        else:
            settings.update(ssd_dir=None, ssd_bytes=0)
        return StoreConfig.from_dict(settings)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["limits"] = self.limits.to_dict()
        data.pop("source")
        return data


# -- the layers ---------------------------------------------------------------
def _check_keys(data: dict, where: str) -> None:
    reject_unknown(DaemonConfig, data, f"settings in {where}", exclude={"source"})


def file_layer(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise InvalidArgument(f"cannot read config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"bad TOML in {path}: {exc}") from exc
    _check_keys(data, str(path))
    if isinstance(data.get("listen"), str):
        data["listen"] = [data["listen"]]
    return data


def env_layer(environ=os.environ) -> dict:
    data: dict = {}
    if environ.get("KVSTORE_LISTEN"):
        data["listen"] = [u.strip() for u in environ["KVSTORE_LISTEN"].split(",") if u.strip()]
    if environ.get("KVSTORE_ADVERTISE"):
        data["advertise"] = environ["KVSTORE_ADVERTISE"]
    for name in _SCALARS:
        value = environ.get(f"KVSTORE_{name.upper()}")
        if value is not None:
            data[name] = value
    limits = {}
    for f in dataclasses.fields(Limits):
        value = environ.get(f"KVSTORE_{f.name.upper()}")
        if value is not None:
            limits[f.name] = value
    if limits:
        data["limits"] = limits
    return data


def default_config_path(environ=os.environ) -> Path | None:
    if environ.get("KVSTORE_CONFIG"):
        return Path(environ["KVSTORE_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    path = Path(base) / "kvstore" / "kvstore.toml"
    return path if path.is_file() else None


def load_config(flags: dict | None = None, config_file=None, environ=os.environ) -> DaemonConfig:
    """Merge defaults < file < env < flags (``None`` flag values are unset)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    path = config_file or default_config_path(environ)
    layers = [("file", file_layer(path) if path else {}), ("env", env_layer(environ)),
              ("flags", flags)]
    merged: dict = {}
    source: dict = {}
    for where, layer in layers:
        _check_keys(layer, where)
        for key, value in layer.items():
            if key in ("limits", "store"):
                merged.setdefault(key, {}).update(value)
                for sub in value:
                    source[f"{key}.{sub}"] = where
            else:
                merged[key] = value
                source[key] = where
    return DaemonConfig(**merged, source=source)
