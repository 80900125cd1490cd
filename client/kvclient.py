"""KVClient: connect to a store (in-process or remote) and open namespaces.

    c = KVClient.connect("embedded", cpu_bytes="4GiB", ssd_dir="/nvme/kv", ssd_bytes="100GiB")
    ns = c.namespace(layout)              # codec "none"
    ns.put(tokens, kv); n, kv = ns.get(tokens)
    c.flush(); c.close()                  # or: with KVClient.connect(...) as c: ...

``etcd://HOST:PORT/NAME`` joins the daemons of cluster NAME as one store
(``kvstore.client.cluster_backend``: each prefix goes to the node that owns it).
``embedded`` builds a ``TieredStore`` in this process from ``StoreConfig``
keywords. Other URLs (``tcp://``, ``shm://``, ``ucx://``) are resolved by
``kvstore.transport.RemoteStore``; ``register_carrier(scheme, open)`` adds a
third-party scheme whose ``open(url, **kwargs)`` returns a ``BlockStore``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kvstore.availability import SoftFailures
from kvstore.client.namespace import Namespace
from kvstore.errors import InvalidArgument
from kvstore.layout import KVLayout
from kvstore.store_api import BlockStore, StoreStats


@dataclass(frozen=True)
class Carrier:
    """How ``KVClient.connect`` opens a backend for one URL scheme.

    ``open(url, **kwargs)`` returns the ``BlockStore``. ``soft_failures``: the
    backend follows the soft-failure rule (``kvstore.availability``) itself
    and takes ``strict`` (the remote carriers); ``connect`` then passes it on.
    """

    open: Callable[..., BlockStore]
    soft_failures: bool = False


def _embedded(url: str, **kwargs):
    from kvstore.store import StoreConfig, TieredStore

    return TieredStore(StoreConfig(**kwargs))


def _cluster(url: str, **kwargs):
    from kvstore.client.cluster_backend import ClusterBackend

    return ClusterBackend(url, **kwargs)


def _remote(url: str, **kwargs):
    from kvstore.transport.remote import RemoteStore

    return RemoteStore.connect(url, **kwargs)


_CARRIERS: dict[str, Carrier] = {
    "embedded": Carrier(_embedded),
    "etcd": Carrier(_cluster, soft_failures=True),
    "tcp": Carrier(_remote, soft_failures=True),
    "shm": Carrier(_remote, soft_failures=True),
    "ucx": Carrier(_remote, soft_failures=True),
}


def register_carrier(scheme: str, open: Callable[..., BlockStore], *,
                     soft_failures: bool = False) -> None:
    """Let ``KVClient.connect("SCHEME://...")`` open a third-party backend."""
    _CARRIERS[scheme] = Carrier(open, soft_failures)


class KVClient:
    def __init__(self, backend: BlockStore, strict: bool = True, owns_backend: bool = True,
                 name: str = ""):
        self.backend = backend
        self.availability = SoftFailures(strict, name or type(backend).__name__)
        self._owns = owns_backend
        self._namespaces: dict[tuple, Namespace] = {}
        self._closed = False

    @classmethod
    def connect(cls, url: str = "embedded", *, strict: bool | None = None, **kwargs) -> KVClient:
        """A client for ``url``; keywords configure the backend (StoreConfig for embedded).

        ``strict``: the soft-failure rule of ``kvstore.availability`` (a daemon that
        cannot be reached is a miss unless strict). Default: strict for
        ``embedded``, not for remote URLs.
        """
        scheme = url.split("://", 1)[0] if "://" in url else url
        carrier = _CARRIERS.get(scheme)
        if carrier is None:
            raise InvalidArgument(f"no carrier for {url!r} (known: {sorted(_CARRIERS)})")
        if strict is None:
            strict = scheme == "embedded"
        if carrier.soft_failures:
            kwargs["strict"] = strict
        return cls(carrier.open(url, **kwargs), strict=strict, name=url)

    def namespace(self, layout: KVLayout, codec: str = "none", tenant: str = "") -> Namespace:
        key = (layout, codec, tenant)
        ns = self._namespaces.get(key)
        if ns is None:
            ns = self._namespaces[key] = Namespace(self.backend, layout, codec, tenant,
                                                   availability=self.availability)
        return ns

    def flush(self) -> None:
        """Return once everything acknowledged so far is durable on the SSD tier."""
        self.backend.flush()

    @property
    def strict(self) -> bool:
        return self.availability.strict

    def stats(self) -> StoreStats:
        return self.backend.stats()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._owns:
                self.backend.close()

    def __enter__(self) -> KVClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
