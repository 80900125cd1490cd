"""kvstore through its public API: ``KVClient`` / ``Namespace`` against a ``kvstore serve`` child.

One daemon per carrier (CPU arena only, no SSD), started the way
``benchmarks.transport`` starts it (``kvstore.demo.daemon_process.DaemonProc``).
The worker's buffers are seen as canonical KV tensors ``[2, 2, T, 8, D]``
fp16 (views, no copy), a block being 256 tokens (2 MiB at D = 128).
PUT: ``ns.put(tokens, kv)``; GET: ``ns.get_into(tokens, out)`` into the kept
tensor; GET (new): ``ns.get(tokens)``, a new tensor; lookup: ``ns.lookup``
of the whole prefix (64 blocks' tokens).
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch

from benchmarks.peers.system import System
from benchmarks.peers.workload import WARM_ROUND_BASE
from kvstore.client import KVClient
from kvstore.demo.daemon_process import DaemonProc
from kvstore.layout import KVLayout

LAYERS, HEADS, BLOCK_TOKENS = 2, 8, 256
ARENA_BATCHES = 4  # the arena holds 4 rounds' blocks; warm fills it once, then LRU evicts


class KVStoreSystem(System):
    get_destination = "the worker's kept tensor (ns.get_into)"
    get_alloc_call = "ns.get(tokens): a new tensor"
    lookup_call = "ns.lookup of the 64 blocks' tokens"

    def __init__(self, carrier: str, w, bufs):
        super().__init__(w, bufs)
        self.carrier = carrier
        per_token = LAYERS * 2 * HEADS * 2  # bytes of one token per unit of head_dim
        self.head_dim = w.block_bytes // (BLOCK_TOKENS * per_token)
        if self.head_dim * BLOCK_TOKENS * per_token != w.block_bytes or self.head_dim < 1:
            raise ValueError(f"kvstore: block_bytes must be a multiple of {BLOCK_TOKENS * per_token}")
        self.tokens_per_round = w.blocks * BLOCK_TOKENS
        self.layout = KVLayout("peers-bench", LAYERS, HEADS, self.head_dim, "float16", BLOCK_TOKENS)
        shape = self.layout.kv_shape(self.tokens_per_round)
        self.kv_src = torch.from_numpy(bufs.src).view(torch.float16).view(shape)
        self.kv_dst = torch.from_numpy(bufs.dst).view(torch.float16).view(shape)
        self.daemon = self.client = None

    def start(self) -> dict:
        self.folder = tempfile.TemporaryDirectory(prefix="kvs-peers-")
        url = (f"shm://{self.folder.name}/kv.sock" if self.carrier == "shm"
               else f"{self.carrier}://127.0.0.1:0")
        arena = max(ARENA_BATCHES * self.w.nbytes, 64 << 20)
        # ucxx cannot listen on 127.0.0.1 alone: the catalog runs this worker in a private
        # network namespace (loopback only), where every interface is loopback
        env = {"KVSTORE_UCX_ANY_INTERFACE": "1"} if self.carrier == "ucx" else None
        self.daemon = DaemonProc(["--listen", url, "--cpu-bytes", str(arena), "--ssd-bytes", "0",
                                  "--log-level", "warning"], env=env)
        self.client = KVClient.connect(self.daemon.url(self.carrier), strict=True)
        self.ns = self.client.namespace(self.layout)
        return {"url": self.daemon.url(self.carrier), "arena_bytes": arena,
                "torch_threads": torch.get_num_threads()}

    def tokens(self, round_id: int) -> np.ndarray:
        n = self.tokens_per_round
        return np.arange(round_id * n, (round_id + 1) * n, dtype=np.int64) % (1 << 32)

    def warm(self) -> None:
        """Fill the arena once (and a batch more): the timed puts reuse evicted, touched slots."""
        for k in range(ARENA_BATCHES + 1):
            self.put(WARM_ROUND_BASE + 1 + k)

    def put(self, round_id: int) -> None:
        stored = self.ns.put(self.tokens(round_id), self.kv_src)
        if stored != self.tokens_per_round:
            raise RuntimeError(f"kvstore {self.carrier}: put stored {stored} of {self.tokens_per_round} tokens")

    def get(self, round_id: int) -> None:
        got = self.ns.get_into(self.tokens(round_id), self.kv_dst)
        if got != self.tokens_per_round:
            raise RuntimeError(f"kvstore {self.carrier}: get_into read {got} of {self.tokens_per_round} tokens")

    def get_alloc(self, round_id: int) -> np.ndarray:
        n, kv = self.ns.get(self.tokens(round_id))
        if n != self.tokens_per_round:
            raise RuntimeError(f"kvstore {self.carrier}: get read {n} of {self.tokens_per_round} tokens")
        return kv.contiguous().view(torch.uint8).numpy().reshape(-1)

    def lookup(self, round_id: int) -> bool:
        return self.ns.lookup(self.tokens(round_id)) == self.tokens_per_round

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.daemon is not None:
            self.daemon.terminate()
        if getattr(self, "folder", None) is not None:
            self.folder.cleanup()


def make(name: str, w, bufs) -> System:
    return KVStoreSystem(name.removeprefix("kvstore-"), w, bufs)
