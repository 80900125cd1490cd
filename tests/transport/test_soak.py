"""Soak: 16 clients of mixed ops per carrier, 0 errors, the daemon's memory bounded.

The default run is a few seconds per carrier; ``-m slow`` runs 16 clients x 60 s
(also ``python -m benchmarks.transport_soak``)."""

from __future__ import annotations

import pytest

from benchmarks.transport_soak import soak
from tests.transport.conftest import CARRIERS, HAVE_UCX

pytestmark = pytest.mark.integration


def check(row: dict) -> None:
    assert row["errors"] == 0, row["first_errors"]
    assert row["wrong_data"] == 0
    assert row["ops"] > 0
    assert row["exit_code"] == 0
    assert row["rss_shmem_max_mib"] <= row["arena_mib"] + 8  # arena pages only
    assert row["rss_anon_growth_mib"] < 64  # no heap growth once warm


def carriers() -> list[str]:
    return CARRIERS if HAVE_UCX else [c for c in CARRIERS if c != "ucx"]


def test_soak_short(sockdir):
    for row in soak(carriers(), clients=16, seconds=3, cpu_bytes="64MiB", folder=sockdir):
        check(row)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_long(sockdir):
    for row in soak(carriers(), clients=16, seconds=60, cpu_bytes="64MiB", folder=sockdir):
        check(row)
