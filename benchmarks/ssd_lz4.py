"""Does lz4 pay on KV blocks? Ratio and speed of lz4 on KV-shaped payloads.

    python -m benchmarks.ssd_lz4 [--layers 4] [--json PATH]

Each payload is one store block ``[L, 2, T=256, H=8, D=128]`` encoded as the
codecs of DESIGN.md would store it. There are no model weights on this
machine, so the values are synthetic: normal with per-channel scales drawn
log-normal (KV caches have outlier channels), which is what decides lz4's
fate: lz4 finds repeated byte strings, and the low mantissa bytes of such
values never repeat. Rows: ``lz4_ratio`` (stored/raw, lz4.block default
mode), what ``compression="auto"`` stores, and lz4 compress/decompress GB/s
with ``memcpy`` of the same bytes as the baseline.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import base_parser, best_seconds, gbps, print_table, write_json
from kvstore.ssd.compress import compress, decompress


def kv_values(layers: int, tokens: int = 256, heads: int = 8, dim: int = 128, seed: int = 0):
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0.0, 1.0, size=(layers, 2, 1, heads, dim)))
    return (rng.standard_normal((layers, 2, tokens, heads, dim)) * scale).astype(np.float32)


def payloads(layers: int) -> dict[str, np.ndarray]:
    import torch

    x = kv_values(layers)
    t = torch.from_numpy(x)
    fp16 = x.astype(np.float16)
    padded = fp16.copy()
    padded[:, :, padded.shape[2] // 2 :] = 0  # last half of the tokens are padding
    sparse = fp16.copy()
    sparse[np.abs(sparse) < 0.5] = 0  # pruned small values
    absmax = np.abs(x).max(axis=-1, keepdims=True)  # int8 per token and head
    int8 = np.round(x / np.maximum(absmax, 1e-6) * 127).astype(np.int8)
    q4 = np.clip(np.round(x / np.maximum(absmax, 1e-6) * 7), -8, 7).astype(np.int8) & 0xF
    int4 = (q4[..., 0::2] | (q4[..., 1::2] << 4)).astype(np.uint8)
    fp8 = (t / t.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6) * 448).to(torch.float8_e4m3fn)
    return {
        "fp16 normal, outlier channels": fp16,
        "bf16 normal, outlier channels": t.to(torch.bfloat16).view(torch.int16).numpy(),
        "fp16, last half of tokens zero": padded,
        "fp16, |x|<0.5 pruned to 0": sparse,
        "fp16 rounded to 1/8 (low entropy)": (np.round(x * 8) / 8).astype(np.float16),
        "fp8 e4m3 (per token-head scale)": fp8.view(torch.uint8).numpy(),
        "int8 per token-head": int8,
        "int4 packed": int4,
        "zeros": np.zeros_like(fp16),
    }


def rows(layers: int = 4) -> list[dict]:
    out = []
    for name, arr in payloads(layers).items():
        raw = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        n = raw.nbytes
        packed, stored = compress(raw, "lz4")
        ratio = len(stored) / n if packed else 1.0
        auto, _ = compress(raw, "auto")
        dst = np.empty_like(raw)
        memcpy = best_seconds(lambda raw=raw, dst=dst: np.copyto(dst, raw), repeat=5)
        comp = best_seconds(lambda raw=raw: compress(raw, "lz4"), repeat=3)
        row = {
            "name": "lz4", "payload": name, "block_bytes": n, "lz4_ratio": round(ratio, 3),
            "auto_stores": "lz4" if auto else "raw",
            "gbps": gbps(n, comp), "baseline": "memcpy", "baseline_gbps": gbps(n, memcpy),
            "ratio": memcpy / comp,
        }
        if packed:
            row["decompress_gbps"] = gbps(
                n, best_seconds(lambda s=stored, n=n: decompress(s, n), repeat=3))
        out.append(row)
    return out


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args(argv)
    table = rows(args.layers)
    print_table(table, ["payload", "block_bytes", "lz4_ratio", "auto_stores", "gbps",
                        "decompress_gbps", "baseline_gbps"],
                title="lz4 on KV blocks (gbps: lz4 compress; baseline: memcpy)")
    if args.json:
        write_json(args.json, "ssd_lz4", table)


if __name__ == "__main__":
    main()
