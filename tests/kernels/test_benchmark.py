"""Smoke test of ``python -m benchmarks.kernels`` on a tiny configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_benchmark_writes_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("benchmarks.kernels", None)
    from benchmarks import kernels as bench

    out = tmp_path / "kernels.json"
    bench.main(["--device", "cpu", "--layers", "1", "--blocks", "1", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "kernels" and "torch" in doc["machine"]
    ops = {(r["op"], r["codec"]) for r in doc["rows"]}
    assert ("copy", "-") in ops and ("pack", "fp8_e4m3") in ops and ("unpack", "int4") in ops
    for r in doc["rows"]:
        assert set(r) >= {"name", "op", "codec", "block_bytes", "gbps", "baseline", "ratio"}
        assert r["gbps"] > 0 and abs(r["ratio"] - r["gbps"] / r["baseline"]) < 1e-9
    assert "pack/int8" in capsys.readouterr().out
