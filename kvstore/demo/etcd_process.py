"""A throwaway etcd server on loopback, for the cluster tests and ``benchmarks.cluster``.

Debian's ``etcd-server`` (3.4) is installed by ``scripts/install_system.sh``.
The server listens on 127.0.0.1 only (client and peer ports both free ports),
keeps its data in a temporary folder, and can be stopped and started again
on the same ports and data (the "etcd lost, then back" tests).

``host``/``wrap`` run it elsewhere: ``EtcdProc(host="10.77.0.1", wrap=["ip",
"netns", "exec", "h0"], client_port=2379)`` serves on a network namespace's
own address (tests/cluster/netns.py); the readiness probe then runs as a
short Python child in the same namespace.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time

from kvstore.cluster.etcd import EtcdSession, EtcdUnavailable
from kvstore.demo.daemon_process import free_port


def etcd_binary() -> str | None:
    return shutil.which("etcd")


class EtcdProc:
    def __init__(self, data_dir: str | None = None, client_port: int | None = None, *,
                 host: str = "127.0.0.1", wrap: list[str] | None = None,
                 peer_port: int | None = None):
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (Debian package etcd-server: "
                               "scripts/install_system.sh)")
        self.binary = binary
        self._tmp = None if data_dir else tempfile.mkdtemp(prefix="kvstore-etcd-")
        self.data_dir = data_dir or self._tmp
        self.host, self.wrap = host, list(wrap or [])
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def url(self, cluster: str) -> str:
        return f"etcd://{self.host}:{self.client_port}/{cluster}"

    def _answers(self) -> bool:
        if not self.wrap:
            try:
                EtcdSession(self.endpoint, timeout=1.0).get_prefix("/")
                return True
            except EtcdUnavailable:
                return False
        probe = ("import sys; from kvstore.cluster.etcd import EtcdSession; "
                 f"EtcdSession({self.endpoint!r}, timeout=1.0).get_prefix('/')")
        return subprocess.run([*self.wrap, sys.executable, "-c", probe], capture_output=True,
                              timeout=30).returncode == 0

    def start(self, timeout: float = 30.0) -> None:
        client = f"http://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        self.proc = subprocess.Popen(
            [*self.wrap, self.binary, "--name", "kvstore-test", "--data-dir", self.data_dir,
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"kvstore-test={peer}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}")
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EtcdProc:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
