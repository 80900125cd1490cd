"""``kvstore serve`` as a child process, for benchmarks, the soak and the process tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (kvstore/demo/ is two down)


def free_port() -> int:
    """A port free on every interface (a ucx listener binds them all)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class DaemonProc:
    """``python -m kvstore serve ...`` with its stderr collected; ``urls`` once ready."""

    def __init__(self, args: list[str], env: dict | None = None, timeout: float = 60.0,
                 wrap: list[str] | None = None):
        """``wrap``: a command prefix, e.g. ``["ip", "netns", "exec", "h1"]`` (it execs)."""
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        # admin API and metrics on free ports: daemons side by side must not clash on 7803/7804
        full_env.setdefault("KVSTORE_ADMIN", "127.0.0.1:0")
        full_env.setdefault("KVSTORE_METRICS", "127.0.0.1:0")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [*(wrap or []), sys.executable, "-m", "kvstore", "serve", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=full_env, cwd=ROOT,
        )
        self.lines: list[str] = []
        self.urls: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self.urls:
            self.kill()
            raise RuntimeError("daemon did not get ready:\n" + "".join(self.lines[-30:]))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if "kvstore ready:" in line and not self.urls:
                rest = line.split("kvstore ready:", 1)[1].split("(")[0]
                self.urls = rest.split()
                self._ready.set()
        self._ready.set()

    def url(self, scheme: str) -> str:
        return next(u for u in self.urls if u.startswith(scheme + "://"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._reader.join(5)

    def rss(self) -> dict:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "RssAnon", "RssShmem", "RssFile")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0]) * 1024
        return out


def daemon_args(folder: str, carriers=("shm", "tcp"), *extra: str) -> list[str]:
    args = []
    for carrier in carriers:
        if carrier == "shm":
            args += ["--listen", f"shm://{folder}/kv.sock"]
        else:
            args += ["--listen", f"{carrier}://127.0.0.1:0"]  # the ready line has the port
    return args + ["--cpu-bytes", "64MiB", "--ssd-bytes", "0", *extra]
