"""The device check: one short run that proves the GPU path on a GPU machine.

    python -m benchmarks.gpu_check [--device cuda|cpu] [--out DIR] [--quick]
                                   [--budget SECONDS] [--tokens N] [--skip SECTION ...]
    python -m benchmarks.gpu_check --case CODEC     (one kernel case, for compute-sanitizer)

``scripts/gpu_check.sh`` prepares the environment and calls this; ``docs/gpu.md``
says how to run it and what each figure means. Sections, each timed and
recorded even when it fails (a failing section never stops the others):

``env``        devices, driver/runtime, torch, CuPy (and whether its kernels run), tools
``tests``      pytest on the GPU tests: tests/kernels/test_gpu.py (kernels vs the
               reference), tests/store/test_gpu_tier.py, tests/client/test_gpu_paged.py
               (the connector's paged path on CUDA flash caches: embedded, shm, tcp);
               on ``--device cpu`` their CPU stand-ins (the GPU tier and the flash
               paged path on CPU tensors)
``sanitizer``  compute-sanitizer memcheck and racecheck on one fp8 and one int4 case
               (``--case``), where the tool exists
``kernels``    pack+encode / decode+unpack GB/s per codec against a device-to-device
               copy of the same bytes (``benchmarks.kernels``)
``offload``    device -> arena and arena -> device GB/s, one copy per block into a
               registered (pinned) arena, against one pinned cudaMemcpy of the same
               bytes, and a pageable copy
``ttft``       HF adapter on the device, the local random model at ``--tokens``
               tokens: recompute vs a full hit

It writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` (default
``$OUT``, else ``./gpu-check-out``). ``--device cpu`` runs what needs no CUDA
(the CI test runs it with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SECTIONS = ("env", "tests", "sanitizer", "kernels", "offload", "ttft")
GPU_TESTS = ["tests/kernels/test_gpu.py", "tests/store/test_gpu_tier.py",
             "tests/client/test_gpu_paged.py"]
CPU_TESTS = ["tests/store/test_gpu_tier.py",
             "tests/client/test_paged_io.py::test_flash_caches_over_every_carrier"]
TARGETS = {"pack_fp8": 0.7, "unpack_fp8": 0.7, "offload": 0.8, "ttft_speedup": 20.0}


class Check:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.start = time.monotonic()
        self.result: dict = {"device": args.device, "quick": args.quick,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "sections": {}}

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.start)

    def section(self, name: str, fn) -> None:
        if name in self.args.skip:
            self.result["sections"][name] = {"skipped": "--skip"}
            return
        t0 = time.monotonic()
        print(f"== {name} ({self.left():.0f} s of the budget left)", flush=True)
        try:
            out = fn()
        except Exception as exc:  # recorded; the other sections still run
            out = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"   {name} failed: {out['error']}", flush=True)
        out = out if isinstance(out, dict) else {"rows": out}
        out["seconds"] = round(time.monotonic() - t0, 2)
        self.result["sections"][name] = out


# -- env ---------------------------------------------------------------------
def env(check: Check) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["devices"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"index": i, "name": p.name,
                                    "memory_gib": round(p.total_memory / 2**30, 1),
                                    "capability": f"{p.major}.{p.minor}"})
        info["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version",
                               "--format=csv,noheader"]).strip() or None
    for mod in ("cupy", "transformers", "numpy", "lz4", "pytest"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:
            info[mod] = f"missing ({type(exc).__name__})"
    from kvstore.kernels import cuda_backend

    info["cuda_kernels_run"] = bool(torch.cuda.is_available() and cuda_backend.available())
    info["nvcc"] = shutil.which("nvcc")
    info["compute_sanitizer"] = sanitizer_path()
    for key, value in info.items():
        print(f"   {key}: {value}", flush=True)
    return info


def _run(cmd, timeout=30) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
    except Exception:
        return ""


# -- tests -------------------------------------------------------------------
def tests(check: Check) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"skipped": "pytest is not installed (see the header of scripts/gpu_check.sh)"}
    root = Path(check.args.root)
    paths = GPU_TESTS if check.device.type == "cuda" else CPU_TESTS
    if check.args.quick and check.device.type == "cpu":
        paths = ["tests/store/test_gpu_tier.py",
                 "tests/client/test_paged_io.py::test_flash_caches_over_every_carrier"
                 "[embedded-vllm_flash-none-staged]"]
    cmd = [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-c", str(root / "pyproject.toml"), "--rootdir", str(root), *paths]
    timeout = max(30, min(check.left() - 100, 330)) if check.device.type == "cuda" else 300
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        text, rc = out.decode(errors="replace") if isinstance(out, bytes) else out, "timeout"
    lines = text.strip().splitlines()
    found = [ln for ln in lines if re.search(r"\d+ (passed|failed|errors?|skipped)", ln)]
    summary = found[-1].strip("= ") if found else (lines[-1] if lines else "(no output)")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)",
                                                 summary)}
    failures = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))][:20]
    print(f"   {summary}", flush=True)
    for ln in failures:
        print(f"   {ln}", flush=True)
    return {"paths": paths, "rc": rc, "summary": summary, "counts": counts,
            "failures": failures, "test_seconds": round(time.monotonic() - t0, 1)}


# -- compute-sanitizer ------------------------------------------------------------
def sanitizer_path() -> str | None:
    found = shutil.which("compute-sanitizer")
    for cand in (found, "/usr/local/cuda/bin/compute-sanitizer",
                 "/usr/local/cuda/compute-sanitizer/compute-sanitizer"):
        if cand and Path(cand).exists():
            return cand
    return None


def sanitizer(check: Check) -> dict:
    if check.device.type != "cuda":
        return {"skipped": "needs CUDA"}
    exe = sanitizer_path()
    if exe is None:
        return {"skipped": "compute-sanitizer not found on this machine"}
    runs = []
    for tool, codec in (("memcheck", "fp8_e4m3"), ("racecheck", "int4"),
                        ("memcheck", "int4"), ("racecheck", "fp8_e4m3")):
        if check.left() < 40:
            runs.append({"tool": tool, "codec": codec, "skipped": "out of time"})
            continue
        cmd = [exe, "--tool", tool, "--error-exitcode", "9", "--target-processes", "all",
               sys.executable, "-P", "-m", "benchmarks.gpu_check", "--case", codec]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=min(120, check.left() - 10))
            text, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired:
            text, rc = "", "timeout"
        summary = [ln for ln in text.splitlines() if "ERROR SUMMARY" in ln
                   or "RACECHECK SUMMARY" in ln]
        run = {"tool": tool, "codec": codec, "rc": rc,
               "summary": summary[-1].strip() if summary else text.strip()[-300:],
               "case_ok": "case ok" in text, "seconds": round(time.monotonic() - t0, 1)}
        print(f"   {tool} {codec}: rc {rc}, {run['summary']}", flush=True)
        runs.append(run)
    return {"runs": runs}


def case(codec: str) -> int:
    """One pack + unpack through the CUDA kernels, held to the reference (exit 0 if equal)."""
    from kvstore.kernels import EngineLayout, pack_paged, unpack_paged
    from kvstore.layout import KVLayout

    L, H, D, T, ebs, nb = 2, 4, 128, 128, 16, 32
    layout = KVLayout("case", L, H, D, "float16", T)
    engine = EngineLayout.vllm_flash(ebs)
    g = torch.Generator().manual_seed(0)
    caches = [torch.randn(engine.cache_shape(nb, layout), generator=g).half().cuda()
              for _ in range(L)]
    ids = list(range(2 * T // ebs))
    got = pack_paged(caches, ids, layout, codec, engine, backend="cuda")
    ref = pack_paged([c.cpu() for c in caches], ids, layout, codec, engine, backend="reference")
    dst = [torch.zeros_like(c) for c in caches]
    unpack_paged(got, dst, ids[::-1], layout, codec, engine, backend="cuda")
    torch.cuda.synchronize()
    ok = all(torch.equal(a.cpu(), b) for a, b in zip(got, ref))
    print("case ok" if ok else "case MISMATCH", flush=True)
    return 0 if ok else 1


# -- kernels -----------------------------------------------------------------------
def kernels(check: Check) -> dict:
    from benchmarks.kernels import run

    layers, blocks = (2, 2) if check.args.quick else (8, 16)
    if check.device.type == "cuda":
        layers, blocks = 8, 32
    rows = run(check.device, layers, blocks, "bfloat16" if check.device.type == "cuda"
               else "float16", None)
    for r in rows:
        r["gbps"], r["baseline"], r["ratio"] = (round(r[k], 3) for k in ("gbps", "baseline",
                                                                            "ratio"))
        print(f"   {r['name']:<16} {r['backend']:<9} {r['gbps']:>8} GB/s  vs "
              f"{r['baseline']:>8}  ratio {r['ratio']}", flush=True)
    return {"layers": layers, "blocks": blocks, "rows": rows}


# -- offload ------------------------------------------------------------------------
def offload(check: Check) -> dict:
    """One copy per block between device memory and arena slots (registered with the
    driver through kvstore.kernels.pinning), against one copy of the same bytes between
    device memory and torch's pinned memory (cudaMemcpy), and pageable memory."""
    import numpy as np

    from benchmarks.kernels import measure
    from kvstore.kernels import pinning
    from kvstore.store.tenant_arenas import MemfdArena

    dev = check.device
    block = 2 << 20
    nblocks = 8 if check.args.quick and dev.type == "cpu" else 64
    total = block * nblocks
    arena = MemfdArena(total)  # what the CPU tier maps for each tenant
    slots: list[torch.Tensor] = []
    try:
        registered = pinning.enable() if dev.type == "cuda" else 0
        slots += [torch.frombuffer(arena.view[i * block:(i + 1) * block], dtype=torch.uint8)
                  for i in range(nblocks)]
        device_buf = torch.randint(0, 255, (total,), dtype=torch.uint8).to(dev)
        rows = list(device_buf.view(nblocks, block).unbind(0))
        pinned = torch.empty(total, dtype=torch.uint8, pin_memory=dev.type == "cuda")
        pageable = torch.from_numpy(np.empty(total, dtype=np.uint8))
        arena_pinned = bool(dev.type == "cuda" and slots[0].is_pinned())

        def to_arena():
            for s, r in zip(slots, rows):
                s.copy_(r, non_blocking=True)

        def from_arena():
            for s, r in zip(slots, rows):
                r.copy_(s, non_blocking=True)

        def d2pinned():
            pinned.copy_(device_buf, non_blocking=True)

        def pinned2d():
            device_buf.copy_(pinned, non_blocking=True)

        def d2pageable():
            pageable.copy_(device_buf, non_blocking=True)

        def pageable2d():
            device_buf.copy_(pageable, non_blocking=True)

        out = []
        for name, fn, base in (("device->arena", to_arena, d2pinned),
                               ("arena->device", from_arena, pinned2d),
                               ("device->pageable", d2pageable, d2pinned),
                               ("pageable->device", pageable2d, pinned2d)):
            seconds, base_s = measure(fn, base, dev)
            out.append({"name": name, "bytes": total, "copies": nblocks if "arena" in name else 1,
                        "gbps": round(total / seconds / 1e9, 3),
                        "pinned_gbps": round(total / base_s / 1e9, 3),
                        "ratio": round(base_s / seconds, 3)})
            print(f"   {name:<17} {out[-1]['gbps']:>8} GB/s vs pinned memcpy "
                  f"{out[-1]['pinned_gbps']:>8}  ratio {out[-1]['ratio']}", flush=True)
        ok = bytes(arena.view[:64]) == bytes(device_buf[:64].cpu().numpy())
        return {"rows": out, "arena_registered": registered, "arena_is_pinned": arena_pinned,
                "bytes_ok": ok, "block_bytes": block}
    finally:
        slots.clear()
        arena.close()


# -- TTFT ----------------------------------------------------------------------------
def ttft(check: Check) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvstore.client import KVClient
    from kvstore.client.hf_adapter import layout_for_model
    from kvstore.client.hf_engine import HFEngine
    from kvstore.demo.local_model import LocalModelSpec

    dev = check.device
    spec = LocalModelSpec()
    tokens = check.args.tokens or (512 if check.args.quick else 8192)
    if check.args.quick and dev.type == "cpu":
        spec = LocalModelSpec(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=1024)
    config = LlamaConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                         intermediate_size=spec.intermediate_size,
                         num_hidden_layers=spec.num_hidden_layers,
                         num_attention_heads=spec.num_attention_heads,
                         num_key_value_heads=spec.num_key_value_heads,
                         max_position_embeddings=max(spec.max_position_embeddings, tokens + 64),
                         tie_word_embeddings=False)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(dev, dtype).eval()
    kv_bytes = tokens * spec.num_hidden_layers * 2 * spec.num_key_value_heads * \
        (spec.hidden_size // spec.num_attention_heads) * (2 if dtype != torch.float32 else 4)
    g = torch.Generator().manual_seed(1)
    # one more token than is reused: the model runs at least one (the last) itself
    prompt = torch.randint(0, spec.vocab_size, (tokens + 1,), generator=g).tolist()
    with KVClient.connect("embedded", cpu_bytes=max(256 << 20, 3 * kv_bytes)) as client:
        layout_dtype = str(dtype).removeprefix("torch.")
        ns = client.namespace(layout_for_model(config, "local-random", 256, dtype))
        engine = HFEngine(model, ns, "local-random", block_tokens=256, adaptive=False)
        first = engine.first_token(prompt, store=True, load=False)  # warm-up, stores
        reps = 2 if check.args.quick else 5
        miss = [engine.first_token(prompt, store=False, load=False) for _ in range(reps)]
        hit = [engine.first_token(prompt, store=False, load=True) for _ in range(reps)]
        recompute = statistics.median(r.ttft_s for r in miss)
        full_hit = statistics.median(r.ttft_s for r in hit)
        diff = float((hit[-1].logprobs - miss[-1].logprobs).abs().max())
        out = {"tokens": tokens, "dtype": layout_dtype, "kv_bytes": kv_bytes,
               "layers": spec.num_hidden_layers, "stored": first.tokens_stored,
               "reused": hit[-1].tokens_reused, "recompute_s": round(recompute, 5),
               "full_hit_s": round(full_hit, 5), "load_s": round(hit[-1].load_s, 5),
               "speedup": round(recompute / full_hit, 2), "max_logprob_diff": diff,
               "same_token": hit[-1].token_id == miss[-1].token_id}
    print(f"   {tokens} tokens: recompute {recompute * 1e3:.1f} ms, full hit "
          f"{full_hit * 1e3:.1f} ms ({out['speedup']}x), reused {out['reused']}, "
          f"max logprob diff {diff:.2e}", flush=True)
    return out


# -- report ----------------------------------------------------------------------------
def targets(result: dict) -> list[dict]:
    """The issue's GPU targets; on ``--device cpu`` the figures are listed, not judged."""
    s = result["sections"]
    out = []
    judged = result["device"] == "cuda"
    rows = {r["name"]: r for r in s.get("kernels", {}).get("rows", []) or []}
    for op in ("pack", "unpack"):
        r = rows.get(f"{op}/fp8_e4m3")
        if r:
            out.append({"target": f"{op} + fp8 vs device copy", "value": r["ratio"],
                        "goal": TARGETS[f"{op}_fp8"],
                        "met": r["ratio"] >= TARGETS[f"{op}_fp8"] if judged else None})
    for r in s.get("offload", {}).get("rows", []) or []:
        if "arena" in r["name"]:
            out.append({"target": f"{r['name']} vs pinned cudaMemcpy", "value": r["ratio"],
                        "goal": TARGETS["offload"],
                        "met": r["ratio"] >= TARGETS["offload"] if judged else None})
    t = s.get("ttft", {})
    if "speedup" in t:
        out.append({"target": f"HF full hit vs recompute at {t['tokens']} tokens",
                    "value": t["speedup"], "goal": TARGETS["ttft_speedup"],
                    "met": t["speedup"] >= TARGETS["ttft_speedup"] if judged else None})
    return out


def markdown(result: dict) -> str:
    s = result["sections"]
    env_ = s.get("env", {})
    devs = ", ".join(d["name"] for d in env_.get("devices", [])) or "none"
    lines = [f"# kvstore device check ({result['device']}{', quick' if result['quick'] else ''})",
             "", f"Started {result['started']}, {result['seconds']} s. Devices: {devs}; torch "
             f"{env_.get('torch')} (CUDA {env_.get('torch_cuda')}), CuPy {env_.get('cupy')}, "
             f"CUDA kernels run: {env_.get('cuda_kernels_run')}.", "",
             "| target | value | goal | met |", "|---|---|---|---|"]
    met = {True: "yes", False: "no", None: "n/a (not a GPU)"}
    lines += [f"| {t['target']} | {t['value']} | {t['goal']} | {met[t['met']]} |"
              for t in result["targets"]]
    t = s.get("tests", {})
    lines += ["", f"Tests ({', '.join(t.get('paths', []))}): {t.get('summary', t)}"]
    san = s.get("sanitizer", {})
    if "runs" in san:
        lines += ["", "| compute-sanitizer | codec | rc | summary |", "|---|---|---|---|"]
        lines += [f"| {r['tool']} | {r['codec']} | {r.get('rc', '-')} | "
                  f"{r.get('summary', r.get('skipped', ''))} |" for r in san["runs"]]
    else:
        lines += ["", f"compute-sanitizer: {san.get('skipped', san.get('error', san))}"]
    k = s.get("kernels", {})
    if k.get("rows"):
        lines += ["", f"Kernels ({k['layers']} layers x {k['blocks']} blocks of 256 tokens, "
                  "GB/s of uncompressed bytes):", "",
                  "| op | backend | GB/s | baseline | ratio |", "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['backend']} | {r['gbps']} | {r['baseline']} | "
                  f"{r['ratio']} |" for r in k["rows"]]
    o = s.get("offload", {})
    if o.get("rows"):
        lines += ["", f"Offload (blocks of {o['block_bytes']} bytes; arena registered: "
                  f"{o['arena_registered']}, pinned: {o['arena_is_pinned']}):", "",
                  "| copy | copies | GB/s | pinned memcpy GB/s | ratio |", "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['copies']} | {r['gbps']} | {r['pinned_gbps']} | "
                  f"{r['ratio']} |" for r in o["rows"]]
    t = s.get("ttft", {})
    if "speedup" in t:
        lines += ["", "| TTFT | tokens | recompute s | full hit s | speed-up | max logprob diff |",
                  "|---|---|---|---|---|---|",
                  f"| HF adapter ({t['dtype']}) | {t['tokens']} | {t['recompute_s']} | "
                  f"{t['full_hit_s']} | {t['speedup']} | {t['max_logprob_diff']:.2e} |"]
    errors = [f"{name}: {sec['error']}" for name, sec in s.items() if "error" in sec]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=("cuda", "cpu"))
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out")
    p.add_argument("--quick", action="store_true", help="small sizes (CI)")
    p.add_argument("--budget", type=float, default=510.0, help="seconds for the whole run")
    p.add_argument("--tokens", type=int, default=0, help="TTFT prompt (default 8192; quick 512)")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]),
                   help="the repository (tests/, pyproject.toml)")
    p.add_argument("--case", help="run one sanitizer case for CODEC and exit")
    args = p.parse_args(argv)
    if args.case:
        return case(args.case)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    check = Check(args)
    # measurements first (about two minutes), then the tests, then the sanitizer runs
    # with what is left of the budget
    for name, fn in (("env", env), ("kernels", kernels), ("offload", offload), ("ttft", ttft),
                     ("tests", tests), ("sanitizer", sanitizer)):
        check.section(name, lambda fn=fn: fn(check))
    result = check.result
    result["seconds"] = round(time.monotonic() - check.start, 1)
    result["targets"] = targets(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
