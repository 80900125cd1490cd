"""HostBuffers: ``ns.get``'s result memory, handed to one live tensor at a time and reused
once every tensor and view on it is gone."""

import gc
import os
import random
import threading

import pytest
import torch

from kvstore.client.host_buffers import HUGE_PAGE, HostBuffers

pytestmark = pytest.mark.unit


def test_a_dropped_result_is_reused_with_its_pages():
    pool = HostBuffers(keep_bytes=64 << 20)
    a = pool.tensor((4 << 20,), torch.uint8)
    ptr = a.data_ptr()
    del a
    b = pool.tensor((4 << 20,), torch.uint8)
    assert b.data_ptr() == ptr and pool.reused == 1


def test_a_live_view_keeps_the_buffer_from_the_next_result():
    pool = HostBuffers(keep_bytes=64 << 20)
    a = pool.tensor((8, 1 << 19), torch.float16)
    row = a[3]
    ptr = a.data_ptr()
    del a
    gc.collect()
    b = pool.tensor((8, 1 << 19), torch.float16)
    assert b.data_ptr() != ptr and pool.reused == 0
    row.fill_(7)
    b.fill_(1)
    assert bool((row == 7).all())  # b never wrote into the view's memory
    b_ptr = b.data_ptr()
    del row, b
    c = pool.tensor((8, 1 << 19), torch.float16)
    assert pool.reused == 1 and c.data_ptr() in (ptr, b_ptr)


def test_no_buffer_is_held_by_two_live_results():
    seed = int(os.environ.get("KVSTORE_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rnd = random.Random(seed)
    pool = HostBuffers(keep_bytes=32 << 20)
    live: list[torch.Tensor] = []
    for step in range(300):
        if live and rnd.random() < 0.5:
            live.pop(rnd.randrange(len(live)))
        else:
            t = pool.tensor((rnd.choice([1, 3, 4, 5]) << 20,), torch.uint8)
            t.fill_(step % 251)
            live.append(t)
        spans = sorted((t.data_ptr(), t.data_ptr() + t.numel()) for t in live)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), step
    for t in live:  # every live result still holds what it was filled with
        assert int(t[0]) == int(t[-1])
    assert pool.free_bytes <= 32 << 20


def test_the_free_list_keeps_at_most_keep_bytes_and_drops_the_oldest():
    pool = HostBuffers(keep_bytes=6 << 20)
    results = [pool.tensor((2 << 20,), torch.uint8) for _ in range(5)]
    ptrs = [t.data_ptr() for t in results]
    del results
    assert pool.free_bytes == 6 << 20  # three 2 MiB buffers kept: the last three returned
    again = [pool.tensor((2 << 20,), torch.uint8) for _ in range(3)]
    assert {t.data_ptr() for t in again} <= set(ptrs)


def test_a_much_larger_free_buffer_is_not_given_to_a_small_result():
    pool = HostBuffers(keep_bytes=64 << 20)
    big = pool.tensor((16 << 20,), torch.uint8)
    del big
    small = pool.tensor((2 << 20,), torch.uint8)
    assert pool.reused == 0 and small.numel() == 2 << 20


@pytest.mark.parametrize("nbytes", [100, 4096, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 5])
def test_buffers_are_aligned_like_arena_slots(nbytes):
    pool = HostBuffers()
    t = pool.tensor((nbytes,), torch.uint8)
    assert t.data_ptr() % (HUGE_PAGE if nbytes >= HUGE_PAGE else 4096) == 0


def test_threads_taking_and_dropping_never_share_a_buffer():
    pool = HostBuffers(keep_bytes=16 << 20)
    errors: list[str] = []

    def work(k: int) -> None:
        for i in range(200):
            t = pool.tensor((1 << 20,), torch.uint8)
            mark = (k * 31 + i) % 251
            t.fill_(mark)
            if not bool((t == mark).all()):
                errors.append(f"thread {k} step {i}: another thread wrote into its buffer")
            del t

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and pool.reused > 0
    assert pool.free_bytes <= 16 << 20


def test_ns_get_results_stay_intact_while_held_and_reuse_memory_once_dropped():
    from kvstore import KVLayout
    from kvstore.client import KVClient
    from kvstore.client.host_buffers import HOST_BUFFERS

    layout = KVLayout("host-buffers", num_layers=2, num_kv_heads=2, head_dim=64,
                      dtype="float16", block_tokens=256)  # 128 KiB blocks
    with KVClient.connect("embedded", cpu_bytes="64MiB") as client:
        ns = client.namespace(layout)
        prompts = [torch.arange(1024, dtype=torch.int32) + 5000 * k for k in range(3)]
        kvs = [torch.full(layout.kv_shape(1024), float(k + 1), dtype=torch.float16)
               for k in range(3)]
        for toks, kv in zip(prompts, kvs):
            assert ns.put(toks, kv) == 1024
        held = [ns.get(toks)[1] for toks in prompts]  # three live results
        for kv, got in zip(kvs, held):
            assert torch.equal(got, kv)
        ptr = held[1].data_ptr()
        reused = HOST_BUFFERS.reused
        del held[1]
        n, again = ns.get(prompts[2])
        assert n == 1024 and again.data_ptr() == ptr and HOST_BUFFERS.reused == reused + 1
        assert torch.equal(again, kvs[2])
        assert torch.equal(held[0], kvs[0]) and torch.equal(held[1], kvs[2])  # untouched
