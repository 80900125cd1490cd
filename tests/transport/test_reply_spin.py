"""ReplySpin: the synchronous client's spin-then-sleep wait for a reply (no wall-clock bounds)."""

from __future__ import annotations

import socket

import pytest

from kvstore.transport import reply_spin
from kvstore.transport.reply_spin import BACKOFF, MISSES, ReplySpin

pytestmark = pytest.mark.unit


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(True)  # as the client's channel: the spin must never block
    a.settimeout(None)
    yield a, b
    a.close()
    b.close()


def buf():
    return memoryview(bytearray(16))


def test_a_ready_reply_is_received_without_sleeping(pair):
    a, b = pair
    b.send(b"xyz")
    spin = ReplySpin(budget_s=0.5)
    view = buf()
    assert spin.recv_into(a, view) == 3 and bytes(view[:3]) == b"xyz"
    assert (spin.hits, spin.misses, spin.skipped) == (1, 0, 0)


def test_a_closed_peer_is_a_zero_byte_receive(pair):
    a, b = pair
    b.close()
    assert ReplySpin(budget_s=0.5).recv_into(a, buf()) == 0


def test_off_never_receives(pair):
    a, b = pair
    b.send(b"x")  # even a ready socket: the caller's own receive reads it
    spin = ReplySpin(budget_s=0.0)
    assert spin.recv_into(a, buf()) is None
    assert (spin.hits, spin.misses, spin.skipped) == (0, 0, 0)
    assert a.recv(1) == b"x"


def test_silent_peer_misses_then_backs_off_then_tries_again(pair):
    a, b = pair
    spin = ReplySpin(budget_s=1e-5)
    for _ in range(MISSES):
        assert spin.recv_into(a, buf()) is None  # returns although the socket blocks
    assert spin.misses == MISSES
    b.send(b"x")
    for _ in range(BACKOFF):  # backing off: no receive at all, even with data there
        assert spin.recv_into(a, buf()) is None
    assert spin.skipped == BACKOFF
    assert spin.recv_into(a, buf()) == 1  # spinning again after the back-off
    assert spin.hits == 1


def test_a_hit_resets_the_run_of_misses(pair):
    a, b = pair
    spin = ReplySpin(budget_s=1e-5)
    for _ in range(MISSES - 1):
        assert spin.recv_into(a, buf()) is None
    b.send(b"x")
    assert spin.recv_into(a, buf()) == 1
    for _ in range(MISSES - 1):  # a fresh run: not yet backing off
        assert spin.recv_into(a, buf()) is None
    assert spin.skipped == 0


@pytest.mark.parametrize("raw, micros", [("", reply_spin.DEFAULT_SPIN_US), ("0", 0.0),
                                         ("50", 50.0), ("junk", reply_spin.DEFAULT_SPIN_US),
                                         ("-5", 0.0), ("1e9", 10_000.0)])
def test_budget_from_env(monkeypatch, raw, micros):
    monkeypatch.setenv("KVSTORE_REPLY_SPIN_US", raw)
    assert reply_spin.budget_from_env() == pytest.approx(micros * 1e-6)
