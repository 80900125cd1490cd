"""KVStoreConnector over tcp to a ``kvstore serve`` daemon, and that daemon killed.

Request A stores through the daemon; B loads from it and must match B
recomputed after the daemon was killed (SIGKILL, between requests): with no
store the connector reports misses, vLLM computes everything, and B still
completes in bounded time.
"""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed", allow_module_level=True)
if importlib.util.find_spec("kvstore.transport.remote") is None:
    pytest.skip("the tcp carrier (kvstore.transport) is not there", allow_module_level=True)

from kvstore.client import KVClient  # noqa: E402
from kvstore.client.vllm_scheduler import request_extra  # noqa: E402
from kvstore.client.vllm_store import close_shared_client  # noqa: E402
from kvstore.layout import KVLayout  # noqa: E402
from tests.client import vllm_engine as ve  # noqa: E402

pytestmark = pytest.mark.integration

HIT = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kvstore serve exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("kvstore serve did not listen in time")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    port = free_port()
    folder = tmp_path_factory.mktemp("daemon")
    cmd = [sys.executable, "-m", "kvstore", "serve", "--listen", f"tcp://127.0.0.1:{port}",
           "--admin", f"127.0.0.1:{free_port()}", "--metrics", f"127.0.0.1:{free_port()}",
           "--cpu-bytes", "256MiB", "--ssd-bytes", "0", "--ssd-dir", str(folder)]
    env = dict(os.environ, XDG_RUNTIME_DIR=str(folder), XDG_CACHE_HOME=str(folder))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        yield proc, f"tcp://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def llm(local_model_dir, daemon):
    _, url = daemon
    engine = ve.make_llm(local_model_dir, url)
    yield engine
    ve.shutdown_llm(engine)
    close_shared_client(url)


def test_tcp_hit_matches_recompute_and_survives_a_killed_daemon(llm, daemon):
    proc, url = daemon
    prefix, b = ve.prompts(seed=1)
    ve.generate(llm, prefix + [7, 8, 9], salt="a", max_tokens=1)

    layout = KVLayout(ve.MODEL_ID, num_layers=8, num_kv_heads=4, head_dim=64, dtype="float32",
                      block_tokens=ve.BLOCK_TOKENS)
    with KVClient.connect(url) as client:
        salt = request_extra(type("R", (), {"cache_salt": "a"})())
        assert client.namespace(layout).lookup(prefix, salt) == HIT

    hit = ve.generate(llm, b, salt="a")
    assert hit.num_cached_tokens == HIT

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    start = time.monotonic()
    after = ve.generate(llm, b, salt="a")
    seconds = time.monotonic() - start
    assert after.num_cached_tokens == 0  # nothing to load: recomputed
    assert seconds < 120
    assert after.token_ids == hit.token_ids
    assert ve.max_logprob_diff(after, hit) <= 1e-5
    print(f"\nB after the daemon was killed: recomputed in {seconds:.2f}s")
