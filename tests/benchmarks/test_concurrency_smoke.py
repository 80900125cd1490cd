"""``benchmarks.concurrency`` with one client for about a second per point, so that it cannot rot."""

import json
import shutil
import subprocess
import sys

import pytest

from kvstore.demo.daemon_process import ROOT

pytestmark = pytest.mark.integration


def test_concurrency_one_client(tmp_path):
    systems = ["shm", "tcp"] + (["redis"] if shutil.which("redis-server") else [])
    out = tmp_path / "conc"
    cmd = [sys.executable, "-m", "benchmarks.concurrency", "--seconds", "1", "--clients", "1",
           "--systems", ",".join(systems), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert str(out) in proc.stdout
    doc = json.loads((out / "concurrency.json").read_text())
    rows = doc["rows"]
    assert [r["system"] for r in rows] == systems and all(r["clients"] == 1 for r in rows)
    for r in rows:
        assert r["errors"] == [] and r["bad_bytes"] == 0
        assert r["ops_per_s"] > 0 and r["lookups_per_s"] > 0
        assert r["lookup_misses"] == 0 and r["get_misses"] == 0  # preloaded keys, nothing evicted
        assert r["server_cpu"] >= 0
    if "redis" in systems:
        assert all("ops_per_s_vs_redis" in r for r in rows if r["system"] != "redis")
    table = (out / "concurrency.md").read_text()
    assert "| shm | 1 |" in table and "| tcp | 1 |" in table
