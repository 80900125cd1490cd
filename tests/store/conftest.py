"""Fixtures of the store tests (helpers live in ``helpers.py``)."""

from __future__ import annotations

import pytest

from kvstore.ssd.fs import FaultyFileSystem
from kvstore.store.config import StoreConfig
from kvstore.store.tiered_store import TieredStore

from .helpers import make_spec, ssd_on


@pytest.fixture
def spec():
    return make_spec()


@pytest.fixture
def fs():
    """The filesystem under the stores' SSD tier: inject faults or slowness through it."""
    return FaultyFileSystem()


@pytest.fixture
def store_factory(tmp_path, fs):
    """``make(**StoreConfig settings)``; with ``ssd_bytes``, the real SSD tier over ``fs``
    in ``tmp_path / "ssd"`` (a second store on the same directory is a restart)."""
    stores = []

    def make(**kw):
        kw.setdefault("cpu_bytes", 64 << 10)
        if kw.get("ssd_bytes"):
            kw.setdefault("ssd_dir", str(tmp_path / "ssd"))
            kw.setdefault("segment_bytes", 64 << 10)
            kw.setdefault("ssd_factory", ssd_on(fs))
        store = TieredStore(StoreConfig(**kw))
        stores.append(store)
        return store

    yield make
    for s in stores:
        s.close()
