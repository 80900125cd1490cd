"""``python -m benchmarks.lookup_client`` on a few calls, so that it cannot rot."""

import json

import pytest

from benchmarks import lookup_client

pytestmark = pytest.mark.unit  # in process: the "daemon" is the test's end of a socket pair


def test_lookup_client_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "lookup_client.json"
    assert lookup_client.main(["--rounds", "1", "--calls", "5", "--json", str(out)]) == 0
    rows = {r["task"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["raw send+recv (16 KiB)"]["x_raw"] == 1
    assert rows["ns.lookup"]["p50_us"] > 0 and rows["ns.lookup"]["x_raw"] > 0
    assert rows["ns.lookup_many(64)"]["p50_us"] > 0
    assert "client_us" in capsys.readouterr().out
