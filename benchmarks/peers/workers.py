"""The runner's side of the line protocol: one ``Worker`` per system (see ``worker.py``)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
from pathlib import Path

from benchmarks.peers.catalog import SystemSpec
from benchmarks.peers.workload import Workload

ROOT = Path(__file__).resolve().parents[2]  # the repository: workers run with it as cwd
# a private network namespace with loopback up; the worker execs inside it
NETNS = ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def netns_missing() -> str | None:
    """Why a private network namespace cannot be made here (None: it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip (util-linux, iproute2) for a private network namespace"
    probe = subprocess.run([*NETNS, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"a private network namespace (unshare -n needs root): {probe.stderr.strip()[:120]}"
    return None


class Worker:
    """A worker child process, its own session (so a stuck one is killed with its servers)."""

    def __init__(self, spec: SystemSpec, python: str, w: Workload, log_path: Path):
        self.spec = spec
        cmd = [python, "-m", "benchmarks.peers.worker", spec.name, json.dumps(w.to_dict())]
        if spec.netns:
            cmd = [*NETNS, *cmd]
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if spec.netns:
            env["MC_TCP_BIND_ADDRESS"] = "127.0.0.1"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, cwd=ROOT, text=True, env=env,
                                     start_new_session=True)

    def receive(self, timeout: float) -> dict:
        """The worker's next message; ``{"error": ...}`` when it exits or says nothing in time."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return {"error": f"no answer in {timeout:.0f} s (log: {self.log_path})"}
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait(30)
            return {"error": f"worker exited with code {rc} (log: {self.log_path}):\n{self.log_tail()}"}
        return json.loads(line)

    def round(self, round_id: int, timeout: float) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"op": "round", "round": round_id}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"error": f"worker gone (log: {self.log_path}):\n{self.log_tail()}"}
        return self.receive(timeout)

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self, timeout: float = 60.0) -> None:
        """Ask the worker to stop its servers and exit; kill its session if it does not."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.kill_session()
                self.proc.wait(10)
        self.kill_session()  # servers a crashed worker left behind in its session
        self._log.close()

    def kill_session(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
