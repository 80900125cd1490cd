"""The end-to-end demo behind ``make demo`` (transformers) and ``make demo ENGINE=vllm``.

1. builds (once) a local Llama-style model and tokenizer: no download;
2. starts ``kvstore serve`` on loopback (shm + tcp, admin API, SSD tier in a
   temporary folder);
3. for each carrier: request A with a long shared prefix misses and stores its
   KV; request B (same prefix, another question) hits and loads it; B is also
   recomputed without the store, as the reference for TTFT and logprobs
   (``kvstore.demo.runs``). Through transformers (``HFEngine``) or through
   vLLM with ``KVStoreConnector`` (``kv_role="kv_both"``, vLLM's own prefix
   cache off, so B's prefix can only come from the daemon);
4. prints TTFT miss vs hit, speedup, tokens reused and the largest logprob
   difference, then the daemon's stats read through the admin gRPC API;
5. stops the daemon (SIGTERM: it drains and flushes).

    python -m kvstore.demo [--engine hf|vllm] [--tokens 4096] [--carriers shm,tcp] [--codec none]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

QUESTIONS = (
    "\n# Question: which function in the module above is the longest?\n",
    "\n# Question: summarise what the module above is for.\n",
)


def print_stats(address: str) -> None:
    from kvstore.admin.client import AdminClient
    from kvstore.admin.format import stats

    with AdminClient(address) as admin:
        print(stats(admin.call("GetStats")))


def print_rows(rows: list[dict]) -> None:
    from kvstore.admin.format import table

    def cell(v):
        return round(v, 4) if isinstance(v, float) else v

    print(table(list(rows[0]), [[cell(v) for v in r.values()] for r in rows]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="hf: transformers (default); vllm: vLLM with KVStoreConnector")
    parser.add_argument("--tokens", type=int, default=4096, help="shared prefix length")
    parser.add_argument("--carriers", default="shm,tcp")
    parser.add_argument("--codec", default="none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # vLLM's, on import

    import torch
    from transformers import AutoTokenizer

    from kvstore.demo.local_setup import LocalDaemon, corpus_tokens, local_model_dir
    from kvstore.demo.runs import run_hf, run_vllm

    print("building / loading the local model (first run: ~15 s) ...", flush=True)
    model_dir = local_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefix = corpus_tokens(tokenizer, args.tokens)
    suffixes = [tokenizer(q)["input_ids"] for q in QUESTIONS]
    if args.engine == "hf":  # (vLLM sets up its own threads: torch must not have run yet)
        from transformers import LlamaForCausalLM

        from kvstore.client.hf_attention import use_grouped_sdpa

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        use_grouped_sdpa(model)  # miss and hit alike: no KV head expansion (same logits)

    carriers = tuple(c for c in args.carriers.split(",") if c)
    daemon = LocalDaemon(carriers, cpu_bytes="1GiB", ssd_bytes="4GiB").start()
    print(f"daemon ready: {' '.join(daemon.urls.values())} (admin {daemon.admin})\n", flush=True)
    try:
        run = run_hf if args.engine == "hf" else run_vllm
        engine_arg = model if args.engine == "hf" else model_dir
        # A's blocks are deleted between carriers (not after the last: the stats show them)
        rows = [run(daemon.urls[c], engine_arg, prefix, suffixes, args.codec,
                    cleanup=c != carriers[-1]) for c in carriers]
        engine = "transformers" if args.engine == "hf" else "vLLM + KVStoreConnector"
        print(f"\nTTFT through {engine}: recompute (miss) vs load from kvstore (hit)")
        print_rows([r.to_dict() for r in rows])
        print("\ndaemon stats (admin gRPC API):")
        print_stats(daemon.admin)
    finally:
        rc = daemon.stop()
    print(f"\ndaemon stopped (exit code {rc})")
    ok = all(r.tokens_reused > 0 and r.same_first_token for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
