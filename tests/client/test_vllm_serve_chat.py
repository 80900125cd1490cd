"""``vllm serve`` with vLLM's own prefix caching off: a chat's turn 2, and a daemon killed mid-run.

One server (``--no-enable-prefix-caching``: whatever a request reuses comes
from the store) on a ``kvstore serve`` daemon at a fixed tcp port, so that a
daemon started again after a SIGKILL is at the same address.

- a two-turn chat through ``/v1/chat/completions``: turn 2 repeats turn 1's
  prompt and answer, which the connector stored (``save_decode``), and loads
  them from the daemon;
- the daemon SIGKILLed between requests: vLLM keeps answering, the same text,
  by recomputing; a daemon started again at the same address is used again
  (the next request stores, the one after loads).

Both are slow (a server start costs minutes on a busy 2-core machine).
"""

import signal

import pytest

from tests.client.vllm_serve_setup import (
    document_prompt,
    model_dir,
    report,
    skip_unless_ready,
    store_hits,
)

skip_unless_ready()

from kvstore.demo.daemon_process import DaemonProc, free_port  # noqa: E402
from kvstore.demo.document import demo_document  # noqa: E402
from kvstore.demo.vllm_server import DAEMON_ARGS, VLLMServer  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

MAX_TOKENS = 16


class RestartableDaemon:
    """``kvstore serve`` at fixed tcp and admin ports: killed and started again at one address."""

    def __init__(self, folder):
        self.folder = folder
        self.url = f"tcp://127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        self.proc: DaemonProc | None = None

    def start(self) -> None:
        self.proc = DaemonProc(["--listen", self.url, "--admin", self.admin,
                                "--metrics", f"127.0.0.1:{free_port()}", "--cpu-bytes", "512MiB",
                                "--ssd-bytes", "0", "--ssd-dir", str(self.folder),
                                *DAEMON_ARGS])

    def kill(self) -> None:
        self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.kill()  # reaps it
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc = None


@pytest.fixture(scope="module")
def folder():
    return model_dir()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = RestartableDaemon(tmp_path_factory.mktemp("daemon"))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def server(folder, daemon):
    with VLLMServer(folder, daemon.url, prefix_caching=False).start(progress=print) as s:
        s.complete("The capital of France is", max_tokens=2)  # first-request costs
        yield s


def test_chat_turn_two_loads_turn_one_from_the_store(server, daemon):
    doc = demo_document()
    first = [{"role": "user", "content": f"{doc.text[:6000]}\n\nQuestion: {doc.question}"}]
    turn1 = server.chat(first, max_tokens=MAX_TOKENS)
    report("turn 1", turn1)
    assert turn1.cached_tokens == 0
    before = store_hits(daemon.admin)
    second = first + [{"role": "assistant", "content": turn1.text},
                      {"role": "user", "content": doc.other_question}]
    turn2 = server.chat(second, max_tokens=MAX_TOKENS)
    report("turn 2", turn2)
    assert store_hits(daemon.admin) > before, "turn 2 was not served by the daemon"
    assert turn2.cached_tokens >= turn1.prompt_tokens // 256 * 256
    assert turn2.text.strip()


def test_a_killed_daemon_is_recomputed_around_then_used_again(server, daemon, folder):
    text, prompt_tokens = document_prompt(folder)
    text = "A killed daemon. " + text  # not the other test's blocks
    stored = prompt_tokens // 256 * 256
    computed = server.complete(text, max_tokens=MAX_TOKENS)
    report("daemon up (computes, stores)", computed)
    assert server.complete(text, max_tokens=MAX_TOKENS).cached_tokens >= stored

    daemon.kill()
    down = server.complete(text, max_tokens=MAX_TOKENS)
    report("daemon killed (recomputes)", down)
    assert down.cached_tokens == 0 and down.text == computed.text

    daemon.start()  # empty: a new daemon at the same address
    again = server.complete(text, max_tokens=MAX_TOKENS)
    report("daemon back (computes, stores)", again)
    hit = server.complete(text, max_tokens=MAX_TOKENS)
    report("daemon back (loads)", hit)
    assert hit.cached_tokens >= stored, "the connector did not use the daemon once it was back"
    assert store_hits(daemon.admin) > 0
    assert again.text == hit.text == computed.text
