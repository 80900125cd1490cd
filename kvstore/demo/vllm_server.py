"""``vllm serve`` with ``KVStoreConnector`` as a child process, and a streaming client of it.

What a user runs (README, "vLLM"): vLLM's OpenAI-compatible server with our
connector named in ``--kv-transfer-config``, on a daemon's URL. The tests of
``tests/client/test_vllm_serve.py`` and ``make demo ENGINE=vllm`` drive it
through HTTP only, as any client would:

    server = VLLMServer(model_dir, "tcp://127.0.0.1:7801").start()
    reply = server.complete(prompt, max_tokens=32)   # streamed, greedy
    reply.ttft_s, reply.text, reply.cached_tokens
    server.stop()

``complete`` and ``chat`` stream (``"stream": true``) and time the first
streamed text chunk from the moment the request is sent: the
time-to-first-token a client of the server sees. ``cached_tokens`` is vLLM's
``usage.prompt_tokens_details.cached_tokens`` (the server runs with
``--enable-prompt-tokens-details``): the prompt tokens it did not compute,
loaded by the connector or found in vLLM's own prefix cache.

The server runs in float32 (``--dtype float32``): reused KV then gives the
same greedy answer as a recompute (in bf16 a third of reused answers drift
after a few tokens, vLLM's own prefix cache included).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvstore.demo.daemon_process import free_port

ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of vLLM's paged KV cache
    "HF_HUB_OFFLINE": "1",  # the model is a local folder: never ask the Hub
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_SERVER_DEV_MODE": "1",  # POST /reset_prefix_cache (empties vLLM's own cache)
}


# vLLM's connector takes a step's write lease when the forward starts and
# commits it when the forward ends: on a loaded 2-core machine a 1,500-token
# forward through `vllm serve` took 60-90 s, past the daemon's default lease
# of 60 s, and the save failed (NotFound: "no lease"). The daemons these
# servers use keep uncommitted write leases longer.
DAEMON_ARGS = ("--write-lease-seconds", "900")


def vllm_command() -> list[str]:
    """The ``vllm`` console script beside this interpreter (the venv's), else on ``PATH``."""
    script = Path(sys.executable).with_name("vllm")
    return [str(script)] if script.exists() else ["vllm"]


def transfer_config(url: str, **extra) -> dict:
    """``--kv-transfer-config``: KVStoreConnector on ``url`` (``extra``: more connector keys)."""
    return {"kv_connector": "KVStoreConnector",
            "kv_connector_module_path": "kvstore.client.vllm_connector",
            "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"url": url, **extra}}


@dataclass(frozen=True)
class Streamed:
    """One streamed reply: its text, when its first chunk came, what vLLM reused."""

    text: str
    ttft_s: float  # request sent -> first streamed chunk with text
    total_s: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens not computed (the store's, or vLLM's own cache)


@dataclass
class VLLMServer:
    """``vllm serve MODEL --kv-transfer-config ...`` on loopback; its log kept in ``lines``."""

    model_dir: Path
    store_url: str
    name: str = "smollm2"  # --served-model-name: the "model" of each request
    connector: dict = field(default_factory=dict)  # more kv_connector_extra_config keys
    prefix_caching: bool = True  # vLLM's own prefix cache (on by default in vLLM)
    max_model_len: int = 4096
    port: int = 0
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started_s: float = 0.0  # how long the last start took (process start to /health)

    def args(self) -> list[str]:
        cfg = json.dumps(transfer_config(self.store_url, **self.connector))
        return [*vllm_command(), "serve", str(self.model_dir), "--host", "127.0.0.1",
                "--port", str(self.port), "--served-model-name", self.name,
                "--dtype", "float32", "--max-model-len", str(self.max_model_len),
                "--block-size", "32", "--enforce-eager", "--seed", "0",
                "--enable-prompt-tokens-details",
                "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching",
                "--kv-transfer-config", cfg]

    def start(self, timeout: float = 900.0, progress=None) -> VLLMServer:
        """Start and wait until ``/health`` answers (minutes on a busy 2-core machine)."""
        t0 = time.monotonic()
        self.port = self.port or free_port()
        env = dict(os.environ, **{k: v for k, v in ENV.items() if k not in os.environ})
        self.lines = []
        self.proc = subprocess.Popen(self.args(), env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        try:
            self._wait_healthy(timeout, progress)
        except BaseException:  # a failed start (or an interrupted one) leaves no process
            self.stop()
            raise
        self.started_s = time.monotonic() - t0
        return self

    def _wait_healthy(self, timeout: float, progress) -> None:
        deadline, ticked = time.monotonic() + timeout, time.monotonic()
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n"
                                   + "".join(self.lines[-40:]))
            if time.monotonic() > deadline:
                raise TimeoutError("vllm serve did not answer /health in time:\n"
                                   + "".join(self.lines[-40:]))
            if progress and time.monotonic() - ticked > 20:
                ticked = time.monotonic()
                progress(f"  ... vllm serve still starting: {self._last_line()}")
            time.sleep(0.5)  # polling the server's start, not a window relied on

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def _last_line(self) -> str:
        for line in reversed(self.lines):
            if line.strip() and "Route:" not in line:
                return line.strip()[-90:]
        return "no output yet"

    def healthy(self) -> bool:
        try:
            return self._request("GET", "/health", None, timeout=2)[0] == 200
        except OSError:
            return False

    def reset_prefix_cache(self) -> None:
        """Empty vLLM's own prefix cache (the store keeps its blocks)."""
        status, body = self._request("POST", "/reset_prefix_cache", None, timeout=60)
        if status != 200:
            raise RuntimeError(f"/reset_prefix_cache answered {status}: {body[:200]!r}")

    def _request(self, method: str, path: str, body, timeout: float) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, data, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def complete(self, prompt, max_tokens: int = 32, timeout: float = 600.0) -> Streamed:
        """``/v1/completions``, streamed, greedy (``prompt``: text or token ids)."""
        return self._stream("/v1/completions", {"prompt": prompt}, max_tokens, timeout)

    def chat(self, messages: list[dict], max_tokens: int = 32,
             timeout: float = 600.0) -> Streamed:
        """``/v1/chat/completions``, streamed, greedy."""
        return self._stream("/v1/chat/completions", {"messages": messages}, max_tokens, timeout)

    def _stream(self, path: str, body: dict, max_tokens: int, timeout: float) -> Streamed:
        body = {**body, "model": self.name, "max_tokens": max_tokens, "temperature": 0.0,
                "stream": True, "stream_options": {"include_usage": True}}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            start = time.perf_counter()
            conn.request("POST", path, json.dumps(body).encode(),
                         {"Content-Type": "application/json"})
            reply = conn.getresponse()
            if reply.status != 200:
                raise RuntimeError(f"{path} answered {reply.status}: {reply.read()[:300]!r}")
            return _read_events(reply, start)
        finally:
            conn.close()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM to the server's process group (API server, engine core); kill if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        try:  # the engine core may outlive the API server by a moment
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.returncode

    def __enter__(self) -> VLLMServer:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _read_events(reply, start: float) -> Streamed:
    """Server-sent events until ``[DONE]``: the text, the first text chunk's time, the usage."""
    parts: list[str] = []
    first = None
    usage: dict = {}
    for raw in reply:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        for choice in event.get("choices") or ():
            piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            if piece:
                first = first if first is not None else time.perf_counter() - start
                parts.append(piece)
        usage = event.get("usage") or usage
    details = usage.get("prompt_tokens_details") or {}
    return Streamed("".join(parts), first if first is not None else float("nan"),
                    time.perf_counter() - start, int(usage.get("prompt_tokens", 0)),
                    int(usage.get("completion_tokens", 0)), int(details.get("cached_tokens") or 0))
