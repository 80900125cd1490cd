"""benchmarks.ucx_idle on tiny inputs (one short round), so that it cannot rot."""

import importlib.util
import json

import pytest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(importlib.util.find_spec("ucxx") is None,
                                 reason="ucxx is not installed")]


def test_ucx_idle_one_short_round(tmp_path, capsys):
    from benchmarks import ucx_idle

    out = tmp_path / "ucx_idle.json"
    assert ucx_idle.main(["--rounds", "1", "--window", "0.2", "--lookups", "5",
                          "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "ucx_idle"
    rows = {r["daemon"]: r for r in doc["rows"]}
    assert set(rows) == {"tcp", "ucx"}
    assert rows["tcp"]["lookup_vs_tcp"] == 1 and rows["tcp"]["alookup_vs_tcp"] == 1
    for r in rows.values():
        assert r["lookup_p50_us"] > 0 and r["alookup_p50_us"] > 0 and r["idle_cpu_share"] >= 0
    assert "ucx idle:" in capsys.readouterr().out
