"""Settings dataclasses from plain mappings (TOML tables, environment layers, wire maps).

Two rules, each written once here:

* ``reject_unknown``: a key that names no field is an error (a misspelt
  setting must not be ignored silently): ``Limits``, ``StoreConfig``, the
  daemon's config layers;
* ``known_fields``: keys that name no field are dropped (records written by a
  newer peer may carry more): ``KVLayout`` on the wire, the cluster's etcd
  records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from kvstore.errors import InvalidArgument


def field_names(cls) -> set[str]:
    """The field names of dataclass ``cls``."""
    return {f.name for f in dataclasses.fields(cls)}


def reject_unknown(cls, data: Mapping, what: str, exclude: Iterable[str] = ()) -> None:
    """Raise ``InvalidArgument("unknown WHAT: [...]")`` if a key of ``data`` names no field
    of ``cls`` (or names one of ``exclude``: fields that are not settings)."""
    unknown = set(data) - (field_names(cls) - set(exclude))
    if unknown:
        raise InvalidArgument(f"unknown {what}: {sorted(unknown)}")


def known_fields(cls, data: Mapping) -> dict:
    """The entries of ``data`` that name fields of ``cls`` (the others are dropped)."""
    names = field_names(cls)
    return {k: v for k, v in data.items() if k in names}
