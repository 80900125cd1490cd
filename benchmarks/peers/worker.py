"""A worker: one system in one process, driven by the runner over a line protocol.

    python -m benchmarks.peers.worker SYSTEM WORKLOAD_JSON

Protocol (one JSON object a line; the worker's stdout carries only these, the
libraries' own prints go to stderr):

* worker -> runner, once: ``{"ready": true, "info", "get_destination",
  "lookup_call", "warm"}``, or ``{"not_installed": REASON}``, or ``{"error": TRACE}``;
* runner -> worker: ``{"op": "round", "round": R}`` -> ``{"result": RoundResult}``
  or ``{"error": TRACE}`` (the worker then stops);
* runner -> worker: ``{"op": "quit"}``: the worker stops its servers and exits.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

from benchmarks.peers.catalog import BY_NAME
from benchmarks.peers.system import NotInstalled, run_round, warm_up
from benchmarks.peers.workload import Buffers, Workload


def main(argv: list[str]) -> int:
    name, w = argv[0], Workload.from_dict(json.loads(argv[1]))
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints lands on stderr, not in the protocol
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        module = importlib.import_module(BY_NAME[name].module)
        system = module.make(name, w, Buffers.of(w))
    except (ImportError, NotInstalled) as exc:
        send({"not_installed": f"{type(exc).__name__}: {exc}"})
        return 0
    try:
        try:
            info = system.start()
        except NotInstalled as exc:
            send({"not_installed": str(exc)})
            return 0
        warm = warm_up(system)
        send({"ready": True, "info": info, "get_destination": system.get_destination,
              "lookup_call": system.lookup_call, "warm": warm.to_dict()})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            send({"result": run_round(system, int(cmd["round"])).to_dict()})
    except Exception:
        send({"error": traceback.format_exc()})
        return 1
    finally:
        system.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
