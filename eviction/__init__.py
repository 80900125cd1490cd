"""kvstore.eviction: pluggable eviction policies (one per tier).

``get_policy(name, **kw)`` builds any of ``available_policies()``: the
built-ins below and plug-ins from the entry-point group ``kvstore.eviction``.
"""

from kvstore.eviction.arc import ARCPolicy
from kvstore.eviction.base import EvictionPolicy, Hint, MayEvict, TreeView
from kvstore.eviction.conversation import ConversationPolicy
from kvstore.eviction.fifo import FIFOPolicy
from kvstore.eviction.lfu import LFUPolicy
from kvstore.eviction.lru import LRUPolicy
from kvstore.eviction.opt import OPTPolicy
from kvstore.eviction.prefix_aware import PrefixAwarePolicy
from kvstore.eviction.registry import available_policies, get_policy
from kvstore.eviction.s3fifo import S3FIFOPolicy
from kvstore.eviction.sieve import SIEVEPolicy

__all__ = [
    "EvictionPolicy",
    "Hint",
    "MayEvict",
    "TreeView",
    "LRUPolicy",
    "FIFOPolicy",
    "LFUPolicy",
    "S3FIFOPolicy",
    "SIEVEPolicy",
    "ARCPolicy",
    "PrefixAwarePolicy",
    "ConversationPolicy",
    "OPTPolicy",
    "get_policy",
    "available_policies",
]
