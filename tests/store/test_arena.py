import os
import subprocess
import sys

import pytest

from kvstore.store.cpu_tier import CPUTier
from kvstore.store.stale_arenas import sweep_stale
from kvstore.store.tenant_arenas import MemfdArena

from .helpers import shm_files


def test_arena_is_an_anonymous_memory_file_of_exactly_capacity_bytes_gone_on_close():
    before = shm_files()
    arena = MemfdArena(1 << 20)
    assert os.fstat(arena.fd).st_size == 1 << 20
    assert shm_files() == before  # nothing in the filesystem names it
    fd = arena.fd
    arena.close()
    arena.close()  # idempotent
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.integration
def test_subprocess_maps_the_arena_and_reads_a_slot():
    tier = CPUTier(1 << 20)
    try:
        slot = tier.alloc(4096)
        data = bytes(range(256)) * 16
        tier.write(slot, data)
        info = tier.info()  # /proc/<pid>/fd/N: openable by this uid only
        code = (
            "import mmap, os, sys;"
            f"fd = os.open({info.path!r}, os.O_RDWR);"
            f"m = mmap.mmap(fd, {info.size}); os.close(fd);"
            f"sys.stdout.write(m[{slot.offset}:{slot.offset + slot.length}].hex());"
            f"m[{slot.offset}] = 0xAB; m.close()"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert bytes.fromhex(out.stdout) == data
        assert tier.read(slot)[0] == 0xAB  # writes by the other process land in the same pages
    finally:
        tier.close()
    assert not os.path.exists(info.path)


@pytest.mark.integration
def test_sweep_stale_removes_files_of_dead_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f"kvstore-{int(dead.stdout)}-deadbeef"
    stale.write_bytes(b"x")
    live = tmp_path / f"kvstore-{os.getpid()}-cafe"
    live.write_bytes(b"x")
    assert sweep_stale(str(tmp_path)) == [str(stale)]
    assert live.exists()


def test_write_rejects_wrong_sizes():
    from kvstore.errors import InvalidArgument

    tier = CPUTier(64 << 10)
    try:
        slot = tier.alloc(512)
        with pytest.raises(InvalidArgument):
            tier.write(slot, b"x" * 511)
    finally:
        tier.close()
