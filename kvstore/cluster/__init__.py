"""kvstore.cluster: daemons joined through etcd into one store.

Public surface: ``Router`` / ``Route`` (rendezvous routing of a prefix to its
nodes), ``MembershipView`` (the live node set from etcd), the etcd records
``NodeInfo`` / ``HotPrefix``, and ``cluster_service`` (the daemon's service
factory: registration, peer fetch and forward, hot-prefix replication).
Design: ``docs/cluster.md``.
"""

from kvstore.cluster.membership import MembershipView
from kvstore.cluster.records import HotPrefix, NodeInfo
from kvstore.cluster.routing import Route, Router
from kvstore.cluster.service import cluster_service

__all__ = ["HotPrefix", "MembershipView", "NodeInfo", "Route", "Router", "cluster_service"]
