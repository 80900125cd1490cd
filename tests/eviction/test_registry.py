"""The registry: built-ins, a plug-in from a real (tiny) installed distribution, errors."""

import importlib
import sys
import textwrap

import pytest

from kvstore.errors import InvalidArgument
from kvstore.eviction import EvictionPolicy, LRUPolicy, available_policies, get_policy

PLUGIN = '''
from kvstore.eviction.lru import LRUPolicy


class MRUPolicy(LRUPolicy):
    """Evict the most recently used block (a toy)."""

    name = "mru"

    def __init__(self, capacity=None, tag="default"):
        super().__init__(capacity)
        self.tag = tag

    def _set(self, key, priority):
        super()._set(key, -self._seq)


def not_a_policy(**kwargs):
    return object()
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install the distribution ``kvstore-mru`` into a folder on sys.path."""
    (tmp_path / "kvstore_mru.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "kvstore_mru-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kvstore-mru\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[kvstore.eviction]\n"
        "mru = kvstore_mru:MRUPolicy\n"
        "broken = kvstore_mru:DoesNotExist\n"
        "bogus = kvstore_mru:not_a_policy\n"
        "lru = kvstore_mru:MRUPolicy\n"  # may not shadow a built-in
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("kvstore_mru", None)


def test_builtins():
    names = available_policies()
    assert names[:8] == ["lru", "fifo", "lfu", "s3fifo", "sieve", "arc", "prefix", "opt"]
    for name in names[:8]:
        policy = get_policy(name, capacity=8)
        assert isinstance(policy, EvictionPolicy) and policy.name == name


def test_plugin_from_entry_point(plugin):
    assert {"mru", "broken", "bogus"} <= set(available_policies())
    policy = get_policy("mru", tag="x")
    assert type(policy).__name__ == "MRUPolicy" and policy.tag == "x"
    for key in (b"a", b"b", b"c"):
        policy.on_insert(key)
    assert policy.victims(1, lambda key: True) == [b"c"]
    assert type(get_policy("lru")) is LRUPolicy  # the built-in wins


def test_plugin_errors_are_clear(plugin):
    with pytest.raises(InvalidArgument, match="'broken'.*failed to load"):
        get_policy("broken")
    with pytest.raises(InvalidArgument, match="not an EvictionPolicy"):
        get_policy("bogus")


def test_unknown_name_lists_what_exists():
    with pytest.raises(InvalidArgument) as err:
        get_policy("clairvoyant")
    assert "clairvoyant" in str(err.value) and "lru" in str(err.value) and "s3fifo" in str(err.value)
    with pytest.raises(TypeError):
        get_policy("lru", no_such_option=1)
