"""An idle ucx client costs the daemon (almost) no CPU: the worker sleeps on its event fd.

Measured by CPU time from /proc (utime + stime of every daemon thread) over
a 2 s window, not by wall-clock speed: ucxx's default progress (a progress
thread plus ``sleep(0)`` waits) used 0.2-0.8 of a core here; the bound is
generous (20 %) so a loaded machine cannot fail it, the design's target
(5 %) is measured by ``benchmarks.ucx_idle``.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.proc_cpu import cpu_share
from kvstore.demo.daemon_process import DaemonProc
from kvstore.transport.remote import RemoteStore
from tests.transport.conftest import HAVE_UCX, spec_of, tokens_for

IDLE_BOUND = 0.20  # of one core


@pytest.mark.integration
def test_an_idle_ucx_client_does_not_spin_the_daemon():
    if not HAVE_UCX:
        pytest.skip("ucxx is not installed")
    d = DaemonProc(["--listen", "ucx://0.0.0.0:0", "--cpu-bytes", "64MiB", "--ssd-bytes", "0"])
    client = None
    try:
        url = d.url("ucx").replace("0.0.0.0", "127.0.0.1")
        client = RemoteStore.connect(url, strict=True, timeout=30)
        spec = spec_of()
        ns = client.register(spec)
        toks = tokens_for(3, 4)
        assert client.lookup(ns, toks) == 0  # the connection is up and has been used
        share = cpu_share(d.pid, 2.0)
        print(f"daemon CPU with an idle ucx client: {share:.1%} of a core")
        assert share < IDLE_BOUND, f"the daemon used {share:.0%} of a core with an idle ucx client"
        # after the idle window the daemon still wakes for the next request
        blocks = [np.full(spec.block_bytes, i, np.uint8) for i in range(4)]
        assert client.put(ns, toks, blocks) == len(toks)
        assert client.lookup(ns, toks) == len(toks)
        n, got = client.get_into(ns, toks)
        assert n == len(toks) and bytes(got) == b"".join(b.tobytes() for b in blocks)
    finally:
        if client is not None:
            client.close()
        d.terminate()
