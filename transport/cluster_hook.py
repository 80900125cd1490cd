"""ClusterHook: what a clustered daemon does around the data ops (``kvstore.cluster.node``).

The transport sits below the cluster package, so it names the hook by this
protocol; ``kvstore.cluster.node.ClusterNode`` implements it and the cluster
service installs it as ``StoreOps.cluster`` (None: a single daemon).
"""

from __future__ import annotations

from typing import Protocol

from kvstore.namespace_spec import NamespaceSpec
from kvstore.store_api import PrefixHint
from kvstore.transport.session import Session


class ClusterHook(Protocol):
    async def lookup(self, session: Session, spec: NamespaceSpec, ns: bytes, tokens,
                     extra: bytes, local: int) -> int:
        """Leading tokens cached here (``local``) or at the prefix's owners."""

    async def fill(self, session: Session, spec: NamespaceSpec, ns: bytes, tokens,
                   extra: bytes) -> None:
        """Before a read: fetch from a peer the blocks of ``tokens`` this node lacks."""

    def record_hit(self, session: Session, spec: NamespaceSpec, ns: bytes, tokens,
                   extra: bytes, hit: int) -> None:
        """A read served ``hit`` tokens (hot prefixes are counted and replicated)."""

    async def after_put(self, session: Session, spec: NamespaceSpec, ns: bytes, tokens,
                        extra: bytes) -> None:
        """After a write here: forward the prefix to its owner when that is another node."""

    async def after_hint(self, session: Session, spec: NamespaceSpec, ns: bytes, tokens,
                         extra: bytes, hint: PrefixHint, local: int) -> int:
        """After a hint applied here (to ``local`` tokens): pass it on to the prefix's
        owners when they are other nodes; returns the most tokens it applied to."""
