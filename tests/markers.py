"""The ``unit`` / ``integration`` split of the suite: one rule, applied by tests/conftest.py.

Every test is exactly one of the two (``make test-fast`` runs ``-m "unit and not slow"``;
``make test`` runs both):

- ``integration``: the test crosses a process boundary or runs a whole program: a
  daemon or CLI subprocess, a ``python -c`` child, a compiler, etcd, a vLLM engine,
  the demo, a benchmark run, a multi-daemon cluster, the ucx carrier (its worker costs
  most of a second per test). Said where it is true: a module that is integration as
  a whole has ``pytestmark = pytest.mark.integration``, a single test or parameter
  ``pytest.mark.integration``; a test that uses one of ``INTEGRATION_FIXTURES`` is
  integration wherever it lives.
- ``unit``: everything else, marked by the conftest: in-process and quick. A store
  served by an in-process server thread over loopback tcp or shm is unit; so is a
  ``Daemon`` run on a thread (tests/admin).

List them with ``pytest --collect-only -q -m integration``. A unit test that starts a
Python interpreter, a ``kvstore`` process or etcd fails (``refuse_out_of_process``), and
collection fails if a test does not carry exactly one of the two (``check_markers``).
"""

from __future__ import annotations

import os

# Fixtures that start processes (etcd, the daemons of a cluster): their tests are integration.
INTEGRATION_FIXTURES = frozenset({"etcd", "make_cluster"})

# What a unit test may not start: an interpreter (daemon, CLI, worker child), kvstore, etcd.
OUT_OF_PROCESS = ("python", "kvstore", "etcd")

KINDS = ("unit", "integration")


def kind_of(item) -> str:
    """``integration`` or ``unit`` for a collected test (see the module docstring)."""
    if item.get_closest_marker("integration") is not None:
        return "integration"
    if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "integration"
    return "unit"


def check_markers(items) -> list[str]:
    """One line for each test that does not carry exactly one of ``unit``/``integration``."""
    bad = []
    for item in items:
        marks = {m.name for m in item.iter_markers()} & set(KINDS)
        if len(marks) != 1:
            bad.append(f"{item.nodeid}: {sorted(marks) or 'neither unit nor integration'}")
    return bad


def program_of(args) -> str:
    """The name of the program ``subprocess.Popen(args)`` runs: ``python3.11``, ``etcd``."""
    argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    words = os.fsdecode(argv[0]).split() if argv else []
    return os.path.basename(words[0]) if words else ""


def refuse_out_of_process(popen_init):
    """A ``Popen.__init__`` that refuses ``OUT_OF_PROCESS`` programs (installed for unit tests)."""

    def guarded(self, args, *a, **kw):
        program = program_of(args)
        if program.startswith(OUT_OF_PROCESS):
            raise AssertionError(f"a unit test started {program!r}: mark it "
                                 "@pytest.mark.integration (see tests/markers.py)")
        popen_init(self, args, *a, **kw)

    return guarded
