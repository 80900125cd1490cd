"""Promoter alone: submitted promotions run on its thread, in order; close stops it."""

import threading

from kvstore.store.promotion import Promoter, Promotion


def test_promotions_run_in_order_and_close_waits_for_them():
    seen, thread = [], []

    def promote(item):
        seen.append(item.key)
        thread.append(threading.current_thread().name)

    p = Promoter(promote)
    for i in range(5):
        p.submit(Promotion(b"f" * 16, bytes([i]), None, b"x"))
    p.close()
    assert seen == [bytes([i]) for i in range(5)] and set(thread) == {"kvstore-promote"}
    p.close()  # idempotent


def test_a_failing_promotion_does_not_stop_the_thread():
    seen = []

    def promote(item):
        if item.key == b"bad":
            raise RuntimeError("boom")
        seen.append(item.key)

    p = Promoter(promote)
    p.submit(Promotion(b"f" * 16, b"bad", None, b""))
    p.submit(Promotion(b"f" * 16, b"good", None, b""))
    p.close()
    assert seen == [b"good"]
