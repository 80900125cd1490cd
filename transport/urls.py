"""Carrier URLs: ``tcp://HOST:PORT``, ``ucx://HOST:PORT``, ``shm://PATH``.

``shm:///run/kvstore.sock`` and ``shm://run/kvstore.sock`` name the Unix
socket of the shm carrier (the second is relative to the working directory).
IPv6 hosts go in brackets (``tcp://[::1]:7801``). A port may be 0 on a
listener (the OS picks one; the listener reports the real URL).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from kvstore.errors import InvalidArgument

SCHEMES = ("tcp", "shm", "ucx")
DEFAULT_PORTS = {"tcp": 7801, "ucx": 7802}


@dataclass(frozen=True)
class CarrierURL:
    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "shm":
            return f"shm://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_url(url: str) -> CarrierURL:
    if not isinstance(url, str) or "://" not in url:
        raise InvalidArgument(f"not a carrier URL: {url!r} (tcp://HOST:PORT, shm://PATH, ucx://HOST:PORT)")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidArgument(f"unknown carrier {scheme!r} in {url!r} (one of {', '.join(SCHEMES)})")
    if scheme == "shm":
        path = rest.split("?", 1)[0]
        if not path:
            raise InvalidArgument(f"shm URL needs a socket path: {url!r}")
        return CarrierURL("shm", path=path)
    parts = urlsplit(f"{scheme}://{rest}")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"bad port in {url!r}") from exc
    host = parts.hostname or ""
    if not host:
        raise InvalidArgument(f"{scheme} URL needs a host: {url!r}")
    return CarrierURL(scheme, host=host, port=DEFAULT_PORTS[scheme] if port is None else port)
