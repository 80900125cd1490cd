"""Fixtures of the store tests (helpers live in ``helpers.py``)."""

from __future__ import annotations

import pytest

from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore

from .helpers import _DISKS, FakeSSD, make_spec


@pytest.fixture
def spec():
    return make_spec()


@pytest.fixture
def store_factory(tmp_path):
    stores = []

    def make(**kw):
        kw.setdefault("cpu_bytes", 64 << 10)
        if kw.get("ssd_bytes"):
            kw.setdefault("ssd_dir", str(tmp_path / "ssd"))
            kw.setdefault("ssd_factory", FakeSSD)
        store = TieredStore(StoreConfig(**kw))
        stores.append(store)
        return store

    yield make
    for s in stores:
        s.close()
    for d in [k for k in _DISKS if k.startswith(str(tmp_path))]:
        del _DISKS[d]
