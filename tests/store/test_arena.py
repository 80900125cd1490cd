import os
import subprocess
import sys

import pytest

from kvstore.store.cpu_tier import CPUTier
from kvstore.store.shm_arena import SharedArena, sweep_stale

from .helpers import shm_files


def test_arena_is_a_shared_file_of_exactly_capacity_bytes_and_removed_on_close():
    before = shm_files()
    arena = SharedArena(1 << 20)
    assert os.path.getsize(arena.path) == 1 << 20
    assert oct(os.stat(arena.path).st_mode & 0o777) == "0o600"
    assert shm_files() - before == {os.path.basename(arena.path)}
    arena.close()
    arena.close()  # idempotent
    assert shm_files() == before


@pytest.mark.integration
def test_subprocess_maps_the_arena_and_reads_a_slot():
    tier = CPUTier(1 << 20)
    try:
        slot = tier.alloc(4096)
        data = bytes(range(256)) * 16
        tier.write(slot, data)
        info = tier.info()
        code = (
            "import sys; from kvstore.store.shm_arena import attach;"
            f"a = attach({info.path!r}, {info.size}, writable=True);"
            f"v = a.slot({slot.offset}, {slot.length}); sys.stdout.write(bytes(v).hex());"
            f"v[0] = 0xAB; v.release(); a.close()"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert bytes.fromhex(out.stdout) == data
        assert tier.read(slot)[0] == 0xAB  # writes by the client land in the same pages
    finally:
        tier.close()
    assert not os.path.exists(info.path)


@pytest.mark.integration
def test_sweep_stale_removes_files_of_dead_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f"kvstore-{int(dead.stdout)}-deadbeef"
    stale.write_bytes(b"x")
    live = SharedArena(4096, str(tmp_path))
    try:
        assert sweep_stale(str(tmp_path)) == [str(stale)]
        assert os.path.exists(live.path)
    finally:
        live.close()


def test_write_rejects_wrong_sizes():
    from kvstore.errors import InvalidArgument

    tier = CPUTier(64 << 10)
    try:
        slot = tier.alloc(512)
        with pytest.raises(InvalidArgument):
            tier.write(slot, b"x" * 511)
    finally:
        tier.close()
