"""Fixtures of the kernels tests: the numpy oracle and block generators."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def oracle():
    """tests/kernels/numpy_oracle.py as a module (test files cannot import each other)."""
    spec = importlib.util.spec_from_file_location("kv_numpy_oracle", _HERE / "numpy_oracle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_kv(shape, dtype: torch.dtype, seed: int, group_dims=(0, 1, 3)) -> torch.Tensor:
    """Normal values whose magnitude varies per (layer, K/V, head) of a block over 5
    decades (finite in float16 too), with outliers, an all-zero K head and a
    constant V head (scale-0 groups)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    scale_shape = [s if i in group_dims else 1 for i, s in enumerate(shape)]
    x = x * 10.0 ** (torch.rand(scale_shape, generator=g) * 5 - 3)
    outliers = torch.rand(shape, generator=g) < 0.002
    x = torch.where(outliers, x * 50, x)
    if x.dim() == 5:
        x[0, 0, :, 0] = 0.0  # all-zero K head of layer 0: scale 0
        x[-1, 1, :, -1] = 0.75  # constant V head: int4 range 0
    return x.to(dtype)


@pytest.fixture(scope="session")
def make_block():
    return random_kv
