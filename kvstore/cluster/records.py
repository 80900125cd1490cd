"""What the cluster keeps in etcd: nodes and hot prefixes, and the ``etcd://`` URL.

Keys under one cluster (``NAME``), values are JSON::

    /kvstore/NAME/nodes/<node_id>   NodeInfo   attached to the node's lease: it
                                               disappears when the node stops
                                               refreshing (dies, or is cut off)
    /kvstore/NAME/hot/<route_hex>   HotPrefix  attached to the marking node's
                                               hot lease (minutes): replicas
                                               keep serving a hot prefix after
                                               the node that marked it dies

``route_hex`` is the hex of a prefix's routing key (the chained key of its
first ``route_blocks`` blocks, kvstore.keys), so it names the namespace, the
``extra`` salt and the leading tokens at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from kvstore.dataclass_dict import known_fields
from kvstore.errors import InvalidArgument

PREFIX = "/kvstore"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidArgument(f"{kind} name must be 1-64 of [A-Za-z0-9_.-], got {name!r}")
    return name


def nodes_prefix(cluster: str) -> str:
    return f"{PREFIX}/{cluster}/nodes/"


def hot_prefix(cluster: str) -> str:
    return f"{PREFIX}/{cluster}/hot/"


@dataclass(frozen=True)
class EtcdURL:
    """``etcd://HOST:PORT/NAME``: where the cluster's membership lives, and its name."""

    host: str
    port: int
    cluster: str

    @classmethod
    def parse(cls, url: str) -> EtcdURL:
        if not url.startswith("etcd://"):
            raise InvalidArgument(f"a cluster URL is etcd://HOST:PORT/NAME, got {url!r}")
        rest = url[len("etcd://"):]
        hostport, _, name = rest.partition("/")
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InvalidArgument(f"a cluster URL is etcd://HOST:PORT/NAME, got {url!r}")
        return cls(host.strip("[]"), int(port), check_name("cluster", name or "default"))

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http://HOST:PORT`` (or ``HOST:PORT``) of an etcd client listener."""
    rest = endpoint.split("://", 1)[1] if "://" in endpoint else endpoint
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(f"etcd endpoint must be http://HOST:PORT, got {endpoint!r}")
    return host.strip("[]"), int(port)


def _record(cls, raw: bytes | str):
    """A dataclass from its JSON record (unknown keys ignored: newer nodes may add some)."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise InvalidArgument("a cluster record must be a JSON object")
    return cls(**known_fields(cls, doc))


@dataclass
class NodeInfo:
    """One daemon of the cluster, as it advertises itself (refreshed every few seconds)."""

    node_id: str
    urls: list[str]  # carriers peers and clients reach it on (tcp://, ucx://, shm://)
    admin: str = ""  # HOST:PORT of its admin gRPC API ("" when off)
    capacity_bytes: int = 0  # CPU arena + SSD tier
    used_bytes: int = 0
    blocks: int = 0
    requests: int = 0  # served since start (a load signal)
    started_at: float = 0.0
    updated_at: float = 0.0
    lease_id: int = 0
    lease_ttl: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> NodeInfo:
        info = _record(cls, raw)
        if not isinstance(info.node_id, str) or not isinstance(info.urls, list):
            raise InvalidArgument("malformed node record")
        return info

    def url_for(self, schemes: tuple[str, ...] = ("tcp", "ucx")) -> str | None:
        """The first advertised URL whose scheme is in ``schemes`` (in that order)."""
        for scheme in schemes:
            for url in self.urls:
                if url.startswith(scheme + "://"):
                    return url
        return None


@dataclass
class HotPrefix:
    """A prefix many requests hit: served by ``replicas`` nodes instead of one.

    ``prefix_blocks`` is how many leading blocks the hits had in common (the
    shared system prompt): requests that go past it are spread over the
    replicas by the key of their first block after it, so one conversation
    keeps landing on the same replica.
    """

    route_hex: str
    replicas: int
    prefix_blocks: int
    hits: int = 0
    marked_by: str = ""
    marked_at: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> HotPrefix:
        hot = _record(cls, raw)
        if hot.replicas < 1 or hot.prefix_blocks < 1:
            raise InvalidArgument("malformed hot-prefix record")
        return hot
