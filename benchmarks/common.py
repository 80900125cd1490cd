"""Helpers shared by the benchmarks: machine description, a text table, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path


def machine_info() -> dict:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Print ``rows`` as an aligned text table of ``columns``."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_json(path: str | os.PathLike, name: str, rows: Sequence[dict]) -> None:
    """Write ``{"benchmark": name, "machine": {...}, "rows": [...]}`` to ``path``."""
    doc = {"benchmark": name, "machine": machine_info(), "rows": list(rows)}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
