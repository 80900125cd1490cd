"""Codec ``none`` moves bytes without torch's (threaded) copies, on every call users make.

The issue's rule: ``ns.put`` / ``ns.get`` / ``ns.get_into`` and the paged calls
copy raw bytes with numpy in the calling thread, so their speed never depends
on torch's thread count. Here torch's copy kernels raise while those calls run
(embedded and shm), and every byte must still arrive.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from kvstore import KVLayout
from kvstore.client import KVClient, paged_io
from kvstore.client.host_buffers import HUGE_PAGE, host_empty
from kvstore.errors import InvalidArgument
from kvstore.kernels import EngineKind, EngineLayout, page_runs

pytestmark = pytest.mark.unit

SEED = int(os.environ.get("KVSTORE_TEST_SEED", "11"))
LAYOUT = KVLayout("one-thread", num_layers=2, num_kv_heads=2, head_dim=16, dtype="bfloat16",
                  block_tokens=16)


@pytest.fixture(params=["embedded", "shm"])
def ns(request, tmp_path):
    if request.param == "embedded":
        with KVClient.connect("embedded", cpu_bytes="32MiB") as c:
            yield c.namespace(LAYOUT)
        return
    from kvstore.store import StoreConfig, TieredStore
    from kvstore.transport.server import ServerThread

    with TieredStore(StoreConfig(cpu_bytes="32MiB")) as store:
        with ServerThread(store, [f"shm://{tmp_path}/kv.sock"]) as srv:
            with KVClient.connect(srv.urls[0], strict=True) as c:
                space = c.namespace(LAYOUT)
                assert space.uses_leases
                yield space


@pytest.fixture
def no_torch_copies(monkeypatch):
    """Make torch's copy kernels fail for the duration of the block that asks."""
    def refuse(*args, **kwargs):
        raise AssertionError("a torch copy ran on the codec-none path")

    class Guard:
        def __enter__(self):
            monkeypatch.setattr(torch.Tensor, "copy_", refuse)
            monkeypatch.setattr(torch.Tensor, "index_copy_", refuse)
            monkeypatch.setattr(torch, "index_select", refuse)

        def __exit__(self, *exc):
            monkeypatch.undo()

    return Guard()


def _kv(tokens: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(LAYOUT.kv_shape(tokens), generator=gen).to(torch.bfloat16)


def test_put_get_and_get_into_copy_in_numpy(ns, no_torch_copies):
    print(f"KVSTORE_TEST_SEED={SEED}")
    g = torch.Generator().manual_seed(SEED)
    kv = _kv(64, g)
    tokens = np.arange(64, dtype=np.uint32) + SEED
    out = torch.zeros(LAYOUT.kv_shape(64), dtype=torch.bfloat16)
    with no_torch_copies:
        assert ns.put(tokens, kv[:, :, :64]) == 64
        n, got = ns.get(tokens)
        assert ns.get_into(tokens, out) == 64
    assert n == 64 and torch.equal(got.view(torch.int16), kv.view(torch.int16))
    assert torch.equal(out.view(torch.int16), kv.view(torch.int16))


def test_put_from_a_strided_tensor_and_get_into_a_strided_one(ns, no_torch_copies):
    g = torch.Generator().manual_seed(SEED + 1)
    wide = _kv(48, g)
    kv = wide[:, :, 8:40]  # a window of a longer cache: strided across tokens
    host = torch.zeros(LAYOUT.kv_shape(40), dtype=torch.bfloat16)
    out = host[:, :, 4:36]
    tokens = np.arange(32, dtype=np.uint32) + 1000 + SEED
    with no_torch_copies:
        assert ns.put(tokens, kv) == 32
        assert ns.get_into(tokens, out) == 32
    assert torch.equal(out.view(torch.int16), kv.view(torch.int16))
    assert bool((host[:, :, :4] == 0).all()) and bool((host[:, :, 36:] == 0).all())


def test_paged_calls_copy_in_numpy(ns, no_torch_copies):
    g = torch.Generator().manual_seed(SEED + 2)
    engine = EngineLayout(EngineKind.VLLM_FLASH, 4)
    shape = (2, 24, 4, LAYOUT.num_kv_heads, LAYOUT.head_dim)
    src = [torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(LAYOUT.num_layers)]
    dst = [torch.zeros_like(c) for c in src]
    ids = torch.randperm(24, generator=g)[:8].tolist()
    ids_out = torch.randperm(24, generator=g)[:8].tolist()
    tokens = np.arange(32, dtype=np.uint32) + 5000 + SEED
    with no_torch_copies:
        assert paged_io.put_paged(ns, tokens, src, ids, engine) == 32
        assert paged_io.get_paged(ns, tokens, dst, ids_out, engine) == 32
    for s, d in zip(src, dst):
        assert torch.equal(d[:, ids_out].view(torch.int16), s[:, ids].view(torch.int16))


def test_paged_calls_move_runs_of_blocks_in_numpy(ns, no_torch_copies, monkeypatch):
    """Block tables with runs (ascending, descending) and loose blocks: the runs move
    as one numpy copy each (eligible at any length here), and every byte lands."""
    monkeypatch.setattr(page_runs, "MIN_RUN_BYTES", 0)
    g = torch.Generator().manual_seed(SEED + 3)
    engine = EngineLayout(EngineKind.VLLM_FLASH, 4)
    shape = (2, 40, 4, LAYOUT.num_kv_heads, LAYOUT.head_dim)
    src = [torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(LAYOUT.num_layers)]
    dst = [torch.zeros_like(c) for c in src]
    ids = [9, 10, 11, 12, 13, 14, 2, 30, 29, 28, 0, 1]  # 3 store blocks of 4 engine blocks
    ids_out = [20, 21, 22, 23, 39, 5, 6, 7, 8, 33, 32, 31]
    tokens = np.arange(48, dtype=np.uint32) + 7000 + SEED
    with no_torch_copies:
        assert paged_io.put_paged(ns, tokens, src, ids, engine) == 48
        assert paged_io.get_paged(ns, tokens, dst, ids_out, engine) == 48
    for s, d in zip(src, dst):
        assert torch.equal(d[:, ids_out].view(torch.int16), s[:, ids].view(torch.int16))
        others = [i for i in range(40) if i not in ids_out]
        assert bool((d[:, others] == 0).all())


def test_paged_calls_refuse_out_of_range_ids_and_move_nothing(ns):
    g = torch.Generator().manual_seed(SEED + 4)
    engine = EngineLayout(EngineKind.VLLM_FLASH, 4)
    shape = (2, 12, 4, LAYOUT.num_kv_heads, LAYOUT.head_dim)
    src = [torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(LAYOUT.num_layers)]
    tokens = np.arange(32, dtype=np.uint32) + 9000 + SEED
    with pytest.raises(InvalidArgument, match="block ids must lie in"):
        paged_io.put_paged(ns, tokens, src, [0, 1, 2, 3, 4, 5, 6, 12], engine)
    assert ns.lookup(tokens) == 0  # the lease was let go, nothing committed
    assert paged_io.put_paged(ns, tokens, src, list(range(8)), engine) == 32
    dst = [torch.zeros_like(c) for c in src]
    with pytest.raises(InvalidArgument, match="block ids must lie in"):
        paged_io.get_paged(ns, tokens, dst, [11, 10, 9, 8, 7, 6, 5, -3], engine)
    assert all(bool((d == 0).all()) for d in dst)
    assert paged_io.get_paged(ns, tokens, dst, [11, 10, 9, 8, 0, 1, 2, 3], engine) == 32
    for s, d in zip(src, dst):
        assert torch.equal(d[:, [11, 10, 9, 8, 0, 1, 2, 3]], s[:, :8])


@pytest.mark.parametrize("nbytes", [64, 5000, HUGE_PAGE, 3 * HUGE_PAGE + 8])
def test_host_empty_starts_on_a_page_like_the_arena_slots(nbytes):
    t = host_empty((nbytes // 2,), torch.float16)
    align = HUGE_PAGE if t.nbytes >= HUGE_PAGE else 4096
    assert t.data_ptr() % align == 0 and t.numel() == nbytes // 2
    t.fill_(3)  # the whole tensor is writable memory of its own
    assert bool((t == 3).all())
