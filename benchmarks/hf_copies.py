"""The HF adapter's copies as an engine calls them, beside memcpy of the same bytes (one run).

``python -m benchmarks.hf_copies [--tokens 4096] [--rounds 7] [--carriers embedded,shm,tcp]``

``HFEngine`` stores a prompt's KV with ``HFPrefixCache.store(tokens, cache,
buffer)`` (the cache lives in the engine's reused ``KVBuffer``) and loads a
cached prefix with ``restore(tokens, buffer=..., spare=...)``, which decodes
the blocks straight into that buffer. Both transpose while they copy: the
buffer is head-major ``[L, 2, 1, H, T, D]`` (a transformers cache), a block
is token-major ``[L, 2, B, H, D]``. Timed here with torch's default threads,
on CPU tensors, over each carrier:

* ``store``: fresh tokens each call, so every block is written;
* ``restore``: the same cached prefix each call (byte-checked once);
* baselines, same bytes, same process, same rounds: ``memcpy`` (one
  contiguous numpy copy into a kept buffer), ``transpose (store)`` and
  ``transpose (restore)`` (numpy's single-threaded copy of the whole prefix
  between the head-major and the token-major order: the least any store
  must do to take or hand back a transformers cache) and, with tcp, a raw
  loopback socket moving the same blocks to and from a child process.

Rounds interleave every task in a shuffled order; times are medians over
rounds. ``x_baseline`` compares tcp with the raw socket and the rest with
memcpy, all from the same run.
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import torch

from benchmarks.common import base_parser, print_table, write_json
from benchmarks.lookup import timed
from benchmarks.transport_baselines import SocketClient
from kvstore.client.hf_adapter import HFPrefixCache
from kvstore.client.hf_reserved import KVBuffer
from kvstore.client.kvclient import KVClient
from kvstore.demo.daemon_process import DaemonProc
from kvstore.layout import KVLayout

FILL_STORES = 8


def layout_of(args) -> KVLayout:
    return KVLayout("bench-hf-copies", args.layers, args.kv_heads, args.head_dim, "float16",
                    args.block_tokens)


def filled_buffer(layout: KVLayout, tokens: int, seed: int) -> KVBuffer:
    """An engine's KV buffer holding ``tokens`` tokens of random KV (every page touched)."""
    buf = KVBuffer(layout, capacity=tokens + layout.block_tokens)
    gen = torch.Generator().manual_seed(seed)
    buf.tensor.view(torch.int16).copy_(torch.randint(-30000, 30000, buf.tensor.shape,
                                                     dtype=torch.int16, generator=gen))
    return buf


def baselines(layout: KVLayout, source: KVBuffer, tokens: int) -> dict:
    """memcpy of the same bytes, and numpy's copy of the same transposes in one thread.

    The transposes copy ``head_dim`` runs as opaque items (numpy's fastest
    strided copy here, 1.5x its element-wise one), the whole prefix at once:
    what a store must do at the least, without its block boundaries.
    """
    canonical = source.canonical(tokens).view(torch.int16).numpy()  # [L, 2, T, H, D], strided
    src = np.ones(canonical.nbytes, dtype=np.uint8)
    dst = np.ones(canonical.nbytes, dtype=np.uint8)
    blocks = np.ones(canonical.shape, dtype=np.int16)  # token-major, contiguous
    heads = np.ones(source.tensor.shape, dtype=np.int16)[:, :, 0, :, :tokens]  # [L, 2, H, T, D]
    run = np.dtype((np.void, layout.head_dim * 2))

    def as_runs(a: np.ndarray) -> np.ndarray:
        return a.view(run)[..., 0]

    def store_transpose() -> None:
        np.copyto(as_runs(blocks), as_runs(canonical))

    def restore_transpose() -> None:
        np.copyto(as_runs(heads).swapaxes(2, 3), as_runs(blocks))

    return {"memcpy": lambda: np.copyto(dst, src), "transpose (store)": store_transpose,
            "transpose (restore)": restore_transpose}


def socket_baselines(layout: KVLayout, nblocks: int, closers: list) -> dict:
    """A raw loopback socket moving the same blocks to and from a child process."""
    sock = SocketClient(layout.block_nbytes, nblocks)
    closers.append(sock.close)
    blocks = [np.ones(layout.block_nbytes, dtype=np.uint8) for _ in range(nblocks)]
    dst = np.ones(layout.block_nbytes * nblocks, dtype=np.uint8)
    return {"raw socket put": lambda: sock.put(blocks), "raw socket get": lambda: sock.get(dst)}


def baseline_of(task: str) -> str:
    """The same-run baseline a task is compared with: a raw socket for tcp, else memcpy."""
    if task.startswith("tcp "):
        return "raw socket put" if task.split()[-1] == "store" else "raw socket get"
    return "memcpy"


def carrier_tasks(tasks: dict, name: str, url: str, layout: KVLayout, tokens: int,
                  source: KVBuffer, closers: list, **connect):
    """Add ``name``'s store and restore to ``tasks``; returns the step that caches the
    restored prefix (run once every carrier has filled the arena)."""
    client = KVClient.connect(url, strict=True, **connect)
    closers.append(client.close)
    ns = client.namespace(layout)
    adapter = HFPrefixCache(ns, layout)
    rng = np.random.default_rng(sum(name.encode()))
    cached = rng.integers(0, 1 << 30, tokens + 1, dtype=np.uint32).tolist()
    cache = source.cache(tokens)
    target = KVBuffer(layout)

    def store() -> None:
        fresh = rng.integers(0, 1 << 30, tokens, dtype=np.uint32).tolist()
        assert adapter.store(fresh, cache, source) == tokens, f"{name}: store dropped blocks"

    def restore() -> None:
        assert adapter.restore(cached, buffer=target, spare=1)[0] == tokens, f"{name}: evicted"

    def prepare() -> None:
        """Store the prefix ``restore`` reads (after every carrier's fill), kept from eviction
        as an engine keeps a hot system prompt."""
        assert adapter.store(cached, cache, source) == tokens
        assert ns.hint(cached, priority=1) == tokens
        target.tensor.zero_()
        restore()
        want = source.tokens(tokens).view(torch.int16)
        assert torch.equal(want, target.tokens(tokens).view(torch.int16)), f"{name}: bytes differ"

    for _ in range(FILL_STORES):  # cycle the arena once before anything is timed
        store()
    tasks[f"{name} store"], tasks[f"{name} restore"] = store, restore
    return prepare


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-tokens", type=int, default=256)
    parser.add_argument("--carriers", default="embedded,shm,tcp")
    args = parser.parse_args(argv)
    layout = layout_of(args)
    tokens = args.tokens // layout.block_tokens * layout.block_tokens
    source = filled_buffer(layout, tokens, seed=0)
    nbytes = tokens // layout.block_tokens * layout.block_nbytes
    # room for every carrier's cached prefix and a few stores; the stores then cycle
    # through evicted slabs (steady state: warm pages, as in an engine that has run a while)
    cpu_bytes = nbytes * 8
    tasks = baselines(layout, source, tokens)
    carriers = args.carriers.split(",")
    closers: list = []
    try:
        remote = [c for c in carriers if c != "embedded"]
        urls = {}
        if remote:
            folder = tempfile.mkdtemp(prefix="kvstore-bench-hf-")
            daemon_args = ["--cpu-bytes", str(cpu_bytes), "--ssd-bytes", "0", "--log-level",
                           "warning"]
            for c in remote:
                daemon_args += ["--listen", f"shm://{folder}/kv.sock" if c == "shm"
                                else f"{c}://127.0.0.1:0"]
            daemon = DaemonProc(daemon_args)
            closers.append(daemon.terminate)
            urls = {c: daemon.url(c) for c in remote}
        if "tcp" in carriers:
            tasks.update(socket_baselines(layout, tokens // layout.block_tokens, closers))
        prepares = []
        for c in carriers:
            extra = {"cpu_bytes": cpu_bytes, "ssd_bytes": 0} if c == "embedded" else {"timeout": 120}
            prepares.append(carrier_tasks(tasks, c, urls.get(c, "embedded"), layout, tokens,
                                          source, closers, **extra))
        for prepare in prepares:
            prepare()
        samples = timed(tasks, args.rounds, 1)
    finally:
        for close in reversed(closers):
            close()
    p50 = {name: float(np.median(values)) for name, values in samples.items()}
    rows = [{"task": name, "GB_s": nbytes / t / 1e9, "ms": t * 1e3,
             "x_memcpy": p50["memcpy"] / t, "baseline": baseline_of(name),
             "x_baseline": p50[baseline_of(name)] / t} for name, t in p50.items()]
    load = os.getloadavg()
    print_table(rows, ["task", "GB_s", "ms", "x_memcpy", "baseline", "x_baseline"],
                title=f"HFPrefixCache store/restore of {tokens} tokens ({nbytes / 2**20:.0f} MiB), "
                      f"torch threads {torch.get_num_threads()}, load average {load[0]:.2f}")
    if args.json:
        write_json(args.json, "hf_copies", rows, load_average=load, rounds=args.rounds,
                   tokens=tokens, nbytes=nbytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
