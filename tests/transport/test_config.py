"""DaemonConfig: defaults, TOML, env and flags with their precedence; the serve CLI."""

from __future__ import annotations

import os

import pytest

from kvstore.daemon.cli import build_parser
from kvstore.daemon.config import DaemonConfig, default_cpu_bytes, env_layer, load_config
from kvstore.errors import InvalidArgument

CLEAN = {"HOME": os.environ.get("HOME", "/root")}


def test_defaults_are_loopback_and_sized(tmp_path):
    env = {**CLEAN, "XDG_RUNTIME_DIR": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        cfg = load_config({}, environ=env)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert cfg.listen == [f"shm://{tmp_path}/kvstore/kvstore.sock", "tcp://127.0.0.1:7801"]
    assert cfg.admin.startswith("127.0.0.1:") and cfg.metrics.startswith("127.0.0.1:")
    assert 64 << 20 <= cfg.cpu_bytes <= 64 << 30
    assert cfg.ssd_dir == str(tmp_path / "c" / "kvstore")
    assert cfg.ssd_bytes >= 0 and cfg.log_level == "info"
    assert default_cpu_bytes() % (1 << 20) == 0


def test_precedence_flags_env_file(tmp_path):
    path = tmp_path / "kv.toml"
    path.write_text(
        'listen = "tcp://127.0.0.1:1111"\ncpu_bytes = "1GiB"\nssd_bytes = "2GiB"\n'
        'ssd_dir = "/tmp/ssd"\nlog_level = "debug"\nadmin = "127.0.0.1:1"\n'
        '[limits]\nmax_connections = 5\nmax_tokens = 99\n[store]\ncpu_policy = "lru"\n'
    )
    env = {**CLEAN, "KVSTORE_CPU_BYTES": "512MiB", "KVSTORE_LOG_LEVEL": "warning",
           "KVSTORE_MAX_CONNECTIONS": "7", "KVSTORE_LISTEN": "tcp://127.0.0.1:2222, shm:///tmp/x.sock"}
    cfg = load_config({"cpu_bytes": "256MiB", "log_level": None}, config_file=path, environ=env)
    assert cfg.cpu_bytes == 256 << 20  # flag
    assert cfg.log_level == "warning"  # env (the flag was not given)
    assert cfg.listen == ["tcp://127.0.0.1:2222", "shm:///tmp/x.sock"]  # env
    assert cfg.ssd_bytes == 2 << 30 and cfg.ssd_dir == "/tmp/ssd"  # file
    assert cfg.limits.max_connections == 7 and cfg.limits.max_tokens == 99
    assert cfg.store == {"cpu_policy": "lru"}
    assert cfg.source["cpu_bytes"] == "flags" and cfg.source["ssd_dir"] == "file"
    sc = cfg.store_config()
    assert sc.cpu_bytes == 256 << 20 and sc.ssd_bytes == 2 << 30 and sc.cpu_policy == "lru"


def test_ssd_zero_disables(tmp_path):
    cfg = DaemonConfig(cpu_bytes="64MiB", ssd_bytes=0, ssd_dir=str(tmp_path))
    assert not cfg.ssd_enabled
    assert not cfg.store_config().ssd_enabled


@pytest.mark.parametrize("bad", [
    {"listen": ["http://x"]}, {"cpu_bytes": "lots"}, {"log_level": "chatty"},
    {"admin": "nope"}, {"limits": {"max_nothing": 1}},
])
def test_bad_settings(bad):
    with pytest.raises(InvalidArgument):
        DaemonConfig(**bad)


def test_unknown_file_keys(tmp_path):
    path = tmp_path / "kv.toml"
    path.write_text("colour = 'blue'\n")
    with pytest.raises(InvalidArgument):
        load_config({}, config_file=path, environ=CLEAN)
    path.write_text("this is not toml = = \n")
    with pytest.raises(InvalidArgument):
        load_config({}, config_file=path, environ=CLEAN)


def test_env_layer_limits():
    assert env_layer({"KVSTORE_MAX_PAYLOAD_BYTES": "1GiB"}) == {"limits": {"max_payload_bytes": "1GiB"}}


def test_serve_flags_parse():
    args = build_parser().parse_args([
        "serve", "--config", "f.toml", "--listen", "tcp://127.0.0.1:1", "--listen", "shm:///x",
        "--admin", "127.0.0.1:2", "--metrics", "127.0.0.1:3", "--cpu-bytes", "4GiB",
        "--ssd-dir", "/d", "--ssd-bytes", "0", "--auth-token-file", "/t", "--log-level", "debug",
    ])
    assert args.listen == ["tcp://127.0.0.1:1", "shm:///x"] and args.cpu_bytes == "4GiB"
    assert args.ssd_bytes == "0" and args.auth_token_file == "/t"
