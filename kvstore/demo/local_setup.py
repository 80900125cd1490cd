"""What the demo and the TTFT benchmark share: model folder, prompt text, a loopback daemon.

* ``local_model_dir()``: the local Llama-style model (``kvstore.demo.local_model``),
  built once under the user's cache folder;
* ``corpus_tokens(tokenizer, n)``: ``n`` tokens of real text (the standard
  library's sources) as a long shared prefix;
* ``LocalDaemon``: ``kvstore serve`` as a child process on loopback, with an
  shm and/or tcp listener, the admin gRPC API and metrics on free ports, its
  SSD tier (if any) in a temporary folder; stopped with SIGTERM (it drains
  and flushes) on ``stop()`` or at the end of a ``with`` block.
"""

from __future__ import annotations

import os
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kvstore.demo.daemon_process import DaemonProc, free_port

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvstore"
CORPUS = ("argparse.py", "typing.py", "inspect.py", "pathlib.py", "os.py", "subprocess.py")


def local_model_dir() -> Path:
    """The local model's folder (built on first use: about 15 s, no download)."""
    from kvstore.demo.local_model import build_local_model

    return build_local_model(CACHE / "local-model")


def corpus_tokens(tokenizer, n: int) -> list[int]:
    """``n`` tokens of real text (standard library sources) as the shared prefix."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    ids: list[int] = []
    for name in CORPUS:
        path = stdlib / name
        if path.exists():
            ids += tokenizer(path.read_text(encoding="utf-8", errors="ignore"))["input_ids"]
        if len(ids) >= n:
            break
    if len(ids) < n:
        raise RuntimeError(f"only {len(ids)} tokens of corpus text")
    return ids[:n]


@dataclass
class LocalDaemon:
    """A ``kvstore serve`` on loopback; ``urls`` maps carrier name to its client URL."""

    carriers: tuple[str, ...] = ("shm", "tcp")
    cpu_bytes: str = "1GiB"
    ssd_bytes: str = "0"
    extra_args: tuple[str, ...] = ()  # more ``kvstore serve`` options
    urls: dict[str, str] = field(default_factory=dict)
    admin: str = ""
    proc: DaemonProc | None = None

    def start(self) -> LocalDaemon:
        self._tmp = tempfile.TemporaryDirectory(prefix="kvstore-local-")
        tmp = self._tmp.name
        listen = {"shm": f"shm://{tmp}/kv.sock", "tcp": f"tcp://127.0.0.1:{free_port()}"}
        unknown = set(self.carriers) - set(listen)
        if unknown:
            raise ValueError(f"unknown carriers {sorted(unknown)}; known: shm, tcp")
        self.urls = {c: listen[c] for c in self.carriers}
        self.admin = f"127.0.0.1:{free_port()}"
        args = [a for c in self.carriers for a in ("--listen", listen[c])]
        args += ["--admin", self.admin, "--metrics", f"127.0.0.1:{free_port()}",
                 "--cpu-bytes", self.cpu_bytes, "--ssd-dir", f"{tmp}/ssd",
                 "--ssd-bytes", self.ssd_bytes, *self.extra_args]
        try:
            self.proc = DaemonProc(args)
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def stop(self) -> int:
        """SIGTERM (drain, flush) and wait; the daemon's exit code."""
        rc = self.proc.terminate() if self.proc is not None else 0
        self.proc = None
        self._tmp.cleanup()
        return rc

    def __enter__(self) -> LocalDaemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.stop()
