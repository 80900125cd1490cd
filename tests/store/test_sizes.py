import pytest

from kvstore.errors import InvalidArgument
from kvstore.sizes import format_size, parse_size
from kvstore.store.config import StoreConfig


@pytest.mark.parametrize(
    "text,expected",
    [
        (0, 0), (512, 512), ("512", 512), ("4KiB", 4096), ("4k", 4096), ("4KB", 4096),
        ("64MiB", 64 << 20), ("4GiB", 4 << 30), ("4 gib", 4 << 30), ("1.5GiB", 3 << 29),
        ("2T", 2 << 40), (" 7 M ", 7 << 20), ("1P", 1 << 50),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GiB", "-1", "1.5", "4XB", "1e9", None, True, -3, [1]])
def test_parse_size_rejects(bad):
    with pytest.raises(InvalidArgument):
        parse_size(bad)


def test_format_size_round_trips():
    for n in (0, 1, 1023, 4096, 64 << 20, 4 << 30, 3 << 40):
        assert parse_size(format_size(n)) == n
    assert format_size(1536) == "1.5KiB"


def test_store_config_sizes_and_validation():
    cfg = StoreConfig(cpu_bytes="8MiB", ssd_dir="/tmp/x", ssd_bytes="1GiB", segment_bytes="64MiB")
    assert (cfg.cpu_bytes, cfg.ssd_bytes, cfg.segment_bytes) == (8 << 20, 1 << 30, 64 << 20)
    assert cfg.ssd_enabled
    assert not StoreConfig(cpu_bytes="1MiB").ssd_enabled
    with pytest.raises(InvalidArgument):
        StoreConfig(cpu_bytes=0)
    with pytest.raises(InvalidArgument):
        StoreConfig(ssd_bytes="1GiB")  # no directory
    with pytest.raises(InvalidArgument):
        StoreConfig.from_dict({"cpu_bytes": "1MiB", "bogus": 1})
    assert StoreConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    assert cfg.make_policy("lru").name == "lru"
