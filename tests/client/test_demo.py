"""``make demo`` (and ``ENGINE=vllm``) end to end on a short prompt: table, stats, daemon stopped."""

import importlib.util

import pytest

pytest.importorskip("transformers")

from kvstore.demo import local_setup as demo_setup  # noqa: E402
from kvstore.demo import main as demo  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def short_demo(local_model_dir, monkeypatch):
    monkeypatch.setattr(demo_setup, "local_model_dir", lambda: local_model_dir)
    return ["--tokens", "512", "--carriers", "shm,tcp"]


def _check(out: str, engine: str) -> None:
    assert f"TTFT through {engine}" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("shm ", "tcp "))]
    assert [r[0] for r in rows] == ["shm", "tcp"]
    for r in rows:  # carrier codec prompt miss hit speedup reused stored diff same
        assert r[6] == "512" and r[7] == "512" and r[9] == "True"  # A stored, B reused it
    assert "daemon stats (admin gRPC API)" in out and "kvstore-demo-llama" in out
    assert "daemon stopped (exit code 0)" in out


def test_demo_through_transformers(short_demo, capsys):
    assert demo.main(short_demo) == 0
    _check(capsys.readouterr().out, "transformers")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_demo_through_vllm(short_demo, capsys):
    assert demo.main([*short_demo, "--engine", "vllm"]) == 0
    _check(capsys.readouterr().out, "vLLM")
