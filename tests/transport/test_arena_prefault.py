"""ArenaPrefault: a fresh mapping gets page tables for the arena's blocks, never new pages."""

import mmap
import os

import numpy as np
import pytest

from kvstore.transport.arena_prefault import ArenaPrefault, data_ranges

pytestmark = pytest.mark.unit
SIZE = 16 << 20


def _rss_of(address: int) -> int:
    """Bytes of this process's mapping at ``address`` that are in its page tables."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("mapping not found")


@pytest.fixture
def memfd():
    fd = os.memfd_create("prefault-test")
    os.ftruncate(fd, SIZE)
    writer = mmap.mmap(fd, SIZE)
    writer[1 << 20 : 3 << 20] = b"\x01" * (2 << 20)  # two data ranges, holes around them
    writer[8 << 20 : 9 << 20] = b"\x02" * (1 << 20)
    yield fd
    writer.close()
    os.close(fd)


def test_data_ranges_are_the_written_pages(memfd):
    assert data_ranges(memfd, SIZE) == [(1 << 20, 3 << 20), (8 << 20, 9 << 20)]


def test_prefault_maps_the_data_and_leaves_the_holes(memfd):
    reader = mmap.mmap(memfd, SIZE)
    address = np.frombuffer(reader, dtype=np.uint8).ctypes.data
    assert _rss_of(address) == 0  # a fresh mapping: no page tables yet
    pre = ArenaPrefault(memfd, address, SIZE)
    assert pre.done.wait(30)
    if pre.populated == 0:
        pytest.skip("MADV_POPULATE_WRITE is not supported by this kernel")
    assert pre.populated == 3 << 20
    assert _rss_of(address) == 3 << 20
    assert data_ranges(memfd, SIZE) == [(1 << 20, 3 << 20), (8 << 20, 9 << 20)]  # nothing allocated
    assert reader[(8 << 20) + 5] == 2
    pre.stop()
    reader.close()
