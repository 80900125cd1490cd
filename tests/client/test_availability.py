"""The soft-failure rule (kvstore.availability): a miss unless strict, an outage logged once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kvstore.availability import SoftFailures
from kvstore.errors import Draining, InvalidArgument, Timeout, Unavailable

LOGGER = logging.getLogger("tests.availability")


def fail(exc):
    def call():
        raise exc

    return call


@pytest.mark.parametrize("exc", [Unavailable("down"), Timeout("slow"), Draining("going")])
def test_offline_is_the_default_unless_strict(exc):
    assert SoftFailures(False, "d").call(fail(exc), 0) == 0
    with pytest.raises(type(exc)):
        SoftFailures(True, "d").call(fail(exc), 0)


def test_other_errors_always_raise():
    with pytest.raises(InvalidArgument):
        SoftFailures(False, "d").call(fail(InvalidArgument("bad")), 0)


def test_an_outage_is_logged_once_and_its_end_once(caplog):
    soft = SoftFailures(False, "tcp://x:1", LOGGER)
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        for _ in range(3):
            assert soft.call(fail(Unavailable("down")), (0, None)) == (0, None)
        assert soft.call(lambda: 7, 0) == 7
        assert soft.call(lambda: 8, 0) == 8
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recoveries = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(warnings) == 1 and "tcp://x:1" in warnings[0].getMessage()
    assert len(recoveries) == 1


def test_the_async_twin_follows_the_same_rule():
    async def down():
        raise Unavailable("down")

    async def answer():
        return 5

    assert asyncio.run(SoftFailures(False, "d").acall(down(), 0)) == 0
    assert asyncio.run(SoftFailures(False, "d").acall(answer(), 0)) == 5
    with pytest.raises(Unavailable):
        asyncio.run(SoftFailures(True, "d").acall(down(), 0))


def test_a_daemon_never_reached_is_one_loud_warning_naming_where_to_start_one(caplog):
    soft = SoftFailures(False, "shm:///nowhere/kv.sock", LOGGER)
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        for _ in range(3):
            assert soft.call(fail(Unavailable("no such socket")), 0) == 0
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "no daemon has answered at shm:///nowhere/kv.sock" in text
    assert "kvstore serve" in text and "tcp://127.0.0.1:7801" in text
    assert "every put is dropped" in text and "\n" not in text


def test_an_outage_after_an_answer_is_the_ordinary_warning(caplog):
    soft = SoftFailures(False, "tcp://x:1", LOGGER)
    assert soft.call(lambda: 1, 0) == 1
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        soft.call(fail(Unavailable("down")), 0)
    (warning,) = caplog.records
    assert "unavailable" in warning.getMessage() and "no daemon has answered" not in \
        warning.getMessage()


def test_a_real_client_of_a_socket_nobody_serves_says_so(caplog, tmp_path):
    import torch

    from kvstore.client import KVClient
    from kvstore.layout import KVLayout

    url = f"shm://{tmp_path}/kv.sock"
    layout = KVLayout("m", 1, 1, 8, "float16", 4)
    with caplog.at_level(logging.WARNING, logger="kvstore"):
        with KVClient.connect(url, connect_timeout=0.2, retry_interval=0.05) as client:
            ns = client.namespace(layout)
            tokens = list(range(8))
            kv = torch.zeros((1, 2, 8, 1, 8), dtype=torch.float16)
            ns.put(tokens, kv)
            assert ns.get(tokens) == (0, None)
            assert ns.lookup(tokens) == 0
    loud = [r for r in caplog.records if "no daemon has answered" in r.getMessage()]
    assert len(loud) == 1 and url in loud[0].getMessage()


def test_nested_layers_report_an_outage_once_and_no_false_recovery(caplog):
    inner = SoftFailures(False, "tcp://x:1", LOGGER)
    outer = SoftFailures(False, "tcp://x:1", LOGGER)
    assert outer.call(lambda: inner.call(lambda: 1, 0), 0) == 1  # both answered once
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        for _ in range(3):  # the inner layer absorbs the outage: the outer saw no answer
            assert outer.call(lambda: inner.call(fail(Unavailable("down")), 0), 0) == 0

        def leased():  # an inner failure logged, then raised to the outer (a write lease)
            inner.failed(Unavailable("down"), None)
            raise Unavailable("down")

        assert outer.call(leased, 0) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "unavailable" in messages[0], messages


def test_a_strict_inner_failure_is_reported_by_the_layer_that_absorbs_it(caplog):
    inner = SoftFailures(True, "node", LOGGER)  # a cluster's per-node store: strict
    outer = SoftFailures(False, "cluster c", LOGGER)

    def route():
        try:
            return inner.call(fail(Unavailable("node down")), 0)
        except Unavailable as exc:
            return outer.failed(exc, 0)

    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        assert SoftFailures(False, "client", LOGGER).call(route, 0) == 0
    assert any("cluster c" in r.getMessage() for r in caplog.records)
