"""The distribution installs one top-level name, `kvstore`, with its subpackages."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ["prefix_index", "eviction", "transport", "kernels", "client"]
INNER = ["store", "ssd", "daemon", "admin", "metrics", "cluster", "demo"]


def test_subpackages_import_from_their_folders():
    import importlib

    for name in SUBPACKAGES:
        module = importlib.import_module(f"kvstore.{name}")
        assert Path(module.__file__).parent == ROOT / name
    for name in INNER:
        module = importlib.import_module(f"kvstore.{name}")
        assert Path(module.__file__).parent == ROOT / "kvstore" / name


@pytest.mark.integration
@pytest.mark.slow
def test_wheel_has_only_kvstore_top_level(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git missing")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob("kvstore-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"kvstore"}
    for name in SUBPACKAGES + INNER:
        assert f"kvstore/{name}/__init__.py" in names
    assert "kvstore/admin/admin.proto" in names
    assert not any("admin_codegen" in n for n in names)  # a development tool (scripts/)
    # the build must leave no artefacts in the source tree
    shutil.rmtree(ROOT / "build", ignore_errors=True)
