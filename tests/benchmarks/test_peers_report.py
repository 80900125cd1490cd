"""benchmarks.peers in process: the workload's byte checks and the runner's summary."""

import pytest

from benchmarks.peers.catalog import BY_NAME
from benchmarks.peers.report import SystemRun, markdown, summarize
from benchmarks.peers.sys_memcpy import MemcpySystem
from benchmarks.peers.system import run_round, warm_up
from benchmarks.peers.workload import Buffers, Workload

pytestmark = pytest.mark.unit

W = Workload(blocks=4, block_bytes=4096, rounds=3, lookup_calls=2)


def test_stamp_changes_every_block_and_check_catches_a_stale_get():
    bufs = Buffers.of(W)
    before = bufs.src.copy()
    bufs.stamp(1)
    changed = (bufs.src != before).reshape(W.blocks, -1).any(axis=1)
    assert changed.all()  # every block differs from the last round's
    bufs.dst[:] = before  # a GET that returned the previous round's bytes
    assert not bufs.check()
    bufs.dst[:] = bufs.src
    assert bufs.check()
    bufs.clear()
    assert not bufs.check() and (bufs.dst == 0xA5).all()


def test_memcpy_round_checks_bytes():
    system = MemcpySystem(W, Buffers.of(W))
    system.start()
    assert warm_up(system).bytes_ok
    result = run_round(system, 0)
    assert result.bytes_ok and result.put_s > 0 and result.get_s > 0 and result.lookup_s is None


def _run(name: str, put_s: list[float], lookup_s=None) -> SystemRun:
    run = SystemRun(BY_NAME[name], "python")
    warm = {"put_s": 1, "get_s": 1, "get_alloc_s": None, "lookup_s": lookup_s,
            "bytes_ok": True, "lookup_ok": True}
    run.started({"ready": True, "info": {}, "get_destination": "kept buffer",
                 "lookup_call": "x" if lookup_s else None, "warm": warm})
    for i, t in enumerate(put_s):
        run.add_round({"result": {**warm, "put_s": t, "get_s": 2 * t}}, load=1.0 + i)
    return run


def test_summary_medians_ratios_and_failures():
    memcpy = _run("memcpy", [0.1, 0.3, 0.2])
    shm = _run("kvstore-shm", [0.4, 0.4, 0.9], lookup_s=0.001)
    lmc = _run("lmcache", [0.8, 0.8, 0.8], lookup_s=0.004)
    bad = _run("redis", [0.5])
    bad.add_round({"result": {"put_s": 1, "get_s": 1, "get_alloc_s": None, "lookup_s": 0.1,
                              "bytes_ok": False, "lookup_ok": True}}, load=1.0)
    missing = SystemRun(BY_NAME["mooncake"], "python")
    missing.started({"not_installed": "mooncake: No module named 'mooncake'"})
    s = summarize(W, [memcpy, shm, lmc, bad, missing], (1, 1, 1), (2, 2, 2))
    rows = {r["system"]: r for r in s["rows"]}
    assert rows["memcpy"]["put_gbps"] == float(f"{W.nbytes / 0.2 / 1e9:.4g}")
    assert rows["kvstore-shm"]["put_vs_memcpy"] == 0.5  # 0.4 s against 0.2 s
    assert rows["kvstore-shm"]["put_gbps_best"] == float(f"{W.nbytes / 0.4 / 1e9:.4g}")
    versus = s["kvstore_shm_vs_lmcache"]
    assert {k: versus[k] for k in ("put", "get", "lookup_speedup")} == {
        "put": 2.0, "get": 2.0, "lookup_speedup": 4.0}
    assert versus["meets"] == {"put": True, "get": True, "lookup_speedup": True}
    assert rows["redis"]["status"] == "failed" and "bytes differ" in rows["redis"]["reason"]
    assert "put_gbps" not in rows["redis"]  # a failed system gets no numbers
    assert rows["mooncake"]["status"] == "not installed"
    text = markdown(W, s)
    assert "| Redis + hiredis | failed |" in text and "not installed" in text
