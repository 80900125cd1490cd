"""The connector's GPU path, run on CPU flash-layout caches (no GPU, no vLLM engine).

The worker side gets what vLLM would give it on a GPU: FlashAttention
``[2, nb, bs, H, D]`` or FlashInfer ``[nb, 2, bs, H, D]`` caches (NHD and HND
strides), the metadata the scheduler side builds, and the hooks in vLLM's
order (``start_load_kv``, then per layer ``wait_for_layer_load`` / the layer's
attention / ``save_kv_layer``, then ``wait_for_save``). Its timeline is a
``HostTimeline(separate_memory=True, defer=True)``: the "device" is CPU
tensors, payloads stage in "device" buffers and cross to the arena by counted
copies, and host callbacks (commit, release) wait until the test drains them,
as the CUDA host thread would while the copies are in flight. The tests check
the bytes, the copies, and the recorded order of streams and events.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from kvstore.client import KVClient  # noqa: E402
from kvstore.client.vllm_meta import KVStoreConnectorMetadata, LoadSpec, SaveSpec  # noqa: E402
from kvstore.client.vllm_settings import EngineGeometry  # noqa: E402
from kvstore.client.vllm_worker import WorkerSide  # noqa: E402
from kvstore.errors import LayoutMismatch  # noqa: E402
from kvstore.kernels import pinning  # noqa: E402
from kvstore.kernels.streams import HostTimeline, order_of  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402
from kvstore.store_api import Capabilities  # noqa: E402

BS, BT, L, H, D, NB = 16, 64, 3, 2, 32, 40  # vLLM block, store block, layers, heads, dim, blocks
R = BT // BS
NAMES = tuple(f"layer.{i}" for i in range(L))


def flash_caches(kind: str, dtype=torch.float16, seed=0, zero=False):
    """One cache per layer as vLLM's CUDA backends allocate it, on the CPU.

    ``flash`` [2, nb, bs, H, D]; ``flash_hnd`` the same logical shape over a physical
    [2, nb, H, bs, D]; ``flashinfer`` [nb, 2, bs, H, D] over a physical [nb, 2, H, bs, D]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(L):
        if kind == "flash":
            t = torch.randn((2, NB, BS, H, D), generator=g)
        elif kind == "flash_hnd":
            t = torch.randn((2, NB, H, BS, D), generator=g).permute(0, 1, 3, 2, 4)
        else:
            t = torch.randn((NB, 2, H, BS, D), generator=g).permute(0, 1, 3, 2, 4)
        t = t.to(dtype)
        out.append(t.zero_() if zero else t)
    return out


def blocks_of(kind: str, caches, ids) -> torch.Tensor:
    """[L, 2, len(ids), BS, H, D] of engine blocks ``ids``, read by the test's own indexing."""
    if kind == "flashinfer":
        return torch.stack([c[ids].transpose(0, 1) for c in caches])
    return torch.stack([c[:, ids] for c in caches])


class NoLeases:
    """The embedded store seen as a carrier with put/get only (as tcp)."""

    capabilities = Capabilities(leases=False)

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        if name.startswith("lease") or name in ("read_slot", "commit_lease"):
            raise AttributeError(name)
        return getattr(self._store, name)


@pytest.fixture
def client():
    with KVClient.connect("embedded", cpu_bytes="64MiB") as c:
        yield c


def make_worker(client, kind, codec="none", dtype=torch.float16, zero=False, timeline=None):
    ns = client.namespace(KVLayout("gpu-path", L, H, D, str(dtype).removeprefix("torch."), BT),
                          codec=codec)
    geometry = EngineGeometry(NAMES, BS, H, D, dtype)
    tl = timeline or HostTimeline(separate_memory=True, defer=True)
    worker = WorkerSide(ns, geometry, vllm_config=None, strict=True, timeline=tl)
    caches = flash_caches(kind, dtype, seed=1, zero=zero)
    worker.register(dict(zip(NAMES, caches)))
    return worker, ns, tl, caches


def forward(worker, tl, meta):
    """One engine step in vLLM's hook order; the 'attention' of each layer is a logged
    kernel on the compute stream."""
    worker.load(meta)
    for name in NAMES:
        worker.wait_layer(name)
        tl.kernel(tl.compute(), f"attention:{name}")
        worker.save_layer(name, None, meta)
    worker.flush_saves(meta)


def ops(tl, **match):
    return [op for op in tl.log if all(getattr(op, k) == v for k, v in match.items())]


@pytest.mark.parametrize("kind", ["flash", "flash_hnd", "flashinfer"])
def test_save_then_load_on_flash_caches_bytes_copies_and_order(client, kind):
    worker, ns, tl, caches = make_worker(client, kind)
    assert worker.kind == ("flashinfer" if kind == "flashinfer" else "flash")
    store = client.backend
    tokens = np.arange(2 * BT + 5, dtype=np.uint32)
    src_ids = [7, 3, 30, 12, 5, 6, 25, 1, 9]  # 2 whole store blocks + a partial one
    save = KVStoreConnectorMetadata(saves=[SaveSpec("r", tokens[: 2 * BT], src_ids[: 2 * R])])
    forward(worker, tl, save)

    # the engine did not wait: nothing is committed while the copies are "in flight"
    assert tl.pending == 1 and store.lease_count == 1
    assert ns.lookup(tokens) == 0
    tl.drain()
    assert store.lease_count == 0 and ns.lookup(tokens) == 2 * BT
    assert worker.stats.saved_tokens == 2 * BT

    log = list(tl.log)
    for i, name in enumerate(NAMES):  # each layer packed after its attention wrote it
        pos = order_of(log, dict(kind="kernel", stream="compute", label=f"attention:{name}"),
                       dict(kind="record", stream="compute", label=f"written:layer{i}"),
                       dict(kind="wait", stream="kvstore", label=f"written:layer{i}"),
                       dict(kind="kernel", stream="kvstore", label=f"pack:r:layer{i}"))
        assert -1 not in pos, (name, pos)
        written = log[pos[1]]
        assert log[pos[2]].event == written.event
        if i + 1 < L:  # packed before the next layer's attention: overlap, not after the step
            nxt = order_of(log, dict(kind="kernel", label=f"attention:{NAMES[i + 1]}"))[0]
            assert pos[3] < nxt
    packed = ops(tl, kind="record", label="packed")[0]
    copied = ops(tl, kind="record", label="copied:r")[0]
    d2h = ops(tl, kind="copy", label="d2h")
    assert len(d2h) == 2 and all(c.nbytes == ns.spec.block_bytes for c in d2h)  # one per block
    commit = ops(tl, kind="host", label="commit:r")[0]
    assert commit.event == copied.event  # committed after the copy's event, nothing earlier
    pos_packed, pos_copy, pos_copied, pos_commit = (log.index(x) for x in
                                                    (packed, d2h[-1], copied, commit))
    assert pos_packed < pos_copy < pos_copied < pos_commit

    # step 2: load into other blocks; vLLM holds the first engine block already
    dst_ids = [31, 32, 33, 34, 35, 36, 37, 38]
    before = [c.clone() for c in caches]
    load = KVStoreConnectorMetadata(loads=[LoadSpec("s", tokens[: 2 * BT], dst_ids, skip=BS)])
    start = len(tl.log)
    forward(worker, tl, load)
    log = list(tl.log)[start:]
    # the forward first waits for the last step's packs (vLLM may reuse those blocks)
    assert log[0].kind == "wait" and log[0].stream == "compute" and log[0].event == packed.event
    h2d = [op for op in log if op.kind == "copy"]
    assert [op.label for op in h2d] == ["h2d", "h2d"]  # one copy per block, nothing else
    pos = order_of(log, dict(kind="record", stream="compute", label="load-ready"),
                   dict(kind="wait", stream="kvstore", label="load-ready"),
                   dict(kind="copy", label="h2d"), dict(kind="record", label="h2d-done"),
                   dict(kind="kernel", label="unpack:layer0"),
                   dict(kind="record", label="loaded:layer0"))
    assert -1 not in pos, pos
    for i, name in enumerate(NAMES):  # the forward waits for each layer before its attention
        loaded = [op for op in log if op.kind == "record" and op.label == f"loaded:layer{i}"][0]
        w, a = order_of(log, dict(kind="wait", stream="compute", event=loaded.event),
                        dict(kind="kernel", label=f"attention:{name}"))
        assert -1 not in (w, a) and log.index(loaded) < w < a
    assert store.lease_count == 1  # the read lease is held until its copy completed
    tl.drain()
    assert store.lease_count == 0
    release = ops(tl, kind="host", label="release")[0]
    assert release.event == [op for op in log if op.label == "h2d-done"][0].event
    assert worker.take_load_errors() == set()

    got = blocks_of(kind, caches, dst_ids[1:])
    want = blocks_of(kind, before, src_ids[1: 2 * R])
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(blocks_of(kind, caches, [dst_ids[0]]), blocks_of(kind, before, [31]))
    untouched = [b for b in range(NB) if b not in dst_ids[1:]]
    assert torch.equal(blocks_of(kind, caches, untouched), blocks_of(kind, before, untouched))


@pytest.mark.parametrize("codec", ["fp8_e4m3", "int8", "int4"])
def test_quantized_codecs_move_whole_blocks_after_the_last_layer(client, codec):
    worker, ns, tl, caches = make_worker(client, "flash_hnd", codec, dtype=torch.bfloat16)
    tokens = np.arange(3 * BT, dtype=np.uint32)
    ids = list(range(3 * R))
    forward(worker, tl, KVStoreConnectorMetadata(saves=[SaveSpec("r", tokens, ids)]))
    tl.drain()
    log = list(tl.log)
    packs = [op for op in log if op.kind == "kernel" and op.label.startswith("pack")]
    assert [op.label for op in packs] == ["pack:r"]  # one pack of all layers
    last = order_of(log, dict(kind="kernel", label=f"attention:{NAMES[-1]}"))[0]
    assert last < log.index(packs[0])
    assert len(ops(tl, kind="copy", label="d2h")) == 3
    n, kv = ns.get(tokens)  # the store's decode of what the kernels packed
    assert n == 3 * BT

    dst = [31, 32, 33, 34, 35, 36, 37, 38, 39, 0, 2, 4]
    forward(worker, tl, KVStoreConnectorMetadata(loads=[LoadSpec("s", tokens, dst)]))
    tl.drain()
    log = list(tl.log)
    unpacks = [op for op in log if op.kind == "kernel" and op.label.startswith("unpack")]
    assert [op.label for op in unpacks] == ["unpack"]
    loaded = ops(tl, kind="record", label="loaded")[-1]
    waits = [op for op in log if op.kind == "wait" and op.event == loaded.event]
    assert len(waits) == 1  # the first layer's wait covers all (one event for all layers)
    got = blocks_of("flash_hnd", caches, dst)  # [L, 2, 12, BS, H, D]
    got = got.reshape(L, 2, 3 * BT, H, D)
    assert torch.equal(got, kv)


def test_saves_over_a_carrier_without_leases(client):
    """tcp/ucx: one copy per block into a pinned host buffer, put after the copy's event."""
    client.backend = NoLeases(client.backend)
    worker, ns, tl, caches = make_worker(client, "flash", "int8")
    tokens = np.arange(2 * BT, dtype=np.uint32)
    forward(worker, tl, KVStoreConnectorMetadata(saves=[SaveSpec("r", tokens, list(range(8)))]))
    assert ns.lookup(tokens) == 0
    tl.drain()
    assert ns.lookup(tokens) == 2 * BT
    copied = ops(tl, kind="record", label="copied:r")[0]
    assert ops(tl, kind="host", label="commit:r")[0].event == copied.event
    assert len(ops(tl, kind="copy", label="d2h")) == 2
    dst = list(range(20, 28))
    forward(worker, tl, KVStoreConnectorMetadata(loads=[LoadSpec("s", tokens, dst)]))
    tl.drain()
    n, kv = ns.get(tokens)
    got = blocks_of("flash", caches, dst).reshape(L, 2, 2 * BT, H, D)
    assert n == 2 * BT and torch.equal(got, kv)


def test_host_caches_run_the_same_path_without_staging(client):
    """CPU flash caches with the host timeline (what a CPU engine gets): no copies, the
    kernels write the arena slots directly, everything completes in the call."""
    worker, ns, tl, caches = make_worker(client, "flash", timeline=HostTimeline())
    tokens = np.arange(BT, dtype=np.uint32)
    forward(worker, tl, KVStoreConnectorMetadata(saves=[SaveSpec("r", tokens, [4, 5, 6, 7])]))
    assert ns.lookup(tokens) == BT and not ops(tl, kind="copy")
    forward(worker, tl, KVStoreConnectorMetadata(loads=[LoadSpec("s", tokens, [8, 9, 10, 11])]))
    assert torch.equal(blocks_of("flash", caches, [8, 9, 10, 11]),
                       blocks_of("flash", caches, [4, 5, 6, 7]))
    assert client.backend.lease_count == 0 and not ops(tl, kind="copy")


def test_a_device_engine_pins_the_arena(client):
    """A timeline with device memory registers the store's arena with the driver."""
    calls = []
    previous = pinning.set_registrar(lambda addr, size: calls.append(("reg", addr, size)),
                                     lambda addr: calls.append(("unreg", addr)))
    try:
        pinning.reset()
        worker, ns, tl, _ = make_worker(client, "flash")
        assert worker.moves is not None  # built on first use
        arena = client.backend.arena()
        assert ("reg", calls[0][1], arena.size) == calls[0]
        assert pinning.registered(calls[0][1])
    finally:
        pinning.reset()
        pinning.set_registrar(*previous)
    assert ("unreg", calls[0][1]) in calls


def test_a_load_that_shrank_reports_the_rest(client):
    worker, ns, tl, caches = make_worker(client, "flash")
    tokens = np.arange(3 * BT, dtype=np.uint32)
    forward(worker, tl, KVStoreConnectorMetadata(saves=[SaveSpec("r", tokens[:BT], [0, 1, 2, 3])]))
    tl.drain()
    dst = list(range(20, 32))
    forward(worker, tl, KVStoreConnectorMetadata(loads=[LoadSpec("s", tokens, dst)]))
    tl.drain()
    assert worker.take_load_errors() == set(dst[R:])
    assert torch.equal(blocks_of("flash", caches, dst[:R]), blocks_of("flash", caches, [0, 1, 2, 3]))


@pytest.mark.parametrize("shape,dtype,match", [
    ((NB, BS, 576), torch.float16, "MLA"),  # a latent cache
    ((2, NB, BS, H, D), torch.uint8, "fp8"),  # kv_cache_dtype="fp8"
    ((2, NB, BS, H + 1, D), torch.float16, "cannot serve"),
])
def test_unservable_caches_are_refused_at_registration(client, shape, dtype, match):
    ns = client.namespace(KVLayout("gpu-path", L, H, D, "float16", BT))
    worker = WorkerSide(ns, EngineGeometry(NAMES, BS, H, D, torch.float16), None)
    with pytest.raises(LayoutMismatch, match=match):
        worker.register({n: torch.zeros(shape, dtype=dtype) for n in NAMES})


def test_no_cuda_cache_raises_not_implemented(client):
    """A cache on another device (meta stands in for CUDA): flash layouts are taken, a
    CPU-backend layout there is refused with a message, never NotImplementedError."""
    ns = client.namespace(KVLayout("gpu-path", L, H, D, "float16", BT))
    worker = WorkerSide(ns, EngineGeometry(NAMES, BS, H, D, torch.float16), None)
    worker.register({n: torch.empty((2, NB, BS, H, D), dtype=torch.float16, device="meta")
                     for n in NAMES})
    assert worker.kind == "flash" and worker.engine.kind.value == "vllm_flash"
    with pytest.raises(LayoutMismatch, match="CPU-layout cache on meta"):
        worker.register({n: torch.empty((NB, H, BS, 2 * D), dtype=torch.float16,
                                        device="meta") for n in NAMES})


def test_full_cuda_graphs_wait_for_every_layer_before_the_forward(client):
    """A full CUDA graph replays attention without the per-layer hooks: the forward's
    stream then waits for every layer's load at the end of start_load_kv."""
    from types import SimpleNamespace

    worker, ns, tl, caches = make_worker(client, "flash")
    tokens = np.arange(BT, dtype=np.uint32)
    forward(worker, tl, KVStoreConnectorMetadata(saves=[SaveSpec("r", tokens, [0, 1, 2, 3])]))
    tl.drain()
    worker.layerwise = False
    worker.vllm_config = SimpleNamespace(compilation_config=SimpleNamespace(
        cudagraph_mode=SimpleNamespace(has_full_cudagraphs=lambda: True)))
    from kvstore.client.vllm_worker import layerwise_hooks

    assert layerwise_hooks(worker.vllm_config) is False and layerwise_hooks(None) is True
    start = len(tl.log)
    worker.load(KVStoreConnectorMetadata(loads=[LoadSpec("s", tokens, [8, 9, 10, 11])]))
    log = list(tl.log)[start:]
    loaded = {op.event for op in log if op.kind == "record" and op.label.startswith("loaded")}
    waited = {op.event for op in log if op.kind == "wait" and op.stream == "compute"}
    assert loaded and loaded <= waited  # before any attention runs


def test_a_finished_requests_last_save_is_reported_once_enqueued(client):
    """main's save_decode marks a finished request's last save (``SaveSpec.last``); its
    blocks may go once the save is packed, before it reached the store: the next
    forward waits for the pack."""
    worker, ns, tl, caches = make_worker(client, "flash")
    tokens = np.arange(BT, dtype=np.uint32)
    last = SaveSpec("done", tokens, [0, 1, 2, 3])
    last.last = True  # the field save_decode adds
    forward(worker, tl, KVStoreConnectorMetadata(saves=[last, SaveSpec("r", tokens, [4, 5, 6, 7])]))
    assert worker.take_saved() == {"done"} and worker.take_saved() == set()
    assert tl.pending == 2  # reported while the copies are still in flight
    tl.drain()
    assert ns.lookup(tokens) == BT
