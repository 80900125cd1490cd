"""A Mooncake Store client that contributes a memory segment: the "server" of the peers run.

    python -m benchmarks.peers.mooncake_segment MASTER_ADDR SEGMENT_BYTES

Prints ``ready`` once its segment is mounted, then holds it until stdin
closes (run inside the worker's private network namespace).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from mooncake.store import MooncakeDistributedStore

    master, segment = argv[0], int(argv[1])
    store = MooncakeDistributedStore()
    rc = store.setup("127.0.0.1", "P2PHANDSHAKE", segment, 16 << 20, "tcp", "", master)
    if rc != 0:
        print(f"setup failed: {rc}", flush=True)
        return 1
    print("ready", flush=True)
    sys.stdin.read()  # until the worker closes our stdin
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
