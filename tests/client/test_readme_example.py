"""The README's client example runs as written against a ``kvstore serve`` with defaults.

The example is cut out of README.md (the first python block after "An engine
embeds the client"), so the README cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.daemon.config import DaemonConfig
from kvstore.default_listen import DEFAULT_TCP_URL, default_listen, default_shm_url

ROOT = Path(__file__).resolve().parents[2]


def client_example() -> str:
    text = (ROOT / "README.md").read_text()
    after = text[text.index("An engine embeds the client"):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_a_plain_serve_listens_where_the_example_connects(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    config = DaemonConfig(cpu_bytes="64MiB", ssd_bytes=0)
    assert config.listen == default_listen() == [default_shm_url(), DEFAULT_TCP_URL]
    assert default_shm_url() == f"shm://{tmp_path}/kvstore/kvstore.sock"
    assert "KVClient.connect(default_shm_url())" in client_example()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.integration
def test_the_readme_client_example_runs_against_a_default_daemon(tmp_path, monkeypatch):
    from kvstore.demo.daemon_process import DaemonProc

    if not _port_free(7801):
        pytest.skip("tcp 7801 (a default daemon's port) is taken on this machine")
    runtime = tmp_path / "run"
    runtime.mkdir()
    for key in [k for k in os.environ if k.startswith("KVSTORE_")]:
        monkeypatch.delenv(key)  # nothing from the caller's environment changes the defaults
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no kvstore.toml either
    # defaults but a small arena, no SSD tier (and admin/metrics on free ports: DaemonProc)
    daemon = DaemonProc([], env={"XDG_RUNTIME_DIR": str(runtime),
                                 "XDG_CACHE_HOME": str(tmp_path / "cache"),
                                 "KVSTORE_CPU_BYTES": "256MiB", "KVSTORE_SSD_BYTES": "0"})
    try:
        assert daemon.url("shm") == f"shm://{runtime}/kvstore/kvstore.sock"
        child_env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
        result = subprocess.run([sys.executable, "-c", client_example()], capture_output=True,
                                text=True, timeout=300, env=child_env, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "512 tokens cached and loaded"
        assert "no daemon has answered" not in result.stderr
    finally:
        daemon.terminate()
