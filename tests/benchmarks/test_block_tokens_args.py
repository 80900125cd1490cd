"""``benchmarks.ttft --block-tokens`` (a list) and ``benchmarks.reuse_agreement``'s counting."""

from __future__ import annotations

import pytest

from benchmarks import reuse_agreement, ttft
from benchmarks.ttft_report import markdown
from benchmarks.ttft_rows import TTFTRow


def test_block_tokens_takes_a_list_checked_against_vllms_block():
    args = ttft.parse_args(["--engine", "vllm", "--block-tokens", "32,64,256", "--tokens", "992"])
    assert args.block_list == [32, 64, 256] and args.sizes == [992]
    assert ttft.parse_args([]).block_list == [256]


@pytest.mark.parametrize("argv", [
    ["--engine", "vllm", "--block-tokens", "16"],  # the CPU build's vLLM block is 32
    ["--engine", "vllm", "--block-tokens", "0"],
    ["--engine", "vllm", "--block-tokens", "64", "--tokens", "1000"],  # not whole vLLM blocks
    ["--engine", "hf", "--block-tokens", "64,256", "--tokens", "992"],  # hf: whole store blocks
])
def test_bad_block_tokens_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        ttft.parse_args(argv)
    assert "block" in capsys.readouterr().err


def test_markdown_names_the_store_block_and_the_tokens_reused():
    row = TTFTRow(engine="vllm", prompt_tokens=993, carrier="shm", codec="none", ttft_miss_s=2.0,
                  ttft_hit_s=0.5, speedup=4.0, max_logprob_diff=0.0, top1_agree=1.0,
                  tokens_reused=768, ttft_hit_median_s=0.5, block_tokens=256)
    line = markdown([row]).splitlines()[2]
    assert line.startswith("| vLLM | 256 | 993 | 768 | shm | none |")


def test_agreement_counts_identical_answers_and_first_divergences():
    results = {"bfloat16": {
        "recompute": {"answers": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "reused": [0, 0, 0]},
        "kvstore": {"answers": [[1, 2, 3], [4, 0, 6], [7, 8, 9]], "reused": [256, 256, 256]},
        "vllm_prefix_cache": {"answers": [[0, 2, 3], [4, 5, 6], [7, 8, 9]],
                              "reused": [224, 224, 224]},
    }}
    summary = reuse_agreement.compare(results)
    assert summary["bfloat16/kvstore"]["identical"] == 2
    assert summary["bfloat16/kvstore"]["first_divergence"] == [1]
    assert summary["bfloat16/vllm_prefix_cache"]["first_divergence"] == [0]
    assert summary["bfloat16/vllm_prefix_cache"]["min_tokens_reused"] == 224
