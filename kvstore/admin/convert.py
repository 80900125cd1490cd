"""Between the admin API's messages and the store: arguments in, statistics out."""

from __future__ import annotations

import re

import numpy as np

from kvstore.admin import admin_pb2 as pb
from kvstore.errors import InvalidArgument, NotFound
from kvstore.store_api import NamespaceStats, TierStats
from kvstore.tokens import TOKEN_DTYPE

_HEX = re.compile(r"[0-9a-f]+")
MIN_PREFIX = 6


def resolve_namespace(store, text: str) -> bytes:
    """The namespace id named by its hex fingerprint (or a unique prefix of >= 6 chars)."""
    text = text.strip().lower()
    if not text:
        raise InvalidArgument("namespace is required (its id in hex, as ListNamespaces shows)")
    if not _HEX.fullmatch(text) or len(text) > 32 or len(text) < MIN_PREFIX:
        raise InvalidArgument(f"namespace must be 6 to 32 hex characters, got {text[:40]!r}")
    ids = [spec.fingerprint for spec in store.namespaces()]
    found = [fp for fp in ids if fp.hex().startswith(text)]
    if not found:
        raise NotFound(f"unknown namespace {text}")
    if len(found) > 1:
        raise InvalidArgument(f"namespace prefix {text} is ambiguous ({len(found)} match)")
    return found[0]


def tokens_of(message, limits=None) -> np.ndarray:
    tokens = np.fromiter(message.tokens, dtype=TOKEN_DTYPE, count=len(message.tokens))
    if limits is not None:
        limits.check_tokens(len(tokens))
    return tokens


def prefix_of(store, prefix: pb.Prefix, limits=None) -> tuple[bytes, np.ndarray, bytes]:
    """(namespace id, tokens, extra) of a Prefix message; tokens are required."""
    ns = resolve_namespace(store, prefix.namespace)
    tokens = tokens_of(prefix, limits)
    if len(tokens) == 0:
        raise InvalidArgument("the prefix needs tokens")
    return ns, tokens, bytes(prefix.extra)


def tier_message(t: TierStats, policy: str = "") -> pb.TierStats:
    return pb.TierStats(
        name=t.name, capacity_bytes=t.capacity_bytes, used_bytes=t.used_bytes, blocks=t.blocks,
        hits=t.hits, misses=t.misses, evictions=t.evictions, demotions=t.demotions,
        promotions=t.promotions, bytes_in=t.bytes_in, bytes_out=t.bytes_out, errors=t.errors,
        degraded=t.degraded, policy=policy,
    )


def namespace_message(n: NamespaceStats, pinned_bytes: int = 0) -> pb.NamespaceStats:
    spec, layout = n.spec, n.spec.layout
    ns = pb.Namespace(
        id=n.fingerprint, model_id=layout.model_id, tenant=spec.tenant, codec=spec.codec,
        block_tokens=layout.block_tokens, block_bytes=spec.block_bytes,
        num_layers=layout.num_layers, num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim, dtype=layout.dtype, tp_rank=layout.tp_rank,
        tp_size=layout.tp_size,
    )
    return pb.NamespaceStats(namespace=ns, blocks=n.blocks, bytes=n.bytes, hits=n.hits,
                             misses=n.misses, pinned_bytes=pinned_bytes,
                             lookup_hits=n.lookup_hits, lookup_misses=n.lookup_misses)


def pin_message(info) -> pb.PinInfo:
    return pb.PinInfo(namespace=info.namespace.hex(), tokens=info.tokens, bytes=info.bytes)


def message_to_dict(message) -> dict:
    """A message as plain Python (ints stay ints, unlike protobuf's JSON mapping)."""
    out: dict = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = dict(value)
        elif field.message_type is not None and _is_repeated(field):
            out[field.name] = [message_to_dict(v) for v in value]
        elif field.message_type is not None:
            out[field.name] = message_to_dict(value)
        elif _is_repeated(field):
            out[field.name] = list(value)
        elif isinstance(value, bytes):
            out[field.name] = value.hex()
        else:
            out[field.name] = value
    return out


def _is_repeated(field) -> bool:
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return field.label == field.LABEL_REPEATED  # pragma: no cover - older protobuf
