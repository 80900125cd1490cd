"""NamespaceTable alone: idempotent registration, clashes, sizes, manifest, stats."""

import pytest

from kvstore.errors import CapacityError, LayoutMismatch, NotFound
from kvstore.namespace_spec import NamespaceSpec
from kvstore.store.cpu_tier import CPUTier
from kvstore.store.namespace_table import NamespaceTable

from .helpers import make_spec


def test_register_find_and_describe():
    cpu = CPUTier(4 * 4096, 4096)
    try:
        table, spec = NamespaceTable(), make_spec()
        assert table.register(spec, [cpu]) and not table.register(spec, [cpu])
        assert table.get(spec.fingerprint).spec == spec and table.specs() == [spec]
        clash = NamespaceSpec(spec.layout, spec.codec, spec.tenant, spec.block_bytes + 2)
        with pytest.raises(LayoutMismatch):
            table.register(clash, [cpu])
        with pytest.raises(CapacityError):  # a block larger than the whole tier
            table.register(make_spec(model="huge", layers=64, dim=512), [cpu])
        with pytest.raises(NotFound):
            table.get(b"\0" * 16)
        assert table.find(b"\0" * 16) is None
        assert table.manifest() == {spec.fingerprint: spec.to_dict()}
        (stats,) = table.stats()
        assert stats.fingerprint == spec.fingerprint.hex() and stats.blocks == 0
    finally:
        cpu.close()
