"""The connector's paged path on CUDA flash caches (needs a GPU; ``scripts/gpu_check.sh``).

vLLM's CUDA build does not travel to the GPU machine, so this is what stands
in for the connector there: ``put_paged`` / ``get_paged`` and the worker's
``PagedTransfers`` on CUDA FlashAttention caches (NHD and HND strides), with
the CUDA kernels, through the embedded store, shm and tcp, byte for byte
against the same calls on CPU copies of the caches (the torch reference), and
the asynchronous save's order on a real ``CudaTimeline``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kvstore.client import KVClient, paged_io
from kvstore.client.transfer import PagedTransfers
from kvstore.kernels import CODECS, EngineLayout, pinning
from kvstore.layout import KVLayout

pytestmark = pytest.mark.gpu

L, H, D, BS, BT, NB = 4, 8, 128, 16, 256, 96
R = BT // BS


def _caches(hnd: bool, dtype, seed: int, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(L):
        if hnd:
            t = torch.randn((2, NB, H, BS, D), generator=g).to(dtype).to(device)
            out.append(t.permute(0, 1, 3, 2, 4))
        else:
            out.append(torch.randn((2, NB, BS, H, D), generator=g).to(dtype).to(device))
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.cpu().contiguous().view(torch.uint8),
                       b.cpu().contiguous().view(torch.uint8))


@pytest.fixture(params=["embedded", "shm", "tcp"])
def url(request, tmp_path):
    if request.param == "embedded":
        yield "embedded"
        return
    from kvstore.store.config import StoreConfig
    from kvstore.store.tiered_store import TieredStore
    from kvstore.transport.server import ServerThread

    store = TieredStore(StoreConfig(cpu_bytes="512MiB"))
    listen = f"shm://{tmp_path}/kv.sock" if request.param == "shm" else "tcp://127.0.0.1:0"
    srv = ServerThread(store, [listen]).start()
    try:
        yield srv.urls[0]
    finally:
        srv.stop()
        store.close()


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("hnd", [False, True], ids=["nhd", "hnd"])
def test_put_get_on_cuda_flash_caches_match_the_reference(url, codec, hnd):
    kwargs = {"cpu_bytes": "512MiB"} if url == "embedded" else {"timeout": 30}
    with KVClient.connect(url, **kwargs) as c:
        ns = c.namespace(KVLayout(f"gpu-{codec}-{hnd}", L, H, D, "bfloat16", BT), codec=codec)
        engine = EngineLayout.vllm_flash(BS)
        src = _caches(hnd, torch.bfloat16, seed=1)
        toks = np.arange(3 * BT + 7, dtype=np.uint32)
        ids = torch.randperm(NB)[: 3 * R + 1].tolist()
        assert paged_io.put_paged(ns, toks, src, ids, engine) == 3 * BT
        n, payloads = ns.get_blocks(toks)  # what the CUDA kernels stored
        ref = paged_io.pack_paged([s.cpu() for s in src], ids[: 3 * R], ns.layout, codec,
                                  engine, backend="reference")
        assert n == 3 * BT
        assert all(torch.equal(torch.frombuffer(bytearray(p), dtype=torch.uint8), r)
                   for p, r in zip(payloads, ref))
        dst = _caches(hnd, torch.bfloat16, seed=2)
        dst_ref = [d.cpu() for d in dst]
        targets = torch.randperm(NB)[: 3 * R].tolist()
        assert paged_io.get_paged(ns, toks, dst, targets, engine, skip=BS) == 3 * BT
        got_ref = paged_io.get_paged(ns, toks, dst_ref, targets, engine, skip=BS)
        assert got_ref == 3 * BT
        torch.cuda.synchronize()
        assert all(_same(a, b) for a, b in zip(dst, dst_ref))


def test_async_save_commits_after_the_copy_and_pins_the_arena():
    with KVClient.connect("embedded", cpu_bytes="256MiB") as c:
        ns = c.namespace(KVLayout("gpu-async", L, H, D, "float16", BT))
        engine = EngineLayout.vllm_flash(BS)
        caches = _caches(False, torch.float16, seed=3)
        moves = PagedTransfers(ns, caches, engine)
        assert pinning.enabled()
        arena = c.backend.arena()
        assert arena.size > 0
        toks = np.arange(4 * BT, dtype=np.uint32)
        moves.begin_step()
        moves.open_saves([("r", toks, list(range(4 * R)), b"")])
        for layer in range(L):
            moves.save_layer(layer)
        moves.flush_saves()  # returns at once; the host thread commits after the copy
        moves.drain()
        assert ns.lookup(toks) == 4 * BT
        log = list(moves.tl.log)
        copied = [op for op in log if op.kind == "record" and op.label == "copied:r"][0]
        commit = [op for op in log if op.kind == "host" and op.label == "commit:r"][0]
        assert commit.event == copied.event and log.index(copied) < log.index(commit)
        assert sum(1 for op in log if op.kind == "copy") == 4
        dst = [torch.zeros_like(x) for x in caches]
        loads = PagedTransfers(ns, dst, engine, moves.tl)
        loads.begin_step()
        assert loads.load(toks, list(range(4 * R))) == 4 * BT
        loads.wait_all_layers()
        loads.drain()
        torch.cuda.synchronize()
        assert all(_same(a, b) for a, b in zip(dst, caches))
        assert c.backend.lease_count == 0
