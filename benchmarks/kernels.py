"""Kernel throughput: pack+encode and decode+unpack per codec vs a plain copy.

    python -m benchmarks.kernels [--json PATH] [--device cpu|cuda] [--layers N]
                                 [--blocks S] [--dtype float16|bfloat16|float32]
                                 [--engine vllm_flash|vllm_cpu|vllm_cpu_amx]

GB/s counts the *uncompressed* bytes of the store blocks moved (S blocks of
L x 2 x T x H x D), so a codec and the copy are compared on the same work; the
baseline is ``torch`` copying those bytes on the same device, timed in the same
run call by call interleaved with the row's operation (so a busy shared machine
slows both alike), and ``ratio`` = GB/s / baseline. Engine caches are vLLM's
flash layout with 16-token blocks by default, or vLLM's CPU layouts with
32-token blocks (``--engine vllm_cpu``: K transposed; ``vllm_cpu_amx``: bf16
tiles; both run on the torch reference). On CUDA it also measures offload:
pack + device-to-host of the payloads into pinned memory against torch's pinned
copy of the raw blocks (and host-to-device + unpack on the way back).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import print_table, write_json
from kvstore.kernels import CODECS, EngineLayout, pack_paged, payload_nbytes, unpack_paged
from kvstore.layout import KVLayout

COLUMNS = ["name", "op", "codec", "backend", "block_bytes", "gbps", "baseline", "ratio"]


def _once(fn, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(fn, baseline, device: torch.device, min_time: float = 0.3,
            max_reps: int = 25) -> tuple[float, float]:
    """Median seconds per call of ``fn`` and of ``baseline``, interleaved call by
    call so both see the same machine (this one is shared), after a warm-up."""
    fn()
    baseline()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: list[float] = []
    base: list[float] = []
    while len(times) < 3 or (sum(times) + sum(base) < min_time and len(times) < max_reps):
        times.append(_once(fn, device))
        base.append(_once(baseline, device))
    return statistics.median(times), statistics.median(base)


def run(device: torch.device, layers: int, blocks: int, dtype: str, backend: str | None,
        kind: str = "vllm_flash"):
    layout = KVLayout("bench", layers, 8, 128, dtype, 256)
    engine = EngineLayout(kind, 16 if kind == "vllm_flash" else 32)
    R = layout.block_tokens // engine.block_size
    num_blocks = blocks * R * 2
    gen = torch.Generator().manual_seed(0)
    caches = [torch.randn(engine.cache_shape(num_blocks, layout), generator=gen)
              .to(layout.torch_dtype).to(device) for _ in range(layers)]
    ids = torch.randperm(num_blocks, generator=gen)[: blocks * R].tolist()
    targets = torch.randperm(num_blocks, generator=gen)[: blocks * R].tolist()
    total = blocks * layout.block_nbytes
    name = backend or ("cuda" if device.type == "cuda" else "reference")

    raw = torch.empty(total, dtype=torch.uint8, device=device)
    raw_dst = torch.empty_like(raw)

    def copy():
        raw_dst.copy_(raw)

    rows: list[dict] = []

    def row(op, codec, fn, baseline_fn, backend_name=name):
        seconds, base_seconds = measure(fn, baseline_fn, device)
        if fn is baseline_fn:  # a baseline row: one figure, ratio 1
            seconds = base_seconds = (seconds + base_seconds) / 2
        gbps, baseline = total / seconds / 1e9, total / base_seconds / 1e9
        rows.append(dict(name=f"{op}/{codec}", op=op, codec=codec, backend=backend_name,
                         engine=kind,
                         block_bytes=layout.block_nbytes, gbps=gbps, baseline=baseline,
                         ratio=gbps / baseline))

    row("copy", "-", copy, copy, "torch")

    outs = {}
    for codec in CODECS:
        out = torch.empty((blocks, payload_nbytes(layout, codec)), dtype=torch.uint8,
                          device=device)
        outs[codec] = out

        def pack(out=out, codec=codec):
            pack_paged(caches, ids, layout, codec, engine, out=out, backend=backend)

        def unpack(out=out, codec=codec):
            unpack_paged(out, caches, targets, layout, codec, engine, backend=backend)

        row("pack", codec, pack, copy)
        row("unpack", codec, unpack, copy)

    if device.type == "cuda":
        host = torch.empty(total, dtype=torch.uint8).pin_memory()

        def d2h():
            host.copy_(raw, non_blocking=True)

        def h2d():
            raw.copy_(host, non_blocking=True)

        row("d2h", "-", d2h, d2h, "torch")
        row("h2d", "-", h2d, h2d, "torch")
        for codec in CODECS:
            out = outs[codec]
            n = out.numel()
            staged = host[:n].view(out.shape)

            def offload(out=out, staged=staged, codec=codec):
                pack_paged(caches, ids, layout, codec, engine, out=out, backend=backend)
                staged.copy_(out, non_blocking=True)

            def reload(out=out, staged=staged, codec=codec):
                out.copy_(staged, non_blocking=True)
                unpack_paged(out, caches, targets, layout, codec, engine, backend=backend)

            row("pack+d2h", codec, offload, d2h)
            row("h2d+unpack", codec, reload, h2d)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=None,
                        help="layers per block (default 4 on cpu, 32 on cuda)")
    parser.add_argument("--blocks", type=int, default=None,
                        help="store blocks per call (default 4 on cpu, 16 on cuda)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--backend", choices=["reference", "cuda"], default=None,
                        help="force an implementation (default: the dispatcher's choice)")
    parser.add_argument("--engine", default="vllm_flash",
                        choices=["vllm_flash", "vllm_cpu", "vllm_cpu_amx"],
                        help="engine cache layout (vllm_cpu_amx needs --dtype bfloat16)")
    args = parser.parse_args(argv)
    if args.engine == "vllm_cpu_amx" and args.dtype != "bfloat16":
        parser.error("vllm_cpu_amx caches are bfloat16 (--dtype bfloat16)")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    layers = args.layers or (32 if cuda else 4)
    blocks = args.blocks or (16 if cuda else 4)
    rows = run(device, layers, blocks, args.dtype, args.backend, args.engine)
    ebs = 16 if args.engine == "vllm_flash" else 32
    print(f"kernels on {device}: {blocks} store blocks x {layers} layers x 256 tokens x "
          f"8 heads x 128 dims, {args.dtype}, {args.engine} engine blocks of {ebs}")
    print_table(rows, COLUMNS)
    if args.json:
        write_json(args.json, "kernels", rows)


if __name__ == "__main__":
    main()
