"""Find eviction policies by name: the built-ins and third-party plug-ins.

A third-party distribution adds a policy by declaring an entry point in the
group ``kvstore.eviction``; the name is the policy's name and the object is
an ``EvictionPolicy`` subclass or a factory returning an instance::

    [project.entry-points."kvstore.eviction"]
    mypolicy = "mypackage.policy:MyPolicy"

Entry points are read on every call (installing a plug-in needs no restart
of the registry), and a plug-in cannot shadow a built-in name.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from kvstore.errors import InvalidArgument
from kvstore.eviction.arc import ARCPolicy
from kvstore.eviction.base import EvictionPolicy
from kvstore.eviction.conversation import ConversationPolicy
from kvstore.eviction.fifo import FIFOPolicy
from kvstore.eviction.lfu import LFUPolicy
from kvstore.eviction.lru import LRUPolicy
from kvstore.eviction.opt import OPTPolicy
from kvstore.eviction.prefix_aware import PrefixAwarePolicy
from kvstore.eviction.s3fifo import S3FIFOPolicy
from kvstore.eviction.session import SessionPolicy
from kvstore.eviction.sieve import SIEVEPolicy

ENTRY_POINT_GROUP = "kvstore.eviction"

BUILTIN: dict[str, type[EvictionPolicy]] = {
    cls.name: cls
    for cls in (
        LRUPolicy,
        FIFOPolicy,
        LFUPolicy,
        S3FIFOPolicy,
        SIEVEPolicy,
        ARCPolicy,
        PrefixAwarePolicy,
        OPTPolicy,
        ConversationPolicy,  # issue 14: compared with prefix in docs/hit_rate.md
        SessionPolicy,  # issue 14: admission by turn and learned gap (docs/hit_rate.md)
    )
}
OFFLINE = frozenset({"opt"})  # need the future (a trace); not for a live store


def _plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def available_policies() -> list[str]:
    """Names ``get_policy`` accepts: built-ins first, then installed plug-ins (sorted)."""
    return list(BUILTIN) + sorted(_plugins())


def get_policy(name: str, **kwargs) -> EvictionPolicy:
    """A new policy called ``name``, built with ``kwargs`` (e.g. ``capacity``)."""
    factory: Callable[..., object] | None = BUILTIN.get(name)
    if factory is None:
        ep = _plugins().get(name)
        if ep is None:
            raise InvalidArgument(
                f"unknown eviction policy {name!r}; available: {', '.join(available_policies())}"
            )
        try:
            factory = ep.load()
        except Exception as exc:  # a broken plug-in must say which one it is
            raise InvalidArgument(f"eviction policy {name!r} ({ep.value}) failed to load: {exc}") from exc
    policy = factory(**kwargs)
    if not isinstance(policy, EvictionPolicy):
        raise InvalidArgument(f"eviction policy {name!r} built a {type(policy).__name__}, not an EvictionPolicy")
    return policy
