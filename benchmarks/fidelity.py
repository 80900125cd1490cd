"""Codec fidelity on a trained model: a prefix's KV recomputed vs loaded from a daemon.

    python -m benchmarks.fidelity [--model smollm2|local] [--tokens 8192] [--prefix 1024]
        [--continuation 256] [--generate 64] [--codecs none,fp8_e4m3,int8,int4]
        [--carrier tcp|shm] [--attribute] [--json PATH] [--markdown PATH]

A held-out text (``kvstore.demo.document.held_out_text``: sections of the
Python Language Reference that CPython ships, not the demo's document), cut
to ``--tokens`` tokens, is split into windows of ``prefix + continuation + 1``
tokens. Per window, through the HF adapter (``kvstore.client.hf_adapter``)
and a ``kvstore serve`` on loopback:

* recompute (the reference): the prefix is prefilled into the engine's KV
  memory (``KVBuffer``); on it the continuation runs in one forward (its
  logits predict the continuation's next tokens), and, again from the
  prefix, the greedy generation of ``--generate`` tokens after the
  continuation's first token;
* per codec: the prefix's KV is put into the daemon under that codec, read
  back into the same KV memory (``HFPrefixCache.restore``: lookup, get,
  decode), and the same continuation forward and greedy generation run on it.

Both paths run the continuation with the same operations on the same
buffer, so they differ only by the prefix's KV: codec ``none`` must be
bit-exact (delta perplexity 0, logit error 0, every generated token equal).
Per codec over all windows: the continuation's perplexity and its change
against the recompute, next-token top-1 agreement, mean KL divergence of the
next-token distribution, max and mean |logit error|, greedy generation
agreement (windows with all tokens equal, mean and first divergence), and
the payload per block.

``--attribute`` splits each quantized codec's error: perplexity with only K
quantized and with only V quantized (the other exact), and per group of
layers (K and V of those layers only), computed from the codec's own encode
and decode (``kvstore.kernels``) on the first ``--attribute-windows``
windows; plus the relative quantisation error of K and V per layer.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch

from benchmarks.common import base_parser, print_table, write_json

BLOCK_TOKENS = 256
MODEL_IDS = {"smollm2": "smollm2-135m-instruct", "local": "kvstore-local-hf"}
TARGETS = {"none": 0.0, "int8": 0.5, "fp8_e4m3": 1.0, "int4": 5.0}  # max delta ppl, percent


@dataclass
class Window:
    prefix: list[int]
    continuation: list[int]  # inputs; targets are continuation[1:] + [next]
    targets: list[int]


@dataclass
class Tally:
    """Sums over the windows for one codec (or the recompute)."""

    nll: float = 0.0
    count: int = 0
    top1_same: int = 0
    kl: float = 0.0
    max_err: float = 0.0
    abs_err: float = 0.0
    err_count: int = 0
    gen_equal: int = 0
    first_div: list[int] = field(default_factory=list)
    windows: int = 0

    def ppl(self) -> float:
        return math.exp(self.nll / max(1, self.count))


def parse_args(argv):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODEL_IDS), default="smollm2")
    parser.add_argument("--tokens", type=int, default=16384,
                        help="held-out tokens (at least 8k)")
    parser.add_argument("--prefix", type=int, default=1024,
                        help="prefix tokens per window (whole blocks of 256)")
    parser.add_argument("--continuation", type=int, default=256)
    parser.add_argument("--generate", type=int, default=64, help="greedy tokens per window")
    parser.add_argument("--windows", type=int, default=0, help="at most this many (0: all)")
    parser.add_argument("--codecs", default="none,fp8_e4m3,int8,int4")
    parser.add_argument("--carrier", choices=("tcp", "shm"), default="tcp")
    parser.add_argument("--attribute", action="store_true",
                        help="split each quantized codec's error into K/V and layer groups")
    parser.add_argument("--attribute-windows", type=int, default=2)
    parser.add_argument("--layer-groups", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.prefix <= 0 or args.prefix % BLOCK_TOKENS:
        parser.error(f"--prefix must be a positive multiple of {BLOCK_TOKENS}")
    if args.continuation < 2 or args.generate < 1:
        parser.error("--continuation must be at least 2 and --generate at least 1")
    args.codec_list = [c.strip() for c in args.codecs.split(",") if c.strip()]
    return args


def windows_of(ids: list[int], prefix: int, continuation: int, limit: int = 0) -> list[Window]:
    size = prefix + continuation + 1
    out = []
    for start in range(0, len(ids) - size + 1, size):
        w = ids[start:start + size]
        out.append(Window(w[:prefix], w[prefix:prefix + continuation], w[prefix + 1:]))
    return out[:limit] if limit else out


def load(model_name: str, say):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from kvstore.client.hf_attention import use_grouped_sdpa

    if model_name == "smollm2":
        from kvstore.demo.trained_model import load as load_trained

        return load_trained(progress=say)
    from kvstore.demo.local_setup import local_model_dir

    folder = local_model_dir()
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    use_grouped_sdpa(model)
    return model, AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def continue_on(model, buffer, n_prefix: int, w: Window, generate: int):
    """Logits of the continuation and the greedy tokens after its first, on the buffer's prefix."""
    cache = buffer.cache(n_prefix)
    logits = model(torch.tensor([w.continuation]), past_key_values=cache,
                   logits_to_keep=len(w.continuation)).logits[0].float()
    cache = buffer.cache(n_prefix)  # generation starts from the prefix again
    ids, nxt = [], w.continuation[0]
    for _ in range(generate):
        step = model(torch.tensor([[nxt]]), past_key_values=cache, logits_to_keep=1).logits[0, -1]
        nxt = int(torch.argmax(step))
        ids.append(nxt)
    return logits, ids


def score(tally: Tally, logits, ref_logits, targets, gen, ref_gen) -> None:
    logp = torch.log_softmax(logits, -1)
    t = torch.tensor(targets)
    tally.nll -= float(logp[torch.arange(len(targets)), t].double().sum())
    tally.count += len(targets)
    tally.windows += 1
    if ref_logits is None:
        return
    ref_logp = torch.log_softmax(ref_logits, -1)
    tally.top1_same += int((logits.argmax(-1) == ref_logits.argmax(-1)).sum())
    tally.kl += float((ref_logp.exp() * (ref_logp - logp)).sum(-1).double().sum())
    err = (logits - ref_logits).abs()
    tally.max_err = max(tally.max_err, float(err.max()))
    tally.abs_err += float(err.double().sum())
    tally.err_count += err.numel()
    div = next((i for i, (a, b) in enumerate(zip(gen, ref_gen)) if a != b), None)
    tally.gen_equal += div is None
    tally.first_div.append(len(gen) if div is None else div)


@torch.no_grad()
def prefill(model, buffer, prefix: list[int], extra: int) -> None:
    cache = buffer.cache(0, capacity=len(prefix) + extra)
    model(torch.tensor([prefix]), past_key_values=cache, logits_to_keep=1)


def codec_rows(model, client, layout, windows, codecs, generate, say):
    from kvstore.client.hf_adapter import HFPrefixCache
    from kvstore.client.hf_reserved import KVBuffer
    from kvstore.kernels import payload_nbytes

    buffer = KVBuffer(layout)
    caches = {c: HFPrefixCache(client.namespace(layout, codec=c), layout, model.config)
              for c in codecs}
    ref = Tally()
    tallies = {c: Tally() for c in codecs}
    exact_kv = []
    extra = max(len(windows[0].continuation), generate) + 1
    for i, w in enumerate(windows):
        t0 = time.perf_counter()
        prefill(model, buffer, w.prefix, extra)
        kv = buffer.canonical(len(w.prefix)).contiguous()  # the recomputed prefix KV
        ref_logits, ref_gen = continue_on(model, buffer, len(w.prefix), w, generate)
        score(ref, ref_logits, None, w.targets, ref_gen, None)
        for codec, cache in caches.items():
            if cache.ns.put(w.prefix, kv) != len(w.prefix):
                raise RuntimeError(f"{codec}: the daemon stored less than the prefix")
            n, _ = cache.restore(w.prefix + w.continuation, max_tokens=len(w.prefix),
                                 buffer=buffer, spare=extra)
            if n != len(w.prefix):
                raise RuntimeError(f"{codec}: restored {n} of {len(w.prefix)} tokens")
            logits, gen = continue_on(model, buffer, n, w, generate)
            score(tallies[codec], logits, ref_logits, w.targets, gen, ref_gen)
            cache.ns.delete(w.prefix)
        exact_kv.append(kv)
        say(f"window {i + 1}/{len(windows)} ({time.perf_counter() - t0:.1f} s); running "
            + ", ".join(f"{c} {100 * (t.ppl() / ref.ppl() - 1):+.3f} %" for c, t in tallies.items()))
    none_bytes = payload_nbytes(layout, "none")
    rows = [{"codec": "recompute", "ppl": ref.ppl(), "delta_ppl_pct": 0.0, "target_pct": None,
             "top1_agree": 1.0, "mean_kl": 0.0, "max_logit_err": 0.0, "mean_logit_err": 0.0,
             "gen_exact": 1.0, "gen_first_div_mean": float(generate), "gen_first_div_min": generate,
             "block_bytes": none_bytes, "bytes_ratio": 1.0, "windows": ref.windows,
             "tokens_scored": ref.count}]
    for codec, t in tallies.items():
        nbytes = payload_nbytes(layout, codec)
        rows.append({
            "codec": codec, "ppl": t.ppl(), "delta_ppl_pct": 100 * (t.ppl() / ref.ppl() - 1),
            "target_pct": TARGETS.get(codec), "top1_agree": t.top1_same / t.count,
            "mean_kl": t.kl / t.count, "max_logit_err": t.max_err,
            "mean_logit_err": t.abs_err / max(1, t.err_count),
            "gen_exact": t.gen_equal / t.windows,
            "gen_first_div_mean": sum(t.first_div) / len(t.first_div),
            "gen_first_div_min": min(t.first_div), "block_bytes": nbytes,
            "bytes_ratio": nbytes / none_bytes, "windows": t.windows, "tokens_scored": t.count})
    return rows, exact_kv


def quantized(kv: torch.Tensor, layout, codec: str) -> torch.Tensor:
    """``kv`` ``[L, 2, T, H, D]`` through the codec's encode and decode, block by block."""
    from kvstore.kernels import decode, encode

    out = torch.empty_like(kv)
    bt = layout.block_tokens
    for s in range(0, kv.shape[2], bt):
        out[:, :, s:s + bt] = decode(encode(kv[:, :, s:s + bt].contiguous(), codec), layout, codec)
    return out


@torch.no_grad()
def attribution(model, layout, windows, exact_kv, codecs, groups: int, say) -> list[dict]:
    """Delta ppl with only K / only V / one layer group quantized; per-layer relative errors."""
    from kvstore.client.hf_reserved import KVBuffer

    buffer = KVBuffer(layout)
    L = layout.num_layers
    bounds = [(g * L // groups, (g + 1) * L // groups) for g in range(groups)]
    rows = []

    def logp_of(w, kv) -> torch.Tensor:
        buffer.reserve(len(w.prefix) + len(w.continuation) + 1)
        buffer.canonical(len(w.prefix)).copy_(kv)
        logits = model(torch.tensor([w.continuation]), past_key_values=buffer.cache(len(w.prefix)),
                       logits_to_keep=len(w.continuation)).logits[0].float()
        return torch.log_softmax(logits, -1)

    refs = [logp_of(w, kv) for w, kv in zip(windows, exact_kv)]
    count = sum(len(w.targets) for w in windows)

    def nll(w, logp) -> float:
        return -float(logp[torch.arange(len(w.targets)), torch.tensor(w.targets)].double().sum())

    base = sum(nll(w, r) for w, r in zip(windows, refs))

    def pct(total: float) -> float:
        return 100 * (math.exp((total - base) / count) - 1)

    for codec in codecs:
        if codec == "none":
            continue
        qkv = [quantized(kv, layout, codec) for kv in exact_kv]
        variants = {"K and V": (slice(None), (0, 1)), "K only": (slice(None), (0,)),
                    "V only": (slice(None), (1,))}
        for lo, hi in bounds:
            variants[f"K, layers {lo}-{hi - 1}"] = (slice(lo, hi), (0,))
            variants[f"V, layers {lo}-{hi - 1}"] = (slice(lo, hi), (1,))
        for name, (layers, kvs) in variants.items():
            total, kl = 0.0, 0.0
            for w, kv, q, ref in zip(windows, exact_kv, qkv, refs):
                mixed = kv.clone()
                for j in kvs:
                    mixed[layers, j] = q[layers, j]
                logp = logp_of(w, mixed)
                total += nll(w, logp)
                kl += float((ref.exp() * (ref - logp)).sum(-1).double().sum())
            rows.append({"codec": codec, "quantized": name, "delta_ppl_pct": pct(total),
                         "mean_kl": kl / count})
        rel = [[float((q[layer, j] - kv[layer, j]).norm() / kv[layer, j].norm())
                for layer in range(L)] for j in (0, 1) for kv, q in [(exact_kv[0], qkv[0])]]
        rows.append({"codec": codec, "quantized": "relative error per layer (K)",
                     "per_layer": rel[0]})
        rows.append({"codec": codec, "quantized": "relative error per layer (V)",
                     "per_layer": rel[1]})
        say(f"attribution {codec} done")
    return rows


COLUMNS = ["codec", "ppl", "delta_ppl_pct", "target_pct", "top1_agree", "mean_kl",
           "max_logit_err", "mean_logit_err", "gen_exact", "gen_first_div_mean",
           "gen_first_div_min", "block_bytes", "bytes_ratio"]


def markdown(rows, attribution_rows, meta: dict) -> str:
    lines = [f"Model {meta['model']}, {meta['windows']} windows of {meta['prefix']} prefix + "
             f"{meta['continuation']} continuation tokens ({meta['tokens_scored']} tokens scored), "
             f"{meta['generate']} greedy tokens per window, daemon over {meta['carrier']}.", "",
             "| codec | perplexity | Δppl | target | top-1 agree | mean KL | max logit err "
             f"| mean logit err | greedy {meta['generate']} exact | first divergence mean / min "
             "| block bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        target = "" if r["target_pct"] is None else f"≤ {r['target_pct']:g} %"
        lines.append(
            f"| {r['codec']} | {r['ppl']:.4f} | {r['delta_ppl_pct']:+.3f} % | {target} "
            f"| {r['top1_agree']:.4f} | {r['mean_kl']:.2e} | {r['max_logit_err']:.3g} "
            f"| {r['mean_logit_err']:.2e} | {r['gen_exact']:.2f} "
            f"| {r['gen_first_div_mean']:.1f} / {r['gen_first_div_min']} "
            f"| {r['block_bytes']:,} ({r['bytes_ratio']:.3f}) |")
    if attribution_rows:
        lines += ["", "| codec | quantized (the rest exact) | mean KL | Δppl |", "|---|---|---:|---:|"]
        lines += [f"| {r['codec']} | {r['quantized']} | {r['mean_kl']:.2e} "
                  f"| {r['delta_ppl_pct']:+.3f} % |"
                  for r in attribution_rows if "delta_ppl_pct" in r]
        per_layer = [r for r in attribution_rows if "per_layer" in r]
        if per_layer:
            lines += ["", "Relative error ‖x̂ − x‖ / ‖x‖ per layer (first window):", "",
                      "| codec | tensor | " + " | ".join(
                          str(i) for i in range(len(per_layer[0]["per_layer"]))) + " |",
                      "|---|---|" + "---:|" * len(per_layer[0]["per_layer"])]
            lines += [f"| {r['codec']} | {r['quantized'][-2]} | " + " | ".join(
                f"{v:.3f}" for v in r["per_layer"]) + " |" for r in per_layer]
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    import os

    from benchmarks.ttft_rows import Progress
    from kvstore.client import KVClient
    from kvstore.client.hf_adapter import layout_for_model
    from kvstore.demo.document import held_out_text
    from kvstore.demo.local_setup import LocalDaemon

    args = parse_args(argv)
    say = Progress(not args.no_progress)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model, tokenizer = load(args.model, say)
    ids = tokenizer(held_out_text())["input_ids"][:args.tokens]
    if len(ids) < args.tokens:
        raise SystemExit(f"the held-out text has only {len(ids)} tokens")
    windows = windows_of(ids, args.prefix, args.continuation, args.windows)
    if not windows:
        raise SystemExit("no window fits: lower --prefix/--continuation or raise --tokens")
    say(f"{len(ids)} held-out tokens, {len(windows)} windows")
    layout = layout_for_model(model.config, MODEL_IDS[args.model], BLOCK_TOKENS, torch.float32)
    with LocalDaemon((args.carrier,), cpu_bytes="1GiB") as daemon, \
            KVClient.connect(daemon.urls[args.carrier]) as client:
        say(f"daemon ready: {daemon.urls[args.carrier]}")
        rows, exact_kv = codec_rows(model, client, layout, windows, args.codec_list,
                                    args.generate, say)
    attr = []
    if args.attribute:
        n = max(1, args.attribute_windows)
        attr = attribution(model, layout, windows[:n], exact_kv[:n], args.codec_list,
                           args.layer_groups, say)
    meta = {"model": args.model, "windows": len(windows), "prefix": args.prefix,
            "continuation": args.continuation, "generate": args.generate,
            "tokens_scored": rows[0]["tokens_scored"], "carrier": args.carrier,
            "held_out_tokens": len(ids)}
    print_table(rows, COLUMNS, title=f"fidelity: {args.model}, {len(windows)} windows of "
                f"{args.prefix}+{args.continuation} tokens, {args.generate} greedy tokens")
    if attr:
        print_table([r for r in attr if "delta_ppl_pct" in r],
                    ["codec", "quantized", "mean_kl", "delta_ppl_pct"],
                    title="\nwhere the error comes from (first windows; codec encode/decode)")
    if args.json:
        write_json(args.json, "fidelity", rows, attribution=attr, **meta)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, attr, meta))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
