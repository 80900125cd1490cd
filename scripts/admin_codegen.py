"""Generate the admin API's Python code from ``kvstore/admin/admin.proto`` (grpcio-tools).

A development tool: it lives in ``scripts/`` and is not installed with the package.

The generated modules (``admin_pb2.py``, ``admin_pb2_grpc.py``, ``admin_pb2.pyi``)
are checked in, so the runtime needs only grpcio and protobuf. After editing the
proto, run ``python scripts/admin_codegen.py`` (grpcio-tools from the dev extra,
at ``GRPCIO_TOOLS_VERSION``: its protoc decides the protobuf gencode version, which
the protobuf runtime pinned in pyproject.toml must accept).
``tests/admin/test_codegen.py`` regenerates into a temporary folder and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

GRPCIO_TOOLS_VERSION = "1.85.1"
REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "kvstore" / "admin"
PROTO = "kvstore/admin/admin.proto"
GENERATED = ("admin_pb2.py", "admin_pb2_grpc.py", "admin_pb2.pyi")


def generate(out_dir: str | Path) -> list[Path]:
    """Run protoc on the proto; the modules land in ``out_dir/kvstore/admin/``."""
    import grpc_tools
    from grpc_tools import protoc

    out = Path(out_dir)
    (out / "kvstore" / "admin").mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{REPO}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out / "kvstore" / "admin" / name for name in GENERATED]


def main() -> int:
    import importlib.metadata

    version = importlib.metadata.version("grpcio-tools")
    if version != GRPCIO_TOOLS_VERSION:
        sys.stderr.write(
            f"grpcio-tools {version} installed; the checked-in code is from "
            f"{GRPCIO_TOOLS_VERSION} (update GRPCIO_TOOLS_VERSION and the pins together)\n"
        )
    for path in generate(REPO):
        sys.stderr.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
