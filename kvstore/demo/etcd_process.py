"""A throwaway etcd server on loopback, for the cluster tests and ``benchmarks.cluster``.

Debian's ``etcd-server`` (3.4) is installed by ``scripts/install_system.sh``.
The server listens on 127.0.0.1 only (client and peer ports both free ports),
keeps its data in a temporary folder, and can be stopped and started again
on the same ports and data (the "etcd lost, then back" tests).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

from kvstore.cluster.etcd import EtcdSession, EtcdUnavailable
from kvstore.demo.daemon_process import free_port


def etcd_binary() -> str | None:
    return shutil.which("etcd")


class EtcdProc:
    def __init__(self, data_dir: str | None = None, client_port: int | None = None):
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (Debian package etcd-server: "
                               "scripts/install_system.sh)")
        self.binary = binary
        self._tmp = None if data_dir else tempfile.mkdtemp(prefix="kvstore-etcd-")
        self.data_dir = data_dir or self._tmp
        self.client_port, self.peer_port = client_port or free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def url(self, cluster: str) -> str:
        return f"etcd://127.0.0.1:{self.client_port}/{cluster}"

    def start(self, timeout: float = 30.0) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = subprocess.Popen(
            [self.binary, "--name", "kvstore-test", "--data-dir", self.data_dir,
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"kvstore-test={peer}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        session = EtcdSession(self.endpoint, timeout=1.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}")
            try:
                session.get_prefix("/")
                return
            except EtcdUnavailable:
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
