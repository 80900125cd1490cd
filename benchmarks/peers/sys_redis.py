"""Redis: Debian ``redis-server`` on a loopback port, redis-py with hiredis, pipelined.

PUT: one pipeline of SETs (values straight from the source's block views);
GET: one pipeline of GETs, each reply a new ``bytes`` copied into the kept
buffer (the copy is timed); lookup: one ``EXISTS`` of the 64 keys.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from benchmarks.peers.servers import free_port, port_open, stop, wait_for
from benchmarks.peers.system import NotInstalled, System
from benchmarks.peers.workload import WARM_ROUND_BASE, blocks_of


class RedisSystem(System):
    get_destination = "new bytes per block (redis-py), copied into the kept buffer (timed)"
    lookup_call = "EXISTS of the 64 keys (one command)"

    def start(self) -> dict:
        try:
            import redis
            from redis.utils import HIREDIS_AVAILABLE
        except ImportError as exc:
            raise NotInstalled(f"redis-py: {exc}") from exc
        binary = shutil.which("redis-server")
        if binary is None:
            raise NotInstalled("redis-server (Debian package redis-server)")
        self.proc = None
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
             "--loglevel", "warning"], stdout=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), self.proc, "redis-server", 30)
        self.r = redis.Redis(host="127.0.0.1", port=self.port)
        version = self.r.info("server")["redis_version"]
        return {"redis_server": version, "redis_py": redis.__version__,
                "hiredis": bool(HIREDIS_AVAILABLE)}

    def keys(self, round_id: int) -> list[str]:
        return [f"peers:{round_id}:{i}" for i in range(self.w.blocks)]

    def warm(self) -> None:
        """Fill as much as the whole run stores, then free it: the timed SETs reuse that memory."""
        for k in range(self.w.rounds + 1):
            self.put(WARM_ROUND_BASE + 1 + k)
        self.r.flushall()

    def put(self, round_id: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        for key, block in zip(self.keys(round_id), blocks_of(self.bufs.src, self.w.block_bytes)):
            pipe.set(key, memoryview(block))
        pipe.execute()

    def get(self, round_id: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        for key in self.keys(round_id):
            pipe.get(key)
        values = pipe.execute()
        for dst, value in zip(blocks_of(self.bufs.dst, self.w.block_bytes), values):
            if value is None:
                raise RuntimeError("redis: a stored block is missing")
            np.copyto(dst, np.frombuffer(value, dtype=np.uint8))

    def lookup(self, round_id: int) -> bool:
        return self.r.exists(*self.keys(round_id)) == self.w.blocks

    def close(self) -> None:
        stop(getattr(self, "proc", None))


def make(name: str, w, bufs) -> System:
    return RedisSystem(w, bufs)
