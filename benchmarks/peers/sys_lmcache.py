"""LMCache 0.5.6: ``lmcache server`` (CPU L1) and the multiprocess client vLLM's MP connector uses.

The worker registers paged CPU KV caches (per layer ``(2, NB, 16, 8, D)``
fp16, moved into POSIX shm by ``register`` so the server reads and writes
them in place: ``lmcache_driven`` transfer). One LMCache chunk (256 tokens,
16 pages) is one block: 2 MiB at D = 128, the same geometry as kvstore's.
Pages [0, P) are the source region, [P, 2P) the destination.

* PUT: ``submit_store`` of the source pages, waited for (the stage of
  ``bufs.src`` into the registered pages is untimed, as an engine's KV is
  already there).
* GET: ``lookup`` + ``query_prefetch_status`` (a retrieve needs the lookup's
  prefetch and read locks) + ``submit_retrieve`` into the destination pages,
  waited for. Untimed: sentinel-filling the destination pages, waiting until
  a lookup sees the round's store (a store is acknowledged before a lookup
  sees it), and copying the destination pages out for the byte check.
* lookup: ``lookup`` + ``query_prefetch_status`` of the 64 chunks; the locks
  it takes are released (``free_lookup_locks``, untimed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from benchmarks.peers.servers import free_port, port_open, stop, wait_for
from benchmarks.peers.system import NotInstalled, System
from benchmarks.peers.workload import WARM_ROUND_BASE

LAYERS, HEADS, PAGE, CHUNK = 2, 8, 16, 256
MODEL = "peers-bench"
RPC_TIMEOUT = 60.0
VISIBLE_TIMEOUT = 10.0


class LMCacheSystem(System):
    get_destination = "the registered paged KV cache (server writes it in place)"
    lookup_call = "lookup + query_prefetch_status of the 64 chunks"

    def start(self) -> dict:
        try:
            import torch
            import zmq
            from lmcache.v1.multiprocess.custom_types import IPCCacheServerKey
            from lmcache.v1.multiprocess.transfer_context import create_transfer_context
            from lmcache.v1.multiprocess.transport.factory import RequestClientFactory
        except ImportError as exc:
            raise NotInstalled(f"lmcache: {exc}") from exc
        # the venv's own bin first (its python may run without the venv activated)
        binary = shutil.which("lmcache", path=os.path.dirname(sys.executable) + os.pathsep
                              + os.environ.get("PATH", ""))
        if binary is None:
            raise NotInstalled("the lmcache command (pip lmcache==0.5.6 in .venv-peers)")
        self.torch, self.Key = torch, IPCCacheServerKey
        w = self.w
        per = LAYERS * 2 * CHUNK * HEADS * 2
        self.head_dim = w.block_bytes // per
        if self.head_dim * per != w.block_bytes:
            raise ValueError(f"lmcache: block_bytes must be a multiple of {per}")
        self.tokens = w.blocks * CHUNK
        self.pages = self.tokens // PAGE  # per region
        l1_gb = max(1.0, round((w.rounds + 3) * w.nbytes / 1e9 + 0.5, 1))
        port, http = free_port(), free_port()
        env = dict(os.environ, LMCACHE_DISABLE_BANNER="1", LMCACHE_TRACK_USAGE="false", DO_NOT_TRACK="1",
                   LMCACHE_LOG_LEVEL="WARNING")  # an INFO line per request costs the server time
        self.proc = subprocess.Popen(
            [binary, "server", "--host", "127.0.0.1",
             "--port", str(port), "--http-host", "127.0.0.1", "--http-port", str(http),
             "--l1-size-gb", str(l1_gb), "--eviction-policy", "LRU", "--chunk-size", str(CHUNK)],
            env=env, stdout=subprocess.DEVNULL)
        wait_for(lambda: port_open(port) and port_open(http), self.proc, "lmcache server", 180)
        self.zmq = zmq.Context()
        self.zmq.setsockopt(zmq.LINGER, 0)
        self.client = RequestClientFactory.create(f"tcp://127.0.0.1:{port}", context=self.zmq)
        shape = (2, 2 * self.pages, PAGE, HEADS, self.head_dim)
        self.kv = {f"layer.{i}": torch.zeros(shape, dtype=torch.float16) for i in range(LAYERS)}
        self.instance_id = os.getpid()  # a fresh id per process: a dead client's id serves its mapping
        self.tc = create_transfer_context(self.kv, mode="lmcache_driven",
                                          instance_id=self.instance_id, req_client=self.client)
        from lmcache.utils import EngineType
        from lmcache.v1.multiprocess.group_view import EngineGroupInfo

        self.tc.register(self.kv, MODEL, 1, CHUNK // PAGE, RPC_TIMEOUT,
                         layout_hints={"kv_layout": "NHD"},
                         engine_group_infos=[EngineGroupInfo(engine_group_id=0,
                                                             layer_indices=tuple(range(LAYERS)),
                                                             tokens_per_block=PAGE)],
                         engine_type=EngineType.VLLM)
        self.registered = True
        # the canonical [L, 2, T, H, D] views of the worker's buffers, and the page regions
        canon = (LAYERS, 2, self.pages, PAGE, HEADS, self.head_dim)
        self.src_kv = torch.from_numpy(self.bufs.src).view(torch.float16).view(canon)
        self.dst_kv = torch.from_numpy(self.bufs.dst).view(torch.float16).view(canon)
        self.src_pages = list(range(self.pages))
        self.dst_pages = list(range(self.pages, 2 * self.pages))
        self.seq = 0
        import lmcache

        return {"lmcache": getattr(lmcache, "__version__", "0.5.6"), "l1_size_gb": l1_gb,
                "instance_id": self.instance_id}

    # -- keys and RPCs ---------------------------------------------------------
    def key(self, round_id: int):
        self.seq += 1
        toks = tuple(range(round_id * self.tokens, (round_id + 1) * self.tokens))
        return self.Key(model_name=MODEL, world_size=1, worker_id=0, token_ids=toks, start=0,
                        end=self.tokens, request_id=f"peers-{self.instance_id}-{self.seq}",
                        num_kv_readers=1)

    def _result(self, future):
        return future.result(timeout=RPC_TIMEOUT)

    def _lookup(self, key) -> int:
        self._result(self.client.lookup(key, 1))
        while True:
            hit = self._result(self.client.query_prefetch_status(key.request_id))
            if hit is not None:
                return int(hit)

    def _release(self, key) -> None:
        self._result(self.client.free_lookup_locks(key, 1))
        self._result(self.client.end_session(key.request_id))

    # -- the round ---------------------------------------------------------------
    def warm(self) -> None:
        """Store as much as the whole run does, then clear L1: the timed stores reuse touched memory."""
        for k in range(self.w.rounds + 1):
            self.prepare_put(WARM_ROUND_BASE + 1 + k)
            self.put(WARM_ROUND_BASE + 1 + k)
        self.wait_visible(WARM_ROUND_BASE + 1 + self.w.rounds)  # no store still staging
        self._result(self.client.clear(True))

    def prepare_put(self, round_id: int) -> None:
        for i, layer in enumerate(self.kv.values()):
            layer[:, : self.pages].copy_(self.src_kv[i])

    def put(self, round_id: int) -> None:
        event = self.tc.create_recorded_event()
        key = self.key(round_id)
        ok = self._result(self.tc.submit_store(key.request_id, key, self.kv, [self.src_pages],
                                               event, CHUNK // PAGE))
        if not ok:
            raise RuntimeError("lmcache: store failed")

    def prepare_get(self, round_id: int) -> None:
        for layer in self.kv.values():
            layer[:, self.pages :].fill_(float("nan"))  # 0x7E00: a sentinel pattern
        self.wait_visible(round_id)

    def wait_visible(self, round_id: int) -> None:
        """Until a lookup sees all of the round's chunks (a store is acknowledged before that)."""
        deadline = time.monotonic() + VISIBLE_TIMEOUT
        while True:
            key = self.key(round_id)
            hit = self._lookup(key)
            self._release(key)
            if hit == self.w.blocks:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"lmcache: a lookup sees {hit} of {self.w.blocks} chunks")
            time.sleep(0.002)

    def get(self, round_id: int) -> None:
        key = self.key(round_id)
        hit = self._lookup(key)
        if hit != self.w.blocks:
            raise RuntimeError(f"lmcache: lookup hit {hit} of {self.w.blocks} chunks")
        event = self.tc.create_recorded_event()
        ok = self._result(self.tc.submit_retrieve(key.request_id, key, self.kv, [self.dst_pages],
                                                  event, CHUNK // PAGE))
        self._last = key
        if not ok:
            raise RuntimeError("lmcache: retrieve failed")

    def finish_get(self, round_id: int) -> None:
        self._result(self.client.end_session(self._last.request_id))
        for i, layer in enumerate(self.kv.values()):
            self.dst_kv[i].copy_(layer[:, self.pages :])

    def lookup(self, round_id: int) -> bool:
        key = self.key(round_id)
        self._looked_up = key
        return self._lookup(key) == self.w.blocks

    def after_lookup(self, round_id: int) -> None:
        self._release(self._looked_up)

    def close(self) -> None:
        try:
            if getattr(self, "registered", False):
                self.tc.flush_inflight_stores()
                fut = self.tc.unregister()
                if fut is not None:
                    fut.result(timeout=RPC_TIMEOUT)
                self.tc.close()
            if getattr(self, "client", None) is not None:
                self.client.close()
        finally:
            stop(getattr(self, "proc", None))


def make(name: str, w, bufs) -> System:
    return LMCacheSystem(w, bufs)
