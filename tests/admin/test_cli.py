"""``kvstore admin ...`` against a real daemon: as a subprocess with --json, and in-process
(``kvstore.daemon.cli.main``, same code and channel, without ~1 s of interpreter start per call)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kvstore.daemon.cli import main
from tests.admin.conftest import daemon_config
from tests.admin.helpers import payloads, small_spec, tokens_for


@pytest.fixture(autouse=True)
def no_kvstore_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("KVSTORE_")]:
        monkeypatch.delenv(key)


def subprocess_json(daemon, *args: str) -> dict:
    cmd = [sys.executable, "-m", "kvstore", "admin", *args, "--addr", daemon.address("admin"),
           "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def cli(capsys, daemon, *args: str) -> tuple[int, str, str]:
    """Run ``kvstore admin ARGS --addr ...`` in-process: (exit code, stdout, stderr)."""
    addr = daemon if isinstance(daemon, str) else daemon.address("admin")
    code = main(["admin", *args, "--addr", addr])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, daemon, *args: str) -> dict:
    code, out, err = cli(capsys, daemon, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.integration
def test_cli_subprocess_json(daemon, client):
    spec = small_spec()
    ns = client.register(spec)
    tokens = tokens_for(1, 3)
    client.put(ns, tokens, payloads(spec, tokens))
    listed = subprocess_json(daemon, "namespaces")["namespaces"]
    assert [n["namespace"]["id"] for n in listed] == [ns.hex()] and listed[0]["blocks"] == 3
    pinned = subprocess_json(daemon, "pin", ns.hex(), "--tokens", ",".join(map(str, tokens)))
    assert pinned["pin"]["tokens"] == 12 and pinned["pinned_bytes"] == 3 * spec.block_bytes
    stats = subprocess_json(daemon, "stats")
    assert stats["tiers"][0]["blocks"] == 3 and stats["pins"]["pinned_bytes"] == 1536
    assert subprocess_json(daemon, "evict", ns.hex()[:10]) == {"blocks": 0, "bytes": 0,
                                                               "skipped": 3}  # all pinned
    assert subprocess_json(daemon, "policy", "cpu", "mru")["previous"] == "lru"
    config = subprocess_json(daemon, "config")
    assert config["config"]["cpu_bytes"] == 64 << 20 and config["urls"] == [daemon.url]


def test_cli_verbs_in_process(capsys, daemon, client, tmp_path):
    spec = small_spec()
    ns = client.register(spec)
    tokens = tokens_for(1, 3)
    client.put(ns, tokens, payloads(spec, tokens))
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps(tokens.tolist()))
    assert cli_json(capsys, daemon, "pin", ns.hex(), "--tokens-file", str(tokens_file))
    assert cli_json(capsys, daemon, "unpin", ns.hex(), "--tokens-file",
                    str(tokens_file))["pinned_bytes"] == 0
    assert cli_json(capsys, daemon, "evict", ns.hex())["blocks"] == 3
    assert client.lookup(ns, tokens) == 0
    shown = cli_json(capsys, daemon, "policy")
    assert shown["tiers"] == {"cpu": "lru"} and "lru" in shown["available"]
    assert cli_json(capsys, daemon, "flush")["ssd"] is False
    assert cli_json(capsys, daemon, "drain")["draining"] is True
    assert cli_json(capsys, daemon, "drain", "--resume")["draining"] is False


def test_cli_tables(capsys, daemon, client):
    spec = small_spec()
    ns = client.register(spec)
    tokens = tokens_for(1, 2)
    client.put(ns, tokens, payloads(spec, tokens))
    code, out, _ = cli(capsys, daemon, "stats")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split()[:5] == ["tier", "policy", "capacity", "used", "blocks"]
    assert lines[1].split()[:5] == ["cpu", "lru", "64KiB", "1KiB", "2"]
    assert any(line.startswith(ns.hex()) for line in lines)
    assert "server: serving" in out
    code, out, _ = cli(capsys, daemon, "evict", ns.hex())
    assert (code, out) == (0, "evicted 2 blocks (1KiB)\n")
    code, out, _ = cli(capsys, daemon, "config")
    assert code == 0 and out.startswith("kvstore ") and "cpu_bytes" in out


def test_cli_errors(capsys, daemon):
    code, out, err = cli(capsys, daemon, "evict", "ab" * 16)
    assert (code, out) == (1, "")
    assert err == f"kvstore admin evict: NOT_FOUND: unknown namespace {'ab' * 16}\n"
    code, _, err = cli(capsys, daemon, "pin", "abcdef")
    assert code == 2 and "--tokens" in err
    code, _, err = cli(capsys, daemon, "evict", "abcdef", "--tokens", "1,x")
    assert code == 2 and "integers" in err
    code, _, err = cli(capsys, daemon, "policy", "cpu", "no-such-policy")
    assert code == 1 and "INVALID_ARGUMENT" in err and len(err.splitlines()) == 1
    code, _, err = cli(capsys, "127.0.0.1:1", "stats", "--timeout", "3")
    assert code == 3 and "unavailable" in err


def test_cli_token(capsys, running, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")
    token_file.chmod(0o600)
    daemon = running(daemon_config(admin_token_file=str(token_file)))
    code, _, err = cli(capsys, daemon, "stats")
    assert code == 1 and "UNAUTHENTICATED" in err
    doc = cli_json(capsys, daemon, "stats", "--token-file", str(token_file))
    assert doc["server"]["state"] == "serving"
    code, _, err = cli(capsys, daemon, "stats", "--token-file", str(tmp_path / "missing"))
    assert code == 2 and "cannot read" in err
