"""``python -m benchmarks.lookup`` on a few calls, so that it cannot rot."""

import json

import pytest

from benchmarks import lookup

pytestmark = pytest.mark.integration


def test_lookup_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "lookup.json"
    assert lookup.main(["--rounds", "1", "--calls", "5", "--json", str(out)]) == 0
    rows = {r["task"]: r for r in json.loads(out.read_text())["rows"]}
    for carrier in ("shm", "tcp"):
        assert rows[f"{carrier} ns.lookup"]["p50_us"] > 0
        assert rows[f"{carrier} ns.lookup_many(64)"]["x_one_lookup"] > 0
        assert rows[f"{carrier} ns.lookup_many(64) new prompts"]["x_raw_same_bytes"] > 0
    assert min(r["x_raw_rtt"] for name, r in rows.items()
               if name.startswith("raw round trip") and "1048576" not in name) == 1
    assert "lookup_many" in capsys.readouterr().out


def test_lookup_cpu_benchmark_smoke(tmp_path, capsys):
    from benchmarks import lookup_cpu

    out = tmp_path / "lookup_cpu.json"
    assert lookup_cpu.main(["--rounds", "1", "--calls", "5", "--json", str(out)]) == 0
    rows = {r["task"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows[lookup_cpu.RAW]["cpu_x_raw"] == 1
    for carrier in ("shm", "tcp"):
        assert rows[f"{carrier} ns.lookup"]["wall_p50_us"] > 0
    assert "client's CPU" in capsys.readouterr().out
