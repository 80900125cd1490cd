"""``make demo ENGINE=vllm``: the demo's question asked through ``vllm serve`` with KVStoreConnector.

The same document and question as ``make demo`` (transformers), on the same
trained model (SmolLM2, float32), through the server a user runs (the
README's one-liner; ``kvstore.demo.vllm_server``):

1. ``kvstore serve`` on loopback (the first carrier of ``--carriers``);
2. ``vllm serve`` on the converted model's folder, its connector on that
   daemon, vLLM's own prefix cache off (``--no-enable-prefix-caching``), so
   that a reused prefix can only come from the store;
3. run 1: the question through ``/v1/chat/completions`` (streamed, greedy):
   the store is empty, vLLM computes the whole prompt and the connector
   stores its whole blocks;
4. run 2: the same request again: the connector loads the prefix from the
   daemon and vLLM computes only the tail;
5. each answer, its time to first streamed token, the tokens vLLM reports
   as cached, whether the two answers are identical; the daemon's stats.
"""

from __future__ import annotations

import shlex

from kvstore.demo.chat import chat_content


def run_vllm_chat(args, say, print_stats) -> int:
    """The ``--engine vllm`` demo (``args``: ``kvstore.demo.main``'s options)."""
    from transformers import AutoTokenizer

    from kvstore.demo.document import demo_document
    from kvstore.demo.local_setup import LocalDaemon
    from kvstore.demo.trained_model import trained_model_dir
    from kvstore.demo.vllm_server import DAEMON_ARGS, VLLMServer

    say("finding the trained model (first run on this machine: the conversion takes a minute)")
    folder = trained_model_dir(progress=say)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    doc = demo_document()
    text = doc.text
    if args.doc_tokens:
        text = tokenizer.decode(tokenizer(text)["input_ids"][:args.doc_tokens])
    messages = [{"role": "user", "content": chat_content(text, doc.question)}]
    prompt_tokens = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=True, return_dict=True)["input_ids"])
    print(f"\ndocument: {doc.title}\n  from {doc.source}; "
          f"{len(tokenizer(text)['input_ids']):,} tokens")
    print(f"question: {doc.question}")
    print(f"prompt: {prompt_tokens:,} tokens through the chat template\n", flush=True)
    carrier = next(c for c in args.carriers.split(",") if c)
    daemon = LocalDaemon((carrier,), cpu_bytes="1GiB", ssd_bytes="4GiB",
                         extra_args=DAEMON_ARGS).start()
    say(f"daemon ready: {daemon.urls[carrier]} (admin {daemon.admin})")
    extra = {"codec": args.codec} if args.codec != "none" else {}
    server = VLLMServer(folder, daemon.urls[carrier], connector=extra, prefix_caching=False,
                        max_model_len=-(-(prompt_tokens + args.max_new_tokens + 32) // 32) * 32)
    print("the server, as a user starts it:\n  " + shlex.join(server.args()).replace(
        f"--port {server.port}", "--port 8000"), flush=True)
    answers = []
    try:
        say("starting vllm serve (1-5 minutes on a busy 2-core machine: it imports vLLM "
            "in two processes, loads the model, profiles) ...")
        server.start(progress=say)
        say(f"vllm serve ready on 127.0.0.1:{server.port} after {server.started_s:.0f} s; "
            "warming up ...")
        server.complete("The capital of France is", max_tokens=2)
        plan = ["recompute (store empty), then store", "prefix loaded from the daemon"]
        for i, what in enumerate(plan, 1):
            say(f"run {i}: /v1/chat/completions, streamed, greedy: {what} ...")
            a = server.chat(messages, max_tokens=args.max_new_tokens)
            answers.append(a)
            print(f"run {i} ({carrier}, {what}): TTFT {a.ttft_s:.3f} s, tokens reused "
                  f"{a.cached_tokens:,} of {a.prompt_tokens:,}, answer "
                  f"({a.completion_tokens} tokens, {a.total_s - a.ttft_s:.1f} s):\n"
                  f"    {a.text.strip()!r}", flush=True)
        _summary(answers, carrier, args.codec)
        print("\ndaemon stats (admin gRPC API):")
        print_stats(daemon.admin)
    finally:
        server.stop()
        rc = daemon.stop()
    print(f"\nvllm serve and the daemon stopped (daemon exit code {rc})")
    return 0 if answers[0].cached_tokens == 0 and answers[1].cached_tokens > 0 else 1


def _summary(answers, carrier: str, codec: str) -> None:
    first, second = answers
    print(f"\nTTFT through vllm serve + KVStoreConnector ({carrier}, codec {codec}): "
          f"run 1 recomputed {first.prompt_tokens:,} prompt tokens, run 2 loaded "
          f"{second.cached_tokens:,} from kvstore: {first.ttft_s:.3f} s -> {second.ttft_s:.3f} s, "
          f"{first.ttft_s / second.ttft_s:.1f}x")
    if second.text == first.text:
        print(f"identical answers: yes, run 2 gave run 1's answer ({first.completion_tokens} "
              "tokens, greedy)")
    else:
        at = next((i for i, (a, b) in enumerate(zip(first.text, second.text)) if a != b),
                  min(len(first.text), len(second.text)))
        print(f"identical answers: no (the texts differ from character {at}; greedy)")
