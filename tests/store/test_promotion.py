"""Promoter alone: submitted promotions run on its thread, in order and in batches; close stops it."""

import threading

from kvstore.store.promotion import Promoter, Promotion


def test_promotions_run_in_order_and_close_waits_for_them():
    seen, thread = [], []

    def promote(items):
        seen.extend(item.key for item in items)
        thread.append(threading.current_thread().name)
        return len(items)

    p = Promoter(promote)
    for i in range(5):
        p.submit(Promotion(b"f" * 16, bytes([i]), None, b"x"))
    p.close()
    assert seen == [bytes([i]) for i in range(5)] and set(thread) == {"kvstore-promote"}
    p.close()  # idempotent


def test_a_failing_promotion_does_not_stop_the_thread():
    seen = []

    def promote(items):
        if items[0].key == b"bad":
            started.set()
            gate.wait()  # the next one queues up meanwhile: a batch of its own
            raise RuntimeError("boom")
        seen.extend(item.key for item in items)
        return len(items)

    started, gate = threading.Event(), threading.Event()
    p = Promoter(promote)
    p.submit(Promotion(b"f" * 16, b"bad", None, b""))
    assert started.wait(10)
    p.submit(Promotion(b"f" * 16, b"good", None, b""))
    gate.set()
    p.close()
    assert seen == [b"good"]
