"""scripts/gpu_check.sh --device cpu: the device check's script works (CI has no GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(400)
def test_gpu_check_script_on_cpu_writes_its_json(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "unused"))
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=380, env=env,
        cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text().startswith("# kvstore device check (cpu")
    s = result["sections"]
    assert result["device"] == "cpu" and result["quick"]
    assert set(s) == {"env", "tests", "sanitizer", "kernels", "offload", "ttft"}
    errors = {name: sec["error"] for name, sec in s.items() if "error" in sec}
    assert not errors, errors
    assert s["env"]["cuda_available"] is False and s["env"]["torch"]
    t = s["tests"]  # the CPU stand-ins of the GPU tests ran through pytest and passed
    assert t["rc"] == 0 and t["counts"].get("passed", 0) >= 4 and not t["counts"].get("failed")
    assert s["sanitizer"] == {"skipped": "needs CUDA", "seconds": s["sanitizer"]["seconds"]}
    ops = {r["name"] for r in s["kernels"]["rows"]}
    assert {"copy/-", "pack/fp8_e4m3", "unpack/fp8_e4m3", "pack/int4"} <= ops
    assert all(r["gbps"] > 0 for r in s["kernels"]["rows"])
    offload = {r["name"]: r for r in s["offload"]["rows"]}
    assert set(offload) == {"device->arena", "arena->device", "device->pageable",
                            "pageable->device"}
    assert s["offload"]["bytes_ok"] and offload["device->arena"]["copies"] == 8
    ttft = s["ttft"]
    assert ttft["reused"] == ttft["tokens"] and ttft["max_logprob_diff"] < 1e-4
    assert ttft["same_token"] and ttft["recompute_s"] > 0 and ttft["full_hit_s"] > 0
    names = {t["target"] for t in result["targets"]}
    assert "pack + fp8 vs device copy" in names and all(t["met"] is None
                                                         for t in result["targets"])
