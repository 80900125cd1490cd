"""Both benchmarks on tiny inputs, so that they cannot rot."""

import json
from pathlib import Path

import pytest

from benchmarks import hit_rate, prefix_match

pytestmark = pytest.mark.integration

TRACE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mooncake_conversation_trace.jsonl"


@pytest.fixture
def trace(tmp_path) -> Path:
    """The real conversation trace when this checkout sits beside it, else a small made-up one."""
    if TRACE.exists():
        return TRACE
    path, next_id = tmp_path / "trace.jsonl", 1
    convs: list[list[int]] = []
    with path.open("w") as f:
        for i in range(300):
            if convs and i % 3:
                conv = convs[(i * 7) % len(convs)]  # a conversation comes back, longer
            else:
                conv = [0]
                convs.append(conv)
            conv.extend(range(next_id, next_id + 3))
            next_id += 3
            f.write(json.dumps({"timestamp": i, "hash_ids": conv + [next_id]}) + "\n")
            next_id += 1
    return path


def test_hit_rate_on_300_requests(trace, tmp_path, capsys):
    out, png = tmp_path / "hit.json", tmp_path / "hit.png"
    argv = ["--trace", str(trace), "--limit", "300", "--fractions", "0.05,0.2"]
    rows = hit_rate.main([*argv, "--json", str(out), "--plot", str(png), "--no-progress"])
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "hit_rate" and doc["requests"] == 300
    policies = hit_rate.default_policies()
    assert {r["policy"] for r in doc["rows"]} == set(policies) and len(doc["rows"]) == 2 * len(policies)
    assert all(set(r) == {"policy", "fraction", "capacity_blocks", "hit_rate"} for r in doc["rows"])
    assert all(0 <= r["hit_rate"] <= doc["inf"] for r in rows)
    by = {(r["policy"], r["fraction"]): r["hit_rate"] for r in rows}
    for f in (0.05, 0.2):
        assert by[("opt", f)] >= by[("lru", f)]
    assert by[("opt", 0.2)] >= by[("opt", 0.05)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "opt" in capsys.readouterr().out


def test_prefix_match_small(tmp_path):
    out = tmp_path / "pm.json"
    argv = ["--tokens", "4096", "--block-tokens", "16,256", "--turns", "4", "--others", "2"]
    rows = prefix_match.main([*argv, "--repeat", "2", "--json", str(out)])
    assert [r["block_tokens"] for r in rows] == [16, 256]
    assert all(r["path_nodes"] == 4 and r["ratio"] > 0 and r["hash_ms"] > 0 for r in rows)
    assert json.loads(out.read_text())["benchmark"] == "prefix_match"


def test_cluster_benchmark_on_a_small_trace(trace, tmp_path):
    from benchmarks import cluster
    from kvstore.demo.etcd_process import etcd_binary

    if etcd_binary() is None:
        pytest.skip("etcd not installed (scripts/install_system.sh)")
    out = tmp_path / "cluster.json"
    rows = cluster.main(["--trace", str(trace), "--requests", "120", "--nodes", "1,2",
                         "--seconds", "0.3", "--threads", "2", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "cluster" and len(doc["rows"]) == 3
    steady = {r["nodes"]: r for r in rows if r["scenario"] == "steady"}
    loss = next(r for r in rows if r["scenario"] == "node loss")
    assert set(steady) == {1, 2} and loss["nodes"] == 2
    for r in rows:
        assert r["errors"] == 0  # a killed node makes misses, never errors
        assert 0 <= r["hit_rate"] <= r["hit_rate_ceiling"] + 1e-9
    for r in steady.values():
        assert r["get_per_s"] > 0 and r["direct_get_per_s"] > 0 and r["ratio"] > 0
    assert steady[2]["balance"] >= 1.0
