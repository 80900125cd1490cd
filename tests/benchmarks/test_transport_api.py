"""``benchmarks.transport`` on tiny blocks: the public API's rows exist (paged calls and the
embedded store included), each beside its baseline."""

import json

import pytest

from benchmarks import transport

pytestmark = pytest.mark.integration


def test_transport_benchmark_times_the_public_api_against_its_baselines(tmp_path):
    out = tmp_path / "transport.json"
    transport.main(["--block-bytes", "16KiB", "--batch", "2", "--repeat", "1",
                    "--carriers", "embedded,shm,tcp", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    got = {(r["name"], r["op"], r["baseline"]) for r in rows}
    for carrier, base in (("shm", "memcpy"), ("tcp", "raw_socket")):
        for op in ("put", "get_into"):
            assert (carrier, op, base) in got
        assert (carrier, "lookup", "raw_socket") in got
    assert ("shm", "get", "memcpy") in got  # ns.get against memcpy into a new buffer
    for carrier in ("embedded", "shm"):  # the vLLM connector's paged calls, same bytes
        for op in ("put", "get_into", "get", "put_paged", "get_paged", "put_paged_shuffled",
                   "get_paged_shuffled"):
            assert (carrier, op, "memcpy") in got
    speeds = [r for r in rows if r["name"] in ("embedded", "shm", "tcp") and r["op"] != "lookup"]
    assert speeds and all(r["gbps"] > 0 and r["ratio"] > 0 for r in speeds)
