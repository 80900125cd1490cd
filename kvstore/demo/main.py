"""The end-to-end demo behind ``make demo`` (transformers) and ``make demo ENGINE=vllm``.

``make demo`` (``--engine hf``, the default) asks a real trained model,
SmolLM2-135M-Instruct (``kvstore.demo.trained_model``: installed from the
package registry, converted once per machine), a question about a long real
document (CPython's LICENSE.txt, about 3,900 tokens with the chat template;
``kvstore.demo.document``):

1. starts ``kvstore serve`` on loopback (shm + tcp, admin API, SSD tier in a
   temporary folder);
2. run 1, a fresh engine over the first carrier with the store empty:
   recomputes the whole prompt, answers, and stores the prompt's whole blocks;
3. run 2 (and one more per further carrier), each a fresh engine (new client,
   empty KV memory): loads the prefix from the daemon, computes only the
   prompt's tail, answers;
4. prints each answer, its TTFT, the tokens reused, and whether the answers
   are identical token for token (greedy decoding); then the daemon's stats
   read through the admin gRPC API; stops the daemon (SIGTERM: it drains and
   flushes).

``--model local`` runs the same on the small random-weight model (fast,
answers are noise). ``--engine vllm`` asks the same question through
``vllm serve`` with ``KVStoreConnector`` (``kvstore.demo.vllm_chat``: a
recompute, then the prefix loaded from the daemon); ``--engine vllm --model
local`` runs the TTFT table of two requests sharing a prefix through an
in-process vLLM engine (``kvstore.demo.runs``) on the local model.

    python -m kvstore.demo [--engine hf|vllm] [--model smollm2|local] [--carriers shm,tcp]
                           [--codec none] [--doc-tokens N] [--max-new-tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

QUESTIONS = (  # the vLLM table's two requests (local model)
    "\n# Question: which function in the module above is the longest?\n",
    "\n# Question: summarise what the module above is for.\n",
)
MODEL_IDS = {"smollm2": "smollm2-135m-instruct", "local": "kvstore-demo-llama"}


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


class Clock:
    """Progress lines with the time since the demo started."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.t0:5.0f}s] {message}", flush=True)


def load_model(name: str, say):
    """``(model, tokenizer)`` in float32 with ``sdpa_gqa`` attention."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    if name == "smollm2":
        from kvstore.demo.trained_model import load

        return load(progress=say)
    from kvstore.client.hf_attention import use_grouped_sdpa
    from kvstore.demo.local_setup import local_model_dir

    folder = local_model_dir()
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    use_grouped_sdpa(model)
    return model, AutoTokenizer.from_pretrained(folder)


def run_chat(args, say) -> int:
    """The ``--engine hf`` demo: one question, answered by a recompute then by loads."""
    import torch

    from kvstore.demo.chat import BLOCK_TOKENS, ask_hf, chat_prompt
    from kvstore.demo.document import demo_document
    from kvstore.demo.local_setup import LocalDaemon

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    say(f"loading {args.model} (first run on this machine: the conversion takes about a minute)")
    model, tokenizer = load_model(args.model, say)
    doc = demo_document()
    text = doc.text
    if args.doc_tokens:
        text = tokenizer.decode(tokenizer(text)["input_ids"][:args.doc_tokens])
    prompt = chat_prompt(tokenizer, text, doc.question)
    blocks = len(prompt) // BLOCK_TOKENS * BLOCK_TOKENS
    print(f"\ndocument: {doc.title}\n  from {doc.source}; "
          f"{len(tokenizer(text)['input_ids']):,} tokens")
    print(f"question: {doc.question}")
    print(f"prompt: {len(prompt):,} tokens through the chat template; its {blocks:,} tokens of "
          f"whole {BLOCK_TOKENS}-token blocks can be stored\n", flush=True)
    say("warming up (first-call costs of the model)")
    with torch.no_grad():
        model(torch.tensor([prompt[:64]]))
    carriers = tuple(c for c in args.carriers.split(",") if c)
    model_id = MODEL_IDS[args.model]
    daemon = LocalDaemon(carriers, cpu_bytes="1GiB", ssd_bytes="4GiB").start()
    say(f"daemon ready: {' '.join(daemon.urls.values())} (admin {daemon.admin})")
    answers = []
    try:
        plan = [(carriers[0], "recompute (store empty), then store")]
        plan += [(c, "prefix loaded from the daemon") for c in carriers]
        for i, (carrier, what) in enumerate(plan, 1):
            note = (f" (a prefill of {len(prompt):,} tokens: 15-90 s on 2 cores, more when busy)"
                    if i == 1 else "")
            say(f"run {i}: a fresh engine over {carrier}: {what}{note} ...")
            a = ask_hf(daemon.urls[carrier], model, tokenizer, model_id, prompt, args.codec,
                       args.max_new_tokens)
            answers.append(a)
            print(f"run {i} ({carrier}, {what}): TTFT {a.ttft_s:.3f} s, tokens reused "
                  f"{a.tokens_reused:,} of {a.prompt_tokens:,}, stored {a.tokens_stored:,}, "
                  f"answer ({len(a.token_ids)} tokens, {a.decode_s:.1f} s):\n    {a.text!r}",
                  flush=True)
        print_summary(answers)
        print("\ndaemon stats (admin gRPC API):")
        print_stats(daemon.admin)
    finally:
        rc = daemon.stop()
    print(f"\ndaemon stopped (exit code {rc})")
    return 0 if all(a.tokens_reused > 0 for a in answers[1:]) else 1


def print_summary(answers) -> None:
    first = answers[0]
    rows = [{"run": i, "carrier": a.carrier, "codec": a.codec, "ttft_s": a.ttft_s,
             "speedup": first.ttft_s / a.ttft_s, "tokens_reused": a.tokens_reused,
             "same_answer": a.same_as(first)} for i, a in enumerate(answers, 1)]
    print(f"\nTTFT through transformers: run 1 recomputed {first.prompt_tokens:,} prompt tokens; "
          "the others loaded the prefix from kvstore")
    print_rows(rows)
    others = answers[1:]
    if all(a.same_as(first) for a in others):
        print(f"identical answers: yes, runs 2-{len(answers)} gave run 1's answer token for "
              f"token ({len(first.token_ids)} tokens, greedy)")
    else:
        where = ", ".join(f"run {i} from token {first.first_divergence(a)}"
                          for i, a in enumerate(answers[1:], 2) if not a.same_as(first))
        print(f"identical answers: no ({where}; greedy)")


def run_vllm_table(args, say) -> int:
    """``--engine vllm --model local``: TTFT of two requests sharing a prefix (in-process vLLM)."""
    from transformers import AutoTokenizer

    from kvstore.demo.local_setup import LocalDaemon, corpus_tokens, local_model_dir
    from kvstore.demo.runs import run_vllm

    say("building / loading the local model (first run: ~15 s) ...")
    model_dir = local_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefix = corpus_tokens(tokenizer, args.tokens)
    suffixes = [tokenizer(q)["input_ids"] for q in QUESTIONS]
    carriers = tuple(c for c in args.carriers.split(",") if c)
    daemon = LocalDaemon(carriers, cpu_bytes="1GiB", ssd_bytes="4GiB").start()
    say(f"daemon ready: {' '.join(daemon.urls.values())} (admin {daemon.admin})")
    try:
        rows = [run_vllm(daemon.urls[c], model_dir, prefix, suffixes, args.codec,
                         cleanup=c != carriers[-1]) for c in carriers]
        print("\nTTFT through vLLM + KVStoreConnector: recompute (miss) vs load from kvstore (hit)")
        print_rows([r.to_dict() for r in rows])
        print("\ndaemon stats (admin gRPC API):")
        print_stats(daemon.admin)
    finally:
        rc = daemon.stop()
    print(f"\ndaemon stopped (exit code {rc})")
    ok = all(r.tokens_reused > 0 and r.same_first_token for r in rows)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="hf: transformers (default); vllm: vLLM with KVStoreConnector")
    parser.add_argument("--model", choices=("smollm2", "local"), default="smollm2",
                        help="smollm2: the trained model (kvstore[model]); local: random weights")
    parser.add_argument("--carriers", default="shm,tcp")
    parser.add_argument("--codec", default="none")
    parser.add_argument("--doc-tokens", type=int, default=0,
                        help="cut the document to its first N tokens (default: all of it)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: all CPUs; 1 is faster on a busy machine)")
    parser.add_argument("--tokens", type=int, default=4096,
                        help="--engine vllm --model local: shared prefix length")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # vLLM's, on import
    say = Clock()
    if args.engine == "vllm" and args.model == "local":
        return run_vllm_table(args, say)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars between our lines
        hf_logging.set_verbosity_error()  # and its deprecation notes
    except ImportError:
        pass
    from kvstore.demo.trained_model import ModelNotInstalled

    try:
        if args.engine == "vllm":
            from kvstore.demo.vllm_chat import run_vllm_chat

            return run_vllm_chat(args, say, print_stats)
        return run_chat(args, say)
    except ModelNotInstalled as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
