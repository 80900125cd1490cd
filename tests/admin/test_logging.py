"""Structured logs: library code logs through ``logging`` (never ``print``); JSON lines parse."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

from kvstore.daemon.daemon import JsonFormatter

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ["kvstore", "transport", "eviction", "prefix_index", "client", "kernels"]
# modules whose job is writing to stdout for a person (command-line output)
CLI_OUTPUT = {"kvstore/daemon/cli.py", "kvstore/admin/cli.py", "kvstore/__main__.py",
              "kvstore/demo/main.py", "kvstore/demo/local_model.py",
              "kvstore/demo/trained_model.py", "kvstore/demo/vllm_chat.py"}


def test_library_code_never_prints():
    offenders = []
    for folder in LIBRARY:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in CLI_OUTPUT or "_pb2" in rel:
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "print"):
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], f"print() in library code (use logging): {offenders}"


def test_json_log_lines():
    record = logging.LogRecord("kvstore.admin", logging.WARNING, __file__, 1,
                               "admin API on %s", ("127.0.0.1:7803",), None)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "warning" and doc["logger"] == "kvstore.admin"
    assert doc["msg"] == "admin API on 127.0.0.1:7803" and isinstance(doc["ts"], float)
