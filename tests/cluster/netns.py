"""Separate hosts on one machine: Linux network namespaces joined by a bridge.

``Hosts(["etcd", "n1", "n2", "n3", "client"])`` makes one namespace per host
(``<tag>-<name>``, each with loopback up and ``eth0`` at ``10.77.0.<i+1>/24``)
and a switch namespace holding the bridge that joins their veth pairs, so
nothing is added to the machine's own namespace and no traffic can leave
the 10.77.0.0/24 network the test made. ``close()`` removes every namespace
(and so every link in them), also after a failure; the tag carries the pid,
so parallel runs do not meet.

Cuts (all silent: no reset reaches anyone):

- ``link_down(name)``: the host's port on the switch goes down (the host is
  cut from everyone, etcd included);
- ``blackhole(a, b)``: ``a`` drops what it sends to ``b`` (a route);
- ``bogus_neighbour(a, b)``: ``a`` sends ``b``'s frames to a MAC nobody has
  (a permanent neighbour entry): a silent drop with the link up;
- ``heal()`` undoes all of them.

``limit(name, rate)``: a tbf bandwidth limit on the host's link, both ways.
``run(name, argv)`` / ``popen(name, argv)`` run a command inside a host.
``available()`` says why namespaces cannot be made here (None when they can).
"""

from __future__ import annotations

import os
import shutil
import subprocess

SUBNET = "10.77.0"
BOGUS_MAC = "02:00:5e:77:00:99"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def available() -> str | None:
    """None when this process can make namespaces, else why not."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"kvprobe{os.getpid()}"
    try:
        made = _ip("netns", "add", name, check=False)
        if made.returncode != 0:
            return f"cannot make a network namespace: {made.stderr.strip()}"
        link = _ip("-n", name, "link", "add", "b0", "type", "bridge", check=False)
        if link.returncode != 0:
            return f"cannot make a bridge in a namespace: {link.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


class Hosts:
    def __init__(self, names: list[str], tag: str | None = None):
        self.tag = tag or f"kv{os.getpid() % 100000}"
        self.names = list(names)
        self.switch = f"{self.tag}-sw"
        self.addr = {n: f"{SUBNET}.{i + 1}" for i, n in enumerate(self.names)}
        self._made: list[str] = []
        self._cuts: list[tuple] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def wrap(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name)]

    def _port(self, name: str) -> str:
        return f"p{self.names.index(name)}"

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for name in self.names:
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            port = self._port(name)
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                "netns", self.switch)
            _ip("-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")

    # -- running things --------------------------------------------------------------
    def run(self, name: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run([*self.wrap(name), *argv], **kwargs)

    def popen(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*self.wrap(name), *argv], **kwargs)

    # -- cuts ----------------------------------------------------------------------------
    def link_down(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self._port(name), "down")
        self._cuts.append(("link", name))

    def blackhole(self, a: str, b: str) -> None:
        _ip("-n", self.ns(a), "route", "add", "blackhole", f"{self.addr[b]}/32")
        self._cuts.append(("route", a, b))

    def bogus_neighbour(self, a: str, b: str) -> None:
        _ip("-n", self.ns(a), "neigh", "replace", self.addr[b], "lladdr", BOGUS_MAC,
            "dev", "eth0", "nud", "permanent")
        self._cuts.append(("neigh", a, b))

    def heal(self) -> None:
        for cut in reversed(self._cuts):
            if cut[0] == "link":
                _ip("-n", self.switch, "link", "set", self._port(cut[1]), "up", check=False)
            elif cut[0] == "route":
                _ip("-n", self.ns(cut[1]), "route", "del", "blackhole", f"{self.addr[cut[2]]}/32",
                    check=False)
            else:
                _ip("-n", self.ns(cut[1]), "neigh", "del", self.addr[cut[2]], "dev", "eth0",
                    check=False)
        self._cuts.clear()

    def limit(self, name: str, rate: str, burst: str = "256kb") -> None:
        """A tbf limit on the host's link, both ways (its eth0 and its switch port)."""
        for ns, dev in ((self.ns(name), "eth0"), (self.switch, self._port(name))):
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev,
                            "root", "tbf", "rate", rate, "burst", burst, "latency", "50ms"],
                           check=True, capture_output=True, timeout=30)

    def close(self) -> None:
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NetCluster:
    """etcd on host ``etcd``, ``kvstore serve`` on ``n1``..``nN``, the driver on ``client``.

    ``extra``: more ``kvstore serve`` flags; ``rate``: a tbf limit per daemon host.
    ``ask(cmd)`` sends one command to the driver (tests/cluster/netns_driver.py).
    """

    def __init__(self, nodes: int = 3, name: str = "nets", extra: list[str] | None = None,
                 rate: str | None = None, cpu_bytes: str = "64MiB", ttl: int = 3):
        import json
        import sys
        import tempfile

        from kvstore.demo.daemon_process import ROOT, DaemonProc
        from kvstore.demo.etcd_process import EtcdProc

        self._json, self.name = json, name
        self.node_names = [f"n{i + 1}" for i in range(nodes)]
        self.hosts = Hosts(["etcd", *self.node_names, "client"])
        self.etcd = self.daemons = self.driver = None
        self.daemons: dict[str, DaemonProc] = {}
        self._dirs: list[str] = []
        try:
            if rate:
                for n in self.node_names:
                    self.hosts.limit(n, rate)
            self.etcd = EtcdProc(host=self.hosts.addr["etcd"], client_port=2379, peer_port=2380,
                                 wrap=self.hosts.wrap("etcd"))
            for n in self.node_names:
                folder = tempfile.mkdtemp(prefix=f"kvstore-{n}-")
                self._dirs.append(folder)
                url = f"tcp://{self.hosts.addr[n]}:7801"
                self.daemons[n] = DaemonProc(
                    ["--listen", url, "--advertise", url, "--cpu-bytes", cpu_bytes,
                     "--ssd-dir", folder, "--ssd-bytes", "0", "--etcd", self.etcd.endpoint,
                     "--cluster", name, "--cluster-ttl", str(ttl), *(extra or [])],
                    env={"KVSTORE_PREFAULT": "0"}, wrap=self.hosts.wrap(n))
            self.driver = self.hosts.popen(
                "client", [sys.executable, str(ROOT / "tests" / "cluster" / "netns_driver.py"),
                           self.etcd.url(name)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert self._json.loads(self.driver.stdout.readline())["ready"]
        except BaseException:
            self.close()
            raise

    def ask(self, cmd: str) -> dict:
        self.driver.stdin.write(cmd + "\n")
        self.driver.stdin.flush()
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError(f"the driver exited (rc {self.driver.poll()})")
        out = self._json.loads(line)
        if "error" in out:
            raise RuntimeError(f"driver: {cmd}: {out['error']}")
        return out

    def node_id(self, name: str) -> str:
        """The node id of daemon host ``name``, as the client's membership has it."""
        url = f"tcp://{self.hosts.addr[name]}:7801"
        nodes = self.ask(f"wait {len(self.node_names)}")["nodes"]
        return next(k for k, v in nodes.items() if v == url)

    def close(self) -> None:
        if self.driver is not None:
            try:
                self.driver.stdin.write("quit\n")
                self.driver.stdin.flush()
                self.driver.wait(10)
            except Exception:
                self.driver.kill()
        self.hosts.heal()
        for proc in self.daemons.values():
            try:
                proc.kill()
            except Exception:  # already gone
                pass
        if self.etcd is not None:
            self.etcd.close()
        for folder in self._dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self.hosts.close()

    def __enter__(self) -> NetCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
