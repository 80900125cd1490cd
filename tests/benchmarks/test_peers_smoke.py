"""benchmarks.peers on tiny inputs with the peers this machine has, so that it cannot rot.

One round of 4 blocks of 64 KiB through every system: memcpy and kvstore
(shm, tcp; ucx where a private network namespace can be made) must run; Redis must too when ``redis-server`` and redis-py
are here; LMCache and Mooncake run when ``.venv-peers`` holds them (``make
bench-peers``) and are otherwise reported "not installed". No system may
fail, and every one that ran checked its GET byte for byte.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.peers.workers import netns_missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_peers_runner_one_small_round(tmp_path):
    out = tmp_path / "peers"
    cmd = [sys.executable, "-m", "benchmarks.peers", "--blocks", "4", "--block-bytes", "64KiB",
           "--rounds", "1", "--lookup-calls", "3", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "peers.json").read_text())
    rows = {r["system"]: r for r in doc["rows"]}
    assert set(rows) == {"memcpy", "kvstore-shm", "kvstore-tcp", "kvstore-ucx", "lmcache",
                         "mooncake", "redis"}
    must = ["memcpy", "kvstore-shm", "kvstore-tcp"]
    if netns_missing() is None:  # ucx runs in a private network namespace (root)
        must.append("kvstore-ucx")
    if shutil.which("redis-server") and importlib.util.find_spec("redis"):
        must.append("redis")
    for name, row in rows.items():
        assert row["status"] in ("ok", "not installed"), (name, row["reason"])
        if name in must:
            assert row["status"] == "ok", (name, row["reason"])
        if row["status"] == "ok":
            assert row["rounds_checked"] == 1 and all(r["bytes_ok"] for r in row["rounds"])
            assert row["put_gbps"] > 0 and row["get_gbps"] > 0
            assert row["get_destination"]
            if name != "memcpy":
                assert row["lookup_ms"] > 0 and all(r["lookup_ok"] for r in row["rounds"])
    assert rows["kvstore-shm"]["put_vs_memcpy"] > 0
    assert (out / "peers.md").read_text().count("\n| ") == len(rows) + 1  # header + a row each
    assert "results: " in proc.stdout
