"""The vLLM connector's failures while the daemon is down: one line each, once per outage.

A real daemon (on a thread) serves the connector's two halves over shm and is
stopped; then saves and lookups go on as vLLM would call them. Every record is
one line with no traceback (the traceback only at DEBUG), and the outage is
reported once, not once per step.
"""

import importlib.util
import logging
import re
import tempfile

import numpy as np
import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)

from kvstore.client import KVClient  # noqa: E402
from kvstore.client.vllm_meta import KVStoreConnectorMetadata, SaveSpec  # noqa: E402
from kvstore.client.vllm_scheduler import SchedulerSide  # noqa: E402
from kvstore.client.vllm_settings import EngineGeometry  # noqa: E402
from kvstore.client.vllm_worker import WorkerSide  # noqa: E402
from kvstore.kernels import EngineLayout  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402
from kvstore.store.config import StoreConfig  # noqa: E402
from kvstore.store.tiered_store import TieredStore  # noqa: E402
from tests.admin.conftest import DaemonThread, daemon_config  # noqa: E402
from tests.client.test_vllm_sides import request  # noqa: E402

pytestmark = pytest.mark.integration

BS, BT, L, H, D = 32, 64, 2, 2, 32


@pytest.fixture
def stopped_daemon_ns():
    """A namespace registered with a daemon that has since stopped."""
    folder = tempfile.mkdtemp(prefix="kvs-outage-")
    daemon = DaemonThread(daemon_config(listen=[f"shm://{folder}/kv.sock"]),
                          TieredStore(StoreConfig(cpu_bytes=16 << 20))).start()
    client = KVClient.connect(daemon.url, timeout=2.0, connect_timeout=0.3,
                              retry_interval=0.05)
    try:
        ns = client.namespace(KVLayout("outage", L, H, D, "float32", block_tokens=BT))
        assert ns.lookup(np.arange(BT)) == 0  # the daemon answered
        daemon.stop()
        yield ns
    finally:
        client.close()
        daemon.stop()


def worker_for(ns) -> WorkerSide:
    worker = WorkerSide(ns, EngineGeometry(("l0", "l1"), BS, H, D, torch.float32), None)
    worker.register({name: torch.randn(8, H, BS, 2 * D) for name in ("l0", "l1")})
    worker._engine = EngineLayout.vllm_cpu(BS, "vec")  # no engine to ask for its ISA
    return worker


def one_line_records(records) -> list[logging.LogRecord]:
    for r in records:
        assert "\n" not in r.getMessage(), r.getMessage()
        assert r.exc_info is None, f"a traceback at {r.levelname}: {r.getMessage()}"
    return [r for r in records if r.levelno >= logging.WARNING]


def test_saves_and_lookups_with_the_daemon_down_log_one_line_per_outage(stopped_daemon_ns,
                                                                         caplog):
    ns = stopped_daemon_ns
    worker = worker_for(ns)
    side = SchedulerSide(ns, BS, BT, load=True, save=True)
    with caplog.at_level(logging.INFO, logger="kvstore"):
        for i in range(5):  # five engine steps: a save and a lookup each
            tokens = np.arange(2 * BT, dtype=np.uint32) + 100 * i
            meta = KVStoreConnectorMetadata(saves=[SaveSpec(f"s{i}", tokens, [0, 1, 2, 3])])
            worker.save_layer("l0", worker.caches[0], meta)
            worker.save_layer("l1", worker.caches[1], meta)
            worker.flush_saves(meta)
            assert side.lookup(request(f"q{i}", np.arange(2 * BT + 1) + 100 * i), 0) == 0
    warnings = one_line_records(caplog.records)
    assert worker.stats.saved_tokens == 0
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per outage
    assert any("unavailable" in r.getMessage() for r in warnings)


def test_other_failures_are_one_line_each_and_the_traceback_waits_for_debug(caplog):
    with KVClient.connect("embedded", cpu_bytes="16MiB") as client:
        ns = client.namespace(KVLayout("bad", L, H, D, "float32", block_tokens=BT))
        side = SchedulerSide(ns, BS, BT, load=True, save=True)
        bad = request("q", np.arange(2 * BT + 1))
        bad.prompt_token_ids = [-1] * (2 * BT + 1)  # not token ids: the lookup fails
        with caplog.at_level(logging.INFO, logger="kvstore"):
            assert side.lookup(bad, 0) == 0
        (warning,) = one_line_records(caplog.records)
        assert "lookup failed" in warning.getMessage()
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="kvstore"):
            assert side.lookup(bad, 0) == 0
        assert any(r.exc_info for r in caplog.records)  # at DEBUG the traceback is there


def test_the_connector_logs_in_vllms_format_when_nothing_else_is_configured(monkeypatch):
    import io

    from kvstore.client.vllm_connector import log_like_vllm

    # a handler like the one vLLM's logging config gives its "vllm" logger, writing to ``out``
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(filename)s:%(lineno)d]"
                                           " %(message)s", "%m-%d %H:%M:%S"))
    theirs, ours = logging.getLogger("vllm"), logging.getLogger("kvstore")
    monkeypatch.setattr(theirs, "handlers", [handler])
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # no application config
    monkeypatch.setattr(ours, "handlers", [])
    monkeypatch.setattr(ours, "level", logging.NOTSET)
    log_like_vllm()
    assert ours.handlers == [handler]
    logging.getLogger("kvstore.client.vllm_worker").warning("kvstore: saves of this step failed")
    (line,) = out.getvalue().splitlines()
    assert line.startswith("WARNING") and "saves of this step failed" in line
    assert re.search(r"\d\d-\d\d \d\d:\d\d:\d\d", line)  # vLLM's time stamp
