import json

import pytest

from benchmarks import store as bench

pytestmark = pytest.mark.integration


def test_store_benchmark_writes_rows(tmp_path):
    out = tmp_path / "store.json"
    rows = bench.main(["--sizes", "256KiB", "--total", "2MiB", "--repeat", "1", "--no-ssd",
                       "--json", str(out)])
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "store" and len(doc["rows"]) == len(rows) == 5
    for row in doc["rows"]:
        assert set(row) == {"name", "op", "block_bytes", "gbps", "baseline", "ratio"}
        assert row["gbps"] > 0 and row["ratio"] > 0
