"""Mooncake Store over TCP: a master, a process contributing the segment, and this client.

Everything runs in the worker's private network namespace (the runner starts
the worker under ``unshare -n`` with only loopback up; the master binds
0.0.0.0 whatever it is told), with ``MC_TCP_BIND_ADDRESS=127.0.0.1``. The
benchmark client contributes no segment: every byte crosses to the segment
process's memory. Its source and destination buffers are registered
(``register_buffer``), so PUT is ``batch_put_from`` and GET
``batch_get_into`` (zero-copy on the client side); lookup is
``batch_is_exist`` of the 64 keys.
"""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.peers.servers import free_port, port_open, stop, wait_for
from benchmarks.peers.system import NotInstalled, System
from benchmarks.peers.workload import WARM_ROUND_BASE

SETUP_TIMEOUT = 120.0


class MooncakeSystem(System):
    get_destination = "the worker's kept buffer, registered with register_buffer (batch_get_into)"
    lookup_call = "batch_is_exist of the 64 keys"

    def start(self) -> dict:
        try:
            from mooncake.store import MooncakeDistributedStore
        except ImportError as exc:
            raise NotInstalled(f"mooncake: {exc}") from exc
        master_bin = os.path.join(os.path.dirname(sys.executable), "mooncake_master")
        if not os.path.exists(master_bin):
            raise NotInstalled("mooncake_master (pip mooncake-transfer-engine-non-cuda)")
        self.master = self.segment = None
        port, metrics = free_port(), free_port()
        self.master = subprocess.Popen(
            [master_bin, "--rpc_address=127.0.0.1", f"--rpc_port={port}",
             "--enable_http_metadata_server=false", "--metrics_host=127.0.0.1",
             f"--metrics_port={metrics}"], stdout=subprocess.DEVNULL)
        wait_for(lambda: port_open(port), self.master, "mooncake_master", SETUP_TIMEOUT)
        addr = f"127.0.0.1:{port}"
        # the run's bytes and headroom (Mooncake wants at least 16 MiB)
        segment_bytes = max((self.w.rounds + 4) * self.w.nbytes, 64 << 20)
        self.segment = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.peers.mooncake_segment", addr, str(segment_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.segment.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"mooncake segment process: {line or 'exited'}")
        self.store = MooncakeDistributedStore()
        rc = self.store.setup("127.0.0.1", "P2PHANDSHAKE", 0, 16 << 20, "tcp", "", addr)
        if rc != 0:
            raise RuntimeError(f"mooncake client setup failed: {rc}")
        self.src_ptr = self.bufs.src.ctypes.data
        self.dst_ptr = self.bufs.dst.ctypes.data
        for ptr in (self.src_ptr, self.dst_ptr):
            rc = self.store.register_buffer(ptr, self.w.nbytes)
            if rc != 0:
                raise RuntimeError(f"mooncake register_buffer failed: {rc}")
        bb = self.w.block_bytes
        self.sizes = [bb] * self.w.blocks
        self.src_ptrs = [self.src_ptr + i * bb for i in range(self.w.blocks)]
        self.dst_ptrs = [self.dst_ptr + i * bb for i in range(self.w.blocks)]
        from importlib.metadata import version

        return {"mooncake": version("mooncake-transfer-engine-non-cuda"),
                "segment_bytes": segment_bytes, "protocol": "tcp"}

    def keys(self, round_id: int) -> list[str]:
        return [f"peers:{round_id}:{i}" for i in range(self.w.blocks)]

    def warm(self) -> None:
        """Store as much as the whole run does, then remove it all: the timed puts reuse the memory."""
        for k in range(self.w.rounds + 1):
            self.put(WARM_ROUND_BASE + 1 + k)
        self.store.remove_all(True)

    def put(self, round_id: int) -> None:
        rcs = self.store.batch_put_from(self.keys(round_id), self.src_ptrs, self.sizes)
        if any(rc != 0 for rc in rcs):
            raise RuntimeError(f"mooncake batch_put_from: {sorted(set(rcs))}")

    def get(self, round_id: int) -> None:
        got = self.store.batch_get_into(self.keys(round_id), self.dst_ptrs, self.sizes)
        if any(n != self.w.block_bytes for n in got):
            raise RuntimeError(f"mooncake batch_get_into: {sorted(set(got))}")

    def lookup(self, round_id: int) -> bool:
        return all(x == 1 for x in self.store.batch_is_exist(self.keys(round_id)))

    def close(self) -> None:
        try:
            if getattr(self, "store", None) is not None:
                self.store.close()
        finally:
            if getattr(self, "segment", None) is not None:
                self.segment.stdin.close()
                stop(self.segment)
            stop(getattr(self, "master", None))


def make(name: str, w, bufs) -> System:
    return MooncakeSystem(w, bufs)
