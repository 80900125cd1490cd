"""``python -m benchmarks.hf_copies`` on a small cache, so that it cannot rot."""

import json

import pytest

from benchmarks import hf_copies

pytestmark = pytest.mark.integration


def test_hf_copies_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "hf.json"
    argv = ["--rounds", "1", "--tokens", "512", "--layers", "2", "--block-tokens", "128",
            "--json", str(out)]
    assert hf_copies.main(argv) == 0
    rows = {r["task"]: r for r in json.loads(out.read_text())["rows"]}
    for carrier in ("embedded", "shm", "tcp"):
        for op in ("store", "restore"):
            assert rows[f"{carrier} {op}"]["GB_s"] > 0
    assert rows["tcp restore"]["baseline"] == "raw socket get"
    assert rows["shm store"]["baseline"] == "memcpy"
    assert "HFPrefixCache" in capsys.readouterr().out
