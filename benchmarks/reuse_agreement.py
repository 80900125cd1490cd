"""How often is a reused prefix's answer identical to a recompute's? kvstore vs vLLM's own cache.

    python -m benchmarks.reuse_agreement [--prompts 20] [--dtypes bfloat16,float32]
        [--doc-tokens 3900] [--max-tokens 32] [--block-tokens 64] [--json PATH]

The trained model (SmolLM2-135M-Instruct, ``kvstore.demo.trained_model``) is
asked ``--prompts`` different questions about the demo's document (CPython's
LICENSE.txt, cut to its first ``--doc-tokens`` tokens; ``kvstore.demo``)
through vLLM (CPU build), greedy, ``--max-tokens`` tokens each, all
questions in one batch (as a server would have them), per dtype:

* **recompute**: every prompt prefilled whole, no cache of any kind: the reference;
* **kvstore**: one warm-up request stores the document's blocks through the
  connector (a daemon on loopback, shm), then each question loads them and
  computes only its own tokens (vLLM's prefix cache off);
* **vllm prefix cache**: no connector; vLLM's own prefix caching on, one
  warm-up request, then each question reuses vLLM's cached blocks.

Per mode it counts the answers whose tokens are all identical to the
recompute's, and where the others first differ. Why they may differ: a
reused prefix's KV was computed in a different split of the work (another
batch shape, chunk, or a prefill without the question), and bf16 attention
and matmuls over a different split round differently: the same math, not the
same bits, and greedy decoding follows the first flipped argmax. In float32
the rounding differences are far below the logit gaps, so the answers agree.
Each engine runs in a child process (``python -m benchmarks.reuse_agreement
--child``): vLLM's CPU worker binds threads for its whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = [
    "Who created Python, and where?",
    "Which organization holds the intellectual property of Python?",
    "In which year did Guido van Rossum create Python?",
    "What is CNRI?",
    "Where did the Python core development team move in 2000?",
    "What is BeOpen.com?",
    "What does PSF stand for?",
    "Is Python open source?",
    "Which Python releases are GPL-compatible?",
    "What is Zope Corporation?",
    "Who is the principal author of Python?",
    "What is the name of the language that preceded Python?",
    "What does the license allow me to do with Python?",
    "Summarize the history of Python in one sentence.",
    "What is the Python Software Foundation?",
    "What does GPL-compatible mean here?",
    "Which organization was formed in 2001?",
    "Where is CWI located?",
    "What is the Open Source Definition?",
    "Which company did the PythonLabs team join?",
    "Who funded the development of Python 1.6?",
    "What warranty does the license give?",
    "What must be included in derivative works?",
    "Can the Python trademark be used freely?",
]
WARM_UP = "Answer in one word: is this a license?"
MODES = ("recompute", "kvstore", "vllm_prefix_cache")


def prompts(tokenizer, doc_tokens: int, n: int) -> tuple[list[int], list[list[int]]]:
    """(warm-up prompt, ``n`` question prompts), all over the same document cut."""
    from kvstore.demo.chat import chat_prompt
    from kvstore.demo.document import demo_document

    doc = demo_document()
    ids = tokenizer(doc.text)["input_ids"][:doc_tokens]
    text = tokenizer.decode(ids)
    return (chat_prompt(tokenizer, text, WARM_UP),
            [chat_prompt(tokenizer, text, q) for q in QUESTIONS[:n]])


def child(args) -> dict:
    """One mode in this process: the answers (token ids) to every question, and timings."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from kvstore.client.vllm_engine import ENV

    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    warm, questions = prompts(tokenizer, args.doc_tokens, args.prompts)
    max_len = -(-(max(map(len, questions)) + args.max_tokens + 32) // 32) * 32
    common = dict(model=args.model_dir, block_size=32, max_model_len=max_len, dtype=args.dtype,
                  enforce_eager=True, seed=0)
    if args.mode == "vllm_prefix_cache":
        llm = LLM(enable_prefix_caching=True, **common)
    else:
        from vllm.config import KVTransferConfig

        transfer = KVTransferConfig(
            kv_connector="KVStoreConnector", kv_connector_module_path="kvstore.client.vllm_connector",
            kv_role="kv_both", kv_load_failure_policy="recompute",
            kv_connector_extra_config={"url": args.url, "block_tokens": args.block_tokens,
                                       "model_id": f"agreement-{args.dtype}"})
        llm = LLM(enable_prefix_caching=False, kv_transfer_config=transfer, **common)
    load = args.mode == "kvstore"

    def ask(batch: list[list[int]], store: bool = False):
        """One ``generate`` over ``batch`` (served together, as a server would)."""
        extra = {"kv_transfer_params": {"kvstore": {"load": load, "save": store}}}
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True,
                                extra_args=extra)
        outs = llm.generate([{"prompt_token_ids": ids} for ids in batch], params, use_tqdm=False)
        return ([list(o.outputs[0].token_ids) for o in outs],
                [int(o.num_cached_tokens or 0) for o in outs])

    if args.mode != "recompute":
        ask([warm], store=True)  # kvstore: stores the document; vLLM: fills its prefix cache
    t0 = time.perf_counter()
    answers, reused = ask(questions)
    print(f"[{args.dtype} {args.mode}] {len(answers)} answers in {time.perf_counter() - t0:.1f}s,"
          f" tokens reused {min(reused)}-{max(reused)}", file=sys.stderr, flush=True)
    return {"answers": answers, "reused": reused, "seconds": time.perf_counter() - t0,
            "prompt_tokens": [len(q) for q in questions]}


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def compare(results: dict) -> dict:
    """Per dtype and reuse mode: answers identical to the recompute's, first divergences."""
    summary = {}
    for dtype, modes in results.items():
        ref = modes["recompute"]["answers"]
        for mode in MODES[1:]:
            got = modes[mode]
            div = [first_divergence(a, r) for a, r in zip(got["answers"], ref)]
            summary[f"{dtype}/{mode}"] = {
                "identical": sum(d is None for d in div), "prompts": len(div),
                "first_divergence": [d for d in div if d is not None],
                "min_tokens_reused": min(got["reused"]),
            }
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--doc-tokens", type=int, default=3900,
                        help="the document's first N tokens (the whole LICENSE.txt: ~3,800)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--block-tokens", type=int, default=64)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.prompts <= len(QUESTIONS):
        parser.error(f"--prompts takes 1 to {len(QUESTIONS)}")
    if args.child:
        Path(args.out).write_text(json.dumps(child(args)))
        return {}

    from kvstore.demo.local_setup import LocalDaemon
    from kvstore.demo.trained_model import trained_model_dir

    model_dir = str(trained_model_dir())
    load_before = os.getloadavg()
    results: dict = {}
    with LocalDaemon(("shm",), cpu_bytes="1GiB") as daemon, \
            tempfile.TemporaryDirectory(prefix="kvstore-agree-") as tmp:
        for dtype in args.dtypes.split(","):
            results[dtype] = {}
            for mode in MODES:
                out = Path(tmp) / f"{dtype}-{mode}.json"
                cmd = [sys.executable, "-m", "benchmarks.reuse_agreement", "--child",
                       "--mode", mode, "--dtype", dtype, "--url", daemon.urls["shm"],
                       "--model-dir", model_dir, "--out", str(out),
                       "--prompts", str(args.prompts), "--doc-tokens", str(args.doc_tokens),
                       "--max-tokens", str(args.max_tokens),
                       "--block-tokens", str(args.block_tokens)]
                subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
                results[dtype][mode] = json.loads(out.read_text())
    summary = compare(results)
    print(f"\nreused answers identical to a recompute (SmolLM2-135M-Instruct, vLLM CPU, "
          f"{args.prompts} questions, {args.max_tokens} greedy tokens, prompts "
          f"{min(results[next(iter(results))]['recompute']['prompt_tokens'])}+ tokens)")
    for key, row in summary.items():
        div = row["first_divergence"]
        where = f", first divergence at token {sorted(div)}" if div else ""
        print(f"  {key:28s} {row['identical']:2d}/{row['prompts']} identical "
              f"(>= {row['min_tokens_reused']} tokens reused){where}")
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    doc = {"args": {k: v for k, v in vars(args).items() if k in
                    ("prompts", "dtypes", "doc_tokens", "max_tokens", "block_tokens")},
           "summary": summary, "results": results, "load_avg_before": load_before,
           "load_avg_after": os.getloadavg()}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
