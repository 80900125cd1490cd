"""Another process of the daemon's own uid cannot reach its arenas through ``/proc``.

The daemon makes itself undumpable at start (``kvstore.daemon.hardening``):
``open("/proc/<daemon>/fd/N")`` on each of its memfd arenas and
``open("/proc/<daemon>/mem")`` fail with PermissionError for a second process
of the same uid. Root bypasses that check (``CAP_SYS_PTRACE``), so when the
tests run as root the daemon and the prober both run as an unprivileged uid
the test takes (65534, through ``setpriv``; no account is needed). A control
process of that uid that stays dumpable shows the probe itself works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from kvstore.daemon.hardening import PR_SET_DUMPABLE, dumpable, forbid_inspection, prctl
from kvstore.demo.daemon_process import DaemonProc, daemon_args
from kvstore.transport.remote import RemoteStore
from tests.transport.conftest import blocks_for, spec_of, tokens_for

UID = 65534  # "nobody": any uid other than root's does

PROBE = r"""
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDONLY))
        out[path] = "opened"
    except PermissionError:
        out[path] = "refused"
    except OSError as exc:
        out[path] = f"error {exc.errno}"
print(json.dumps(out))
"""

CONTROL = r"""
import os, sys
fd = os.memfd_create("control-arena")
os.ftruncate(fd, 4096)
print(fd, flush=True)
sys.stdin.read()
"""


def as_other_uid() -> list[str]:
    """The command prefix that runs a process as an unprivileged uid ([] when not root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("as root, the probe needs setpriv to run as an unprivileged uid")
    return ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]


def memfds(pid: int) -> list[str]:
    """``/proc/<pid>/fd/N`` of each memfd the process holds (read as root or as its owner)."""
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("/memfd:"):
            out.append(f"/proc/{pid}/fd/{name}")
    return out


def probe(prefix: list[str], paths: list[str]) -> dict[str, str]:
    done = subprocess.run([*prefix, sys.executable, "-c", PROBE, *paths], capture_output=True,
                          text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.unit
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_forbid_inspection_makes_the_process_undumpable():
    assert dumpable() is True
    try:
        assert forbid_inspection() is True
        assert dumpable() is False
        assert os.stat(f"/proc/{os.getpid()}/fd").st_uid == 0  # the kernel hands /proc to root
    finally:
        prctl(PR_SET_DUMPABLE, 1)  # give the test process back its default
    assert dumpable() is True


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux only")
def test_same_uid_process_cannot_open_the_daemons_memfds(sockdir):
    prefix = as_other_uid()
    if prefix:
        os.chown(sockdir, UID, UID)
    os.chmod(sockdir, 0o700)
    control = subprocess.Popen([*prefix, sys.executable, "-c", CONTROL], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd="/")
    d = DaemonProc(daemon_args(sockdir, ("shm", "tcp")), wrap=prefix,
                   env={"HOME": sockdir, "XDG_RUNTIME_DIR": sockdir})
    try:
        c = RemoteStore.connect(d.url("tcp"), timeout=10, strict=True)
        spec = spec_of()
        ns = c.register(spec)
        toks = tokens_for(1, 4)
        assert c.put(ns, toks, blocks_for(toks, spec)) == 64  # the default tenant's arena is live
        c.close()
        arenas = memfds(d.proc.pid)
        assert arenas, "the daemon holds no memfd arena"
        control_fd = f"/proc/{control.pid}/fd/{control.stdout.readline().strip()}"
        got = probe(prefix, [*arenas, f"/proc/{d.proc.pid}/mem", control_fd])
        assert got.pop(control_fd) == "opened"  # the probe can open a dumpable process's memfd
        assert got == {p: "refused" for p in [*arenas, f"/proc/{d.proc.pid}/mem"]}
        assert any("undumpable" in line for line in d.lines)
    finally:
        d.kill()
        control.kill()
        control.wait(30)
