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
