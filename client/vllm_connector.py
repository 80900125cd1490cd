"""``KVStoreConnector``: vLLM's KV connector (v1 API) backed by kvstore.

Load it by name, no vLLM patch needed::

    from vllm import LLM
    from vllm.config import KVTransferConfig

    llm = LLM(model=..., kv_transfer_config=KVTransferConfig(
        kv_connector="KVStoreConnector",
        kv_connector_module_path="kvstore.client.vllm_connector",
        kv_role="kv_both",
        kv_load_failure_policy="recompute",
        kv_connector_extra_config={"url": "embedded", "codec": "none"}))

(the settings are described in ``kvstore.client.vllm_settings``). vLLM
builds one instance per role: the scheduler's answers "how much of this
prompt is cached?" from the store's lookup and tells the workers what to
load and save (``kvstore.client.vllm_scheduler``); each worker's copies
blocks between its paged cache and the store (``kvstore.client.vllm_worker``).
Both talk to the store through one ``KVClient`` per process
(``kvstore.client.vllm_store``).

Block moves run on a dedicated stream ordered by events against the forward
(``kvstore.client.vllm_worker``): the forward waits for each layer's load in
``wait_for_layer_load``, saves are packed as layers finish and committed to
the store once their copy completed, without the engine waiting (on CPU
caches the same path runs synchronously). vLLM may reuse a saved block at
once: the next step's forward waits for the packs first.
The one exception is a finished request with a whole block of generated
tokens no step could save yet (``save_decode`` under async scheduling):
``request_finished`` keeps its blocks, the next step saves them, and
``get_finished`` reports it so that vLLM frees them
(``kvstore.client.vllm_scheduler``). A request's hints
(``kv_transfer_params={"kvstore": {"session_end": True, ...}}``) reach the
store when it finishes, after its last save.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from kvstore.client.vllm_meta import KVStoreConnectorMetadata
from kvstore.client.vllm_scheduler import SchedulerSide
from kvstore.client.vllm_settings import ConnectorSettings, EngineGeometry
from kvstore.client.vllm_store import shared_client
from kvstore.client.vllm_worker import WorkerSide

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger(__name__)


def log_like_vllm() -> None:
    """kvstore's log lines in vLLM's format (time, level, file:line), where nothing else
    configured them: vLLM sets up its own ``vllm`` logger only, so without this the
    connector's warnings reach Python's last-resort handler, bare and without a time."""
    ours, theirs = logging.getLogger("kvstore"), logging.getLogger("vllm")
    if ours.handlers or logging.getLogger().handlers or not theirs.handlers:
        return  # the application configured logging (or vLLM did not): leave it alone
    for handler in theirs.handlers:
        ours.addHandler(handler)
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)

def _tp(vllm_config, role: KVConnectorRole) -> tuple[int, int]:
    """(rank, size) of this process in tensor parallelism; the scheduler looks up rank 0."""
    size = vllm_config.parallel_config.tensor_parallel_size
    if role == KVConnectorRole.SCHEDULER or size == 1:
        return 0, size
    from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

    return get_tensor_model_parallel_rank(), size


class KVStoreConnector(KVConnectorBase_V1):
    """vLLM v1 KV connector over a kvstore namespace (embedded, shm or tcp)."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole,
                 kv_cache_config: KVCacheConfig):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        log_like_vllm()
        self.settings = settings = ConnectorSettings.from_vllm(vllm_config)
        self.geometry = geometry = EngineGeometry.from_kv_cache_config(kv_cache_config)
        self.layout = geometry.layout(settings, *_tp(vllm_config, role))
        self.client = shared_client(settings.url, strict=settings.strict, **settings.store)
        self.namespace = self.client.namespace(self.layout, codec=settings.codec,
                                               tenant=settings.tenant)
        self.scheduler: SchedulerSide | None = None
        self.worker: WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            if self._kv_transfer_config.kv_load_failure_policy != "recompute":
                log.warning("KVStoreConnector: kv_load_failure_policy is %r; with 'recompute'"
                            " a block evicted between lookup and load is recomputed instead"
                            " of failing the request",
                            self._kv_transfer_config.kv_load_failure_policy)
            _, tp_size = _tp(vllm_config, role)
            ranks = [self.client.namespace(geometry.layout(settings, r, tp_size),
                                           codec=settings.codec, tenant=settings.tenant)
                     for r in range(tp_size)]  # a hint goes to every rank's shard
            self.scheduler = SchedulerSide(self.namespace, geometry.block_size,
                                           settings.block_tokens, settings.load, settings.save,
                                           settings.strict, settings.save_decode, ranks,
                                           settings.batch_lookups)
        else:
            self.worker = WorkerSide(self.namespace, geometry, vllm_config, settings.strict)

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a best-effort cache: a dropped save is a later miss, nothing more

    # ============================== worker side ==============================
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self.worker.register(kv_caches)

    def _meta(self) -> KVStoreConnectorMetadata:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KVStoreConnectorMetadata)
        return meta

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        self.worker.load(self._meta())

    def wait_for_layer_load(self, layer_name: str) -> None:
        """The forward's stream waits for this layer's loads (enqueued by ``start_load_kv``)."""
        self.worker.wait_layer(layer_name)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata,
                      **kwargs: Any) -> None:
        self.worker.save_layer(layer_name, kv_layer, self._meta())

    def wait_for_save(self) -> None:
        if self.has_connector_metadata():
            self.worker.flush_saves(self._meta())

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.close()  # saves in flight reach the store
        super().shutdown()

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        saved = self.worker.take_saved()  # finished requests' last saves (request_finished: True)
        return saved or None, None

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self.worker.take_load_errors()

    # ============================ scheduler side =============================
    def get_num_new_matched_tokens(self, request: Request,
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        return self.scheduler.lookup(request, num_computed_tokens), False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks,
                                 num_external_tokens: int) -> None:
        self.scheduler.after_alloc(request, blocks.get_block_ids()[0], num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        return self.scheduler.build_meta(scheduler_output)

    def request_finished(self, request: Request,
                         block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        # True only when a last save of generated tokens is queued: vLLM keeps the
        # blocks until get_finished reports it; otherwise the saves are done by now
        return self.scheduler.finished(request, block_ids), None

    def update_connector_output(self, connector_output) -> None:
        self.scheduler.saved(connector_output.finished_sending)
