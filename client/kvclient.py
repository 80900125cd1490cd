"""KVClient: connect to a store (in-process or remote) and open namespaces.

    c = KVClient.connect("embedded", cpu_bytes="4GiB", ssd_dir="/nvme/kv", ssd_bytes="100GiB")
    ns = c.namespace(layout)              # codec "none"
    ns.put(tokens, kv); n, kv = ns.get(tokens)
    c.flush(); c.close()                  # or: with KVClient.connect(...) as c: ...

``etcd://HOST:PORT/NAME`` joins the daemons of cluster NAME as one store
(``kvstore.client.cluster_backend``: each prefix goes to the node that owns it).
``embedded`` builds a ``TieredStore`` in this process from ``StoreConfig``
keywords. Other URLs (``tcp://``, ``shm://``, ``ucx://``) are resolved by
carriers: ``register_carrier(scheme, factory)`` where ``factory(url,
**kwargs)`` returns a backend with the ``BlockStore`` methods; the
transport package registers its carriers (``kvstore.transport.register_carriers``,
called on first use of an unknown scheme).
"""

from __future__ import annotations

from collections.abc import Callable

from kvstore.client.namespace import Namespace
from kvstore.errors import InvalidArgument
from kvstore.layout import KVLayout

_CARRIERS: dict[str, Callable] = {}


def register_carrier(scheme: str, factory: Callable) -> None:
    _CARRIERS[scheme] = factory


def _embedded(url: str, **kwargs):
    from kvstore.store_config import StoreConfig
    from kvstore.tiered_store import TieredStore

    return TieredStore(StoreConfig(**kwargs))


register_carrier("embedded", _embedded)


def _cluster(url: str, **kwargs):
    from kvstore.client.cluster_backend import ClusterBackend

    return ClusterBackend(url, **kwargs)


_cluster.accepts_strict = True
register_carrier("etcd", _cluster)


class KVClient:
    def __init__(self, backend, strict: bool = True, owns_backend: bool = True):
        self.backend = backend
        self.strict = strict
        self._owns = owns_backend
        self._namespaces: dict[tuple, Namespace] = {}
        self._closed = False

    @classmethod
    def connect(cls, url: str = "embedded", *, strict: bool | None = None, **kwargs) -> KVClient:
        """A client for ``url``; keywords configure the backend (StoreConfig for embedded).

        ``strict``: a remote daemon that cannot be reached makes ``lookup`` return 0
        and ``get`` miss (the engine recomputes) unless ``strict=True``, when they
        raise ``Unavailable``. Default: strict for ``embedded``, not for remote URLs.
        """
        scheme = url.split("://", 1)[0] if "://" in url else url
        if scheme not in _CARRIERS:
            try:
                from kvstore.transport import register_carriers
            except ImportError:
                pass
            else:
                register_carriers()
        factory = _CARRIERS.get(scheme)
        if factory is None:
            raise InvalidArgument(f"no carrier for {url!r} (known: {sorted(_CARRIERS)})")
        if strict is None:
            strict = scheme == "embedded"
        if getattr(factory, "accepts_strict", False):  # remote carriers soften misses themselves
            kwargs["strict"] = strict
        return cls(factory(url, **kwargs), strict=strict)

    def namespace(self, layout: KVLayout, codec: str = "none", tenant: str = "") -> Namespace:
        key = (layout, codec, tenant)
        ns = self._namespaces.get(key)
        if ns is None:
            ns = self._namespaces[key] = Namespace(self.backend, layout, codec, tenant, self.strict)
        return ns

    def flush(self) -> None:
        """Return once everything acknowledged so far is durable on the SSD tier."""
        self.backend.flush()

    def stats(self):
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
