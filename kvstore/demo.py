"""The end-to-end demo behind ``make demo``.

1. builds (once) a local Llama-style model and tokenizer: no download;
2. starts ``kvstore serve`` on loopback (shm + tcp, admin API, SSD tier in a
   temporary folder);
3. for each carrier: request A with a long shared prefix misses and stores its
   KV; request B (same prefix, another question) hits and loads it; B is also
   recomputed without the store, as the reference for TTFT and logprobs;
4. prints TTFT miss vs hit, speedup, tokens reused and the largest logprob
   difference, then the daemon's stats read through the admin gRPC API;
5. stops the daemon (SIGTERM: it drains and flushes).

    python -m kvstore.demo [--tokens 4096] [--carriers shm,tcp] [--codec none]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch

from kvstore.daemon_process import DaemonProc, free_port

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvstore"

QUESTIONS = (
    "\n# Question: which function in the module above is the longest?\n",
    "\n# Question: summarise what the module above is for.\n",
)


def corpus_tokens(tokenizer, n: int) -> list[int]:
    """``n`` tokens of real text (standard library sources) as the shared prefix."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    ids: list[int] = []
    for name in ("argparse.py", "typing.py", "inspect.py", "pathlib.py"):
        path = stdlib / name
        if path.exists():
            ids += tokenizer(path.read_text(encoding="utf-8", errors="ignore"))["input_ids"]
        if len(ids) >= n:
            break
    if len(ids) < n:
        raise RuntimeError(f"only {len(ids)} tokens of corpus text")
    return ids[:n]


def run_carrier(url: str, model, model_id: str, prefix: list[int], suffixes, codec: str) -> dict:
    from kvstore.client import KVClient
    from kvstore.client.hf_adapter import layout_for_model
    from kvstore.client.hf_engine import HFEngine

    layout = layout_for_model(model.config, model_id, block_tokens=256, dtype=torch.float32)
    with KVClient.connect(url) as client:
        ns = client.namespace(layout, codec=codec)
        engine = HFEngine(model, ns, model_id, block_tokens=256, adaptive=False)
        a = engine.first_token(prefix + suffixes[0])  # miss: computes and stores
        prompt_b = prefix + suffixes[1]
        b = engine.first_token(prompt_b, store=False)  # hit: loads the shared prefix
        ref = engine.first_token(prompt_b, store=False, load=False)  # B recomputed
    return {
        "carrier": url.split("://")[0],
        "codec": codec,
        "prompt_tokens": len(prompt_b),
        "ttft_miss_s": ref.ttft_s,
        "ttft_hit_s": b.ttft_s,
        "speedup": ref.ttft_s / b.ttft_s,
        "tokens_reused": b.tokens_reused,
        "stored_by_A": a.tokens_stored,
        "max_logprob_diff": float((b.logprobs - ref.logprobs).abs().max()),
        "same_first_token": b.token_id == ref.token_id,
    }


def print_stats(address: str) -> None:
    from kvstore.admin_client import AdminClient
    from kvstore.admin_format import stats

    with AdminClient(address) as admin:
        print(stats(admin.call("GetStats")))


def print_rows(rows: list[dict]) -> None:
    from kvstore.admin_format import table

    def cell(v):
        return round(v, 4) if isinstance(v, float) else v

    print(table(list(rows[0]), [[cell(v) for v in r.values()] for r in rows]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="shared prefix length")
    parser.add_argument("--carriers", default="shm,tcp")
    parser.add_argument("--codec", default="none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from transformers import AutoTokenizer, LlamaForCausalLM

    from kvstore.local_model import build_local_model

    print("building / loading the local model (first run: ~15 s) ...", flush=True)
    model_dir = build_local_model(CACHE / "local-model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prefix = corpus_tokens(tokenizer, args.tokens)
    suffixes = [tokenizer(q)["input_ids"] for q in QUESTIONS]

    with tempfile.TemporaryDirectory(prefix="kvstore-demo-") as tmp:
        admin = f"127.0.0.1:{free_port()}"
        listen = {"shm": f"shm://{tmp}/kv.sock", "tcp": f"tcp://127.0.0.1:{free_port()}"}
        carriers = [c for c in args.carriers.split(",") if c]
        daemon = DaemonProc(
            [arg for c in carriers for arg in ("--listen", listen[c])]
            + ["--admin", admin, "--metrics", f"127.0.0.1:{free_port()}",
               "--cpu-bytes", "1GiB", "--ssd-dir", f"{tmp}/ssd", "--ssd-bytes", "4GiB"]
        )
        print(f"daemon ready: {' '.join(daemon.urls)} (admin {admin})\n", flush=True)
        try:
            rows = [run_carrier(listen[c], model, "kvstore-demo-llama", prefix, suffixes,
                                args.codec) for c in carriers]
            print("TTFT: recompute (miss) vs load from kvstore (hit)")
            print_rows(rows)
            print("\ndaemon stats (admin gRPC API):")
            print_stats(admin)
        finally:
            rc = daemon.terminate()
        print(f"\ndaemon stopped (exit code {rc})")
    ok = all(r["tokens_reused"] > 0 and r["same_first_token"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
