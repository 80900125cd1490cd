"""The systems the runner knows: which module runs each, in which environment, how wrapped."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SystemSpec:
    """One system: its worker module (``make(name, w, bufs)``) and where the worker runs.

    ``venv``: ``main`` (the runner's python: kvstore and numpy) or ``peers``
    (``.venv-peers``: LMCache, Mooncake, redis-py). ``netns``: the worker and
    every server it starts run in a private network namespace with only
    loopback up (``unshare -n``), so nothing binds beyond it.
    """

    name: str
    label: str
    module: str
    venv: str = "main"
    netns: bool = False


CATALOG: tuple[SystemSpec, ...] = (
    SystemSpec("memcpy", "numpy memcpy", "benchmarks.peers.sys_memcpy"),
    SystemSpec("kvstore-shm", "kvstore shm", "benchmarks.peers.sys_kvstore"),
    SystemSpec("kvstore-tcp", "kvstore tcp", "benchmarks.peers.sys_kvstore"),
    # ucxx listens on every interface: in a private namespace that is loopback only
    SystemSpec("kvstore-ucx", "kvstore ucx", "benchmarks.peers.sys_kvstore", netns=True),
    SystemSpec("lmcache", "LMCache 0.5.6 `lmcache server` (CPU L1)", "benchmarks.peers.sys_lmcache",
               venv="peers"),
    SystemSpec("mooncake", "Mooncake Store (TCP)", "benchmarks.peers.sys_mooncake", venv="peers",
               netns=True),
    SystemSpec("redis", "Redis + hiredis", "benchmarks.peers.sys_redis", venv="peers"),
)
BY_NAME = {s.name: s for s in CATALOG}
