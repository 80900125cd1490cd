"""Time to first token of long prompts: recompute vs a prefix loaded from ``kvstore serve``.

    python -m benchmarks.ttft [--model local|smollm2] [--engine hf,vllm] [--tokens 1024,4096,8192]
        [--codecs none,fp8_e4m3,int8,int4] [--carriers shm,tcp] [--block-tokens 32,64,256]
        [--json PATH] [--plot PATH] [--markdown PATH]

``--model local`` (the default): the local model (``kvstore.demo.local_model``:
Llama-style, 63M parameters, GQA 12/4 heads, random weights, no download);
``--model smollm2``: the trained SmolLM2-135M-Instruct (``kvstore.demo.trained_model``,
the extra ``kvstore[model]``: 30 layers, GQA 9/3 heads, 135M parameters; its
context is 8k, so its default lengths stop at 7,936). Either runs a prompt of N
tokens of real text (the standard library's sources) plus a one-token suffix (``--suffix-tokens``), through transformers (``HFEngine``)
and vLLM (CPU build, ``KVStoreConnector``) in the same run. A real daemon is
started on loopback with an shm and a tcp listener (CPU tier only: the hit
is a CPU-tier hit). Per engine and N:

* ``ttft_miss_s``: the whole prompt prefilled, the store not used: the
  baseline, measured in this run (best of ``--miss-repeat``);
* ``ttft_hit_s``: the same prompt with its N-token prefix loaded from the
  daemon over each carrier and codec, only the suffix computed (best of
  ``--hit-repeat`` after one warm-up); ``speedup = ttft_miss_s / ttft_hit_s``;
* quality against the recompute: the largest logprob difference of the next
  token, top-1 agreement, and (transformers) the logit error over
  ``--quality-positions`` next-token positions (``benchmarks.ttft_hf``).

``--block-tokens`` (the connector's ``block_tokens`` setting: tokens per
store block; a list runs each engine once per value, rows tagged
``block_tokens``): a prompt is reused in whole store blocks, so a prompt of
N tokens leaves ``N mod block_tokens`` tail tokens (at least one) to compute
on a hit; smaller blocks cut that tail but cost more blocks per transfer.
vLLM's own block (``VLLM_BLOCK``, 32: the CPU build's attention needs a
multiple of 32) must divide ``block_tokens``, and so must the prompt lengths
for vLLM; transformers needs lengths that are multiples of ``block_tokens``.

How each engine is driven: ``benchmarks/ttft_hf.py``, ``benchmarks/ttft_vllm.py``.
vLLM runs in a child process: its CPU worker binds OpenMP threads to cores
and replaces ``torch.set_num_threads`` for the rest of the process, and a
process that already ran torch with its own threads makes it about twice as
slow (measured), so neither engine may inherit the other's threads.
"""

from __future__ import annotations

import sys

from benchmarks.common import base_parser, machine_info, print_table, write_json
from benchmarks.ttft_rows import Progress, build_prompts

COLUMNS = ["engine", "block_tokens", "prompt_tokens", "carrier", "codec", "ttft_miss_s", "ttft_hit_s", "speedup",
           "top1_agree", "max_logprob_diff", "max_logit_err", "tokens_reused"]
ENGINES = ("hf", "vllm")
VLLM_BLOCK = 32  # vLLM's block on the CPU build (its attention needs a multiple of 32)
MODELS = {"local": ("local model", "1024,4096,8192"),
          "smollm2": ("SmolLM2-135M-Instruct", "1024,4096,7936")}


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--engine", default="hf,vllm", help="hf, vllm or both (comma separated)")
    parser.add_argument("--model", choices=tuple(MODELS), default="local",
                        help="local: random weights, built here; smollm2: the trained model")
    parser.add_argument("--tokens", default=None,
                        help="shared prefix lengths (multiples of --block-tokens; default "
                        "1024,4096,8192, smollm2 1024,4096,7936)")
    parser.add_argument("--codecs", default="none,fp8_e4m3,int8,int4")
    parser.add_argument("--carriers", default="shm,tcp")
    parser.add_argument("--suffix-tokens", type=int, default=1,
                        help="tokens of the request after the shared prefix (computed on a hit)")
    parser.add_argument("--quality-positions", type=int, default=32,
                        help="next-token positions compared for the codec quality (hf)")
    parser.add_argument("--miss-repeat", type=int, default=2)
    parser.add_argument("--hit-repeat", type=int, default=3)
    parser.add_argument("--block-tokens", default="256",
                        help="store block sizes in tokens, comma separated (each a multiple of "
                        f"vLLM's block {VLLM_BLOCK} for vllm)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all CPUs)")
    parser.add_argument("--model-dir", help="the model's folder (default: built or converted"
                        " under ~/.cache/kvstore on first use)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of TTFT and speedup")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    engines = _csv(args.engine)
    if not engines or set(engines) - set(ENGINES):
        parser.error(f"--engine takes {', '.join(ENGINES)}")
    args.engines = [e for e in ENGINES if e in engines]
    args.sizes = [int(t) for t in _csv(args.tokens or MODELS[args.model][1])]
    args.block_list = [int(b) for b in _csv(args.block_tokens)]
    if not args.block_list or any(b <= 0 for b in args.block_list):
        parser.error("--block-tokens takes positive integers")
    if "vllm" in args.engines and any(b % VLLM_BLOCK for b in args.block_list):
        parser.error(f"--block-tokens must be multiples of vLLM's block {VLLM_BLOCK} for vllm "
                     "(the CPU build's attention needs a multiple of 32)")
    if any(n <= 0 for n in args.sizes):
        parser.error("--tokens must be positive")
    if "hf" in args.engines and any(n % b for n in args.sizes for b in args.block_list):
        parser.error("--tokens must be multiples of every --block-tokens for hf")
    if "vllm" in args.engines and any(n % VLLM_BLOCK for n in args.sizes):
        parser.error(f"--tokens must be multiples of vLLM's block {VLLM_BLOCK} for vllm")
    if args.suffix_tokens < 1 or args.quality_positions < 1:
        parser.error("--suffix-tokens and --quality-positions must be at least 1")
    args.codec_list, args.carrier_list = _csv(args.codecs), _csv(args.carriers)
    return args


def tagged(rows, block_tokens: int) -> list:
    """``rows`` with their store block size recorded."""
    import dataclasses

    return [dataclasses.replace(r, block_tokens=block_tokens) for r in rows]


def main(argv=None) -> list[dict]:
    import os

    import torch

    from benchmarks import ttft_report
    from kvstore.demo.local_setup import LocalDaemon, local_model_dir

    args = parse_args(argv)
    progress = Progress(not args.no_progress)
    if args.model_dir:
        model_dir = args.model_dir
    elif args.model == "smollm2":
        from kvstore.demo.trained_model import trained_model_dir

        model_dir = trained_model_dir(progress)
    else:
        model_dir = local_model_dir()
    model_id = f"kvstore-{args.model}"
    prompts = build_prompts(model_dir, args.sizes, args.suffix_tokens, args.quality_positions)
    load_before = os.getloadavg()  # the machine may be shared: say how busy it was
    rows = []
    with LocalDaemon(tuple(args.carrier_list), cpu_bytes="2GiB") as daemon:
        progress(f"daemon ready: {' '.join(daemon.urls.values())}")
        if "hf" in args.engines:
            from benchmarks.ttft_hf import HFRunConfig, hf_rows, load_model

            torch.set_num_threads(args.threads or os.cpu_count() or 1)
            model = load_model(model_dir)
            for bt in args.block_list:
                config = HFRunConfig(args.miss_repeat, args.hit_repeat, bt, f"{model_id}-hf")
                rows += tagged(hf_rows(model, daemon.urls, prompts, args.codec_list, config,
                                       progress), bt)
        if "vllm" in args.engines:
            from benchmarks.ttft_vllm import VLLMRunConfig, run_child

            for bt in args.block_list:
                config = VLLMRunConfig(args.miss_repeat, args.hit_repeat, bt, VLLM_BLOCK,
                                       model_id=f"{model_id}-vllm")
                rows += tagged(run_child(model_dir, daemon.urls, args.sizes, args.suffix_tokens,
                                         args.codec_list, config, progress), bt)
    info = machine_info()
    title = (f"ttft: {MODELS[args.model][0]}, {'+'.join(args.engines)}, suffix {args.suffix_tokens} token(s), "
             f"{info['cpus']} CPUs")
    print_table([r.to_dict() for r in rows], COLUMNS, title=title)
    if args.json:
        write_json(args.json, "ttft", [r.to_dict() for r in rows], model=args.model,
                   suffix_tokens=args.suffix_tokens,
                   quality_positions=args.quality_positions, miss_repeat=args.miss_repeat,
                   hit_repeat=args.hit_repeat, load_avg_before=load_before,
                   load_avg_after=os.getloadavg())
    if args.plot:
        ttft_report.plot(rows, args.plot, title)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(ttft_report.markdown(rows))
    return [r.to_dict() for r in rows]


if __name__ == "__main__":
    main(sys.argv[1:])
