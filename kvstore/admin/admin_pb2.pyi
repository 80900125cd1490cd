from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Prefix(_message.Message):
    __slots__ = ("namespace", "tokens", "extra")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    tokens: _containers.RepeatedScalarFieldContainer[int]
    extra: bytes
    def __init__(self, namespace: _Optional[str] = ..., tokens: _Optional[_Iterable[int]] = ..., extra: _Optional[bytes] = ...) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("name", "capacity_bytes", "used_bytes", "blocks", "hits", "misses", "evictions", "demotions", "promotions", "bytes_in", "bytes_out", "errors", "degraded", "policy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    DEMOTIONS_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity_bytes: int
    used_bytes: int
    blocks: int
    hits: int
    misses: int
    evictions: int
    demotions: int
    promotions: int
    bytes_in: int
    bytes_out: int
    errors: int
    degraded: bool
    policy: str
    def __init__(self, name: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., blocks: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., demotions: _Optional[int] = ..., promotions: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., errors: _Optional[int] = ..., degraded: _Optional[bool] = ..., policy: _Optional[str] = ...) -> None: ...

class Namespace(_message.Message):
    __slots__ = ("id", "model_id", "tenant", "codec", "block_tokens", "block_bytes", "num_layers", "num_kv_heads", "head_dim", "dtype", "tp_rank", "tp_size")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TP_RANK_FIELD_NUMBER: _ClassVar[int]
    TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_id: str
    tenant: str
    codec: str
    block_tokens: int
    block_bytes: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    tp_rank: int
    tp_size: int
    def __init__(self, id: _Optional[str] = ..., model_id: _Optional[str] = ..., tenant: _Optional[str] = ..., codec: _Optional[str] = ..., block_tokens: _Optional[int] = ..., block_bytes: _Optional[int] = ..., num_layers: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[str] = ..., tp_rank: _Optional[int] = ..., tp_size: _Optional[int] = ...) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("namespace", "blocks", "bytes", "hits", "misses", "pinned_bytes", "lookup_hits", "lookup_misses")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    PINNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_HITS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_MISSES_FIELD_NUMBER: _ClassVar[int]
    namespace: Namespace
    blocks: int
    bytes: int
    hits: int
    misses: int
    pinned_bytes: int
    lookup_hits: int
    lookup_misses: int
    def __init__(self, namespace: _Optional[_Union[Namespace, _Mapping]] = ..., blocks: _Optional[int] = ..., bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., pinned_bytes: _Optional[int] = ..., lookup_hits: _Optional[int] = ..., lookup_misses: _Optional[int] = ...) -> None: ...

class PinInfo(_message.Message):
    __slots__ = ("namespace", "tokens", "bytes")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    tokens: int
    bytes: int
    def __init__(self, namespace: _Optional[str] = ..., tokens: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class PinStats(_message.Message):
    __slots__ = ("pinned_bytes", "budget_bytes", "pins")
    PINNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    pinned_bytes: int
    budget_bytes: int
    pins: _containers.RepeatedCompositeFieldContainer[PinInfo]
    def __init__(self, pinned_bytes: _Optional[int] = ..., budget_bytes: _Optional[int] = ..., pins: _Optional[_Iterable[_Union[PinInfo, _Mapping]]] = ...) -> None: ...

class ServerStats(_message.Message):
    __slots__ = ("connections", "requests", "errors", "inflight", "draining", "state", "uptime_seconds")
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    connections: int
    requests: int
    errors: int
    inflight: int
    draining: bool
    state: str
    uptime_seconds: float
    def __init__(self, connections: _Optional[int] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., inflight: _Optional[int] = ..., draining: _Optional[bool] = ..., state: _Optional[str] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("tiers", "namespaces", "pins", "server", "tenants")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    pins: PinStats
    server: ServerStats
    tenants: _containers.RepeatedCompositeFieldContainer[TenantStats]
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ..., pins: _Optional[_Union[PinStats, _Mapping]] = ..., server: _Optional[_Union[ServerStats, _Mapping]] = ..., tenants: _Optional[_Iterable[_Union[TenantStats, _Mapping]]] = ...) -> None: ...

class TenantStats(_message.Message):
    __slots__ = ("tenant", "cpu_used_bytes", "cpu_quota_bytes", "ssd_used_bytes", "ssd_quota_bytes")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CPU_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    SSD_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SSD_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    cpu_used_bytes: int
    cpu_quota_bytes: int
    ssd_used_bytes: int
    ssd_quota_bytes: int
    def __init__(self, tenant: _Optional[str] = ..., cpu_used_bytes: _Optional[int] = ..., cpu_quota_bytes: _Optional[int] = ..., ssd_used_bytes: _Optional[int] = ..., ssd_quota_bytes: _Optional[int] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("tenant", "cpu_bytes", "ssd_bytes")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CPU_BYTES_FIELD_NUMBER: _ClassVar[int]
    SSD_BYTES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    cpu_bytes: int
    ssd_bytes: int
    def __init__(self, tenant: _Optional[str] = ..., cpu_bytes: _Optional[int] = ..., ssd_bytes: _Optional[int] = ...) -> None: ...

class SetQuotaResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: TenantStats
    def __init__(self, tenant: _Optional[_Union[TenantStats, _Mapping]] = ...) -> None: ...

class ListNamespacesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNamespacesResponse(_message.Message):
    __slots__ = ("namespaces",)
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    def __init__(self, namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ...) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ("namespace", "tokens", "extra")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    tokens: _containers.RepeatedScalarFieldContainer[int]
    extra: bytes
    def __init__(self, namespace: _Optional[str] = ..., tokens: _Optional[_Iterable[int]] = ..., extra: _Optional[bytes] = ...) -> None: ...

class EvictResponse(_message.Message):
    __slots__ = ("blocks", "bytes", "skipped")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    bytes: int
    skipped: int
    def __init__(self, blocks: _Optional[int] = ..., bytes: _Optional[int] = ..., skipped: _Optional[int] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("ssd", "seconds")
    SSD_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ssd: bool
    seconds: float
    def __init__(self, ssd: _Optional[bool] = ..., seconds: _Optional[float] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: Prefix
    def __init__(self, prefix: _Optional[_Union[Prefix, _Mapping]] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ("pin", "pinned_bytes", "budget_bytes")
    PIN_FIELD_NUMBER: _ClassVar[int]
    PINNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    pin: PinInfo
    pinned_bytes: int
    budget_bytes: int
    def __init__(self, pin: _Optional[_Union[PinInfo, _Mapping]] = ..., pinned_bytes: _Optional[int] = ..., budget_bytes: _Optional[int] = ...) -> None: ...

class UnpinRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: Prefix
    def __init__(self, prefix: _Optional[_Union[Prefix, _Mapping]] = ...) -> None: ...

class UnpinResponse(_message.Message):
    __slots__ = ("pin", "pinned_bytes")
    PIN_FIELD_NUMBER: _ClassVar[int]
    PINNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    pin: PinInfo
    pinned_bytes: int
    def __init__(self, pin: _Optional[_Union[PinInfo, _Mapping]] = ..., pinned_bytes: _Optional[int] = ...) -> None: ...

class SetEvictionPolicyRequest(_message.Message):
    __slots__ = ("tier", "policy")
    TIER_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    tier: str
    policy: str
    def __init__(self, tier: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class SetEvictionPolicyResponse(_message.Message):
    __slots__ = ("tier", "previous", "policy")
    TIER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    tier: str
    previous: str
    policy: str
    def __init__(self, tier: _Optional[str] = ..., previous: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("resume", "shutdown")
    RESUME_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    resume: bool
    shutdown: bool
    def __init__(self, resume: _Optional[bool] = ..., shutdown: _Optional[bool] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("draining", "shutting_down")
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    SHUTTING_DOWN_FIELD_NUMBER: _ClassVar[int]
    draining: bool
    shutting_down: bool
    def __init__(self, draining: _Optional[bool] = ..., shutting_down: _Optional[bool] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("config_json", "source", "urls", "admin", "metrics", "version", "policies")
    class SourceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    source: _containers.ScalarMap[str, str]
    urls: _containers.RepeatedScalarFieldContainer[str]
    admin: str
    metrics: str
    version: str
    policies: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, config_json: _Optional[str] = ..., source: _Optional[_Mapping[str, str]] = ..., urls: _Optional[_Iterable[str]] = ..., admin: _Optional[str] = ..., metrics: _Optional[str] = ..., version: _Optional[str] = ..., policies: _Optional[_Iterable[str]] = ...) -> None: ...

class GetClusterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterNode(_message.Message):
    __slots__ = ("node_id", "urls", "admin", "capacity_bytes", "used_bytes", "blocks", "requests", "started_at", "updated_at", "lease_id", "lease_ttl", "self")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_FIELD_NUMBER: _ClassVar[int]
    SELF_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    urls: _containers.RepeatedScalarFieldContainer[str]
    admin: str
    capacity_bytes: int
    used_bytes: int
    blocks: int
    requests: int
    started_at: float
    updated_at: float
    lease_id: str
    lease_ttl: int
    self: bool
    def __init__(self_, node_id: _Optional[str] = ..., urls: _Optional[_Iterable[str]] = ..., admin: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., blocks: _Optional[int] = ..., requests: _Optional[int] = ..., started_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., lease_id: _Optional[str] = ..., lease_ttl: _Optional[int] = ..., self: _Optional[bool] = ...) -> None: ...

class HotPrefix(_message.Message):
    __slots__ = ("route_key", "replicas", "prefix_blocks", "hits", "marked_by")
    ROUTE_KEY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MARKED_BY_FIELD_NUMBER: _ClassVar[int]
    route_key: str
    replicas: int
    prefix_blocks: int
    hits: int
    marked_by: str
    def __init__(self, route_key: _Optional[str] = ..., replicas: _Optional[int] = ..., prefix_blocks: _Optional[int] = ..., hits: _Optional[int] = ..., marked_by: _Optional[str] = ...) -> None: ...

class GetClusterResponse(_message.Message):
    __slots__ = ("enabled", "cluster", "etcd", "etcd_ok", "registered", "node_id", "nodes", "hot", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    ETCD_FIELD_NUMBER: _ClassVar[int]
    ETCD_OK_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    HOT_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    cluster: str
    etcd: str
    etcd_ok: bool
    registered: bool
    node_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[ClusterNode]
    hot: _containers.RepeatedCompositeFieldContainer[HotPrefix]
    counters: _containers.ScalarMap[str, int]
    def __init__(self, enabled: _Optional[bool] = ..., cluster: _Optional[str] = ..., etcd: _Optional[str] = ..., etcd_ok: _Optional[bool] = ..., registered: _Optional[bool] = ..., node_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[ClusterNode, _Mapping]]] = ..., hot: _Optional[_Iterable[_Union[HotPrefix, _Mapping]]] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...
