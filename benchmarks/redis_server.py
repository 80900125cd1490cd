"""A private ``redis-server`` on a loopback port, for the benchmarks' Redis baselines.

Started with persistence off (``--save '' --appendonly no``) so it measures
memory speed, like the store's CPU tier; stopped by ``close``.
"""

from __future__ import annotations

import shutil
import subprocess
import time

from kvstore.demo.daemon_process import free_port


class RedisServer:
    def __init__(self, timeout: float = 10.0):
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/install_system.sh)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.close()
                        raise
                    time.sleep(0.05)
        finally:
            probe.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
