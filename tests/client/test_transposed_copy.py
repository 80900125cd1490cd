"""``transposed_copy``: every CPU copy of a block, run by run when the innermost axis allows."""

import numpy as np
import pytest
import torch

from kvstore.client.codec import transposed_copy
from kvstore.kernels.host_copy import run_contiguous

pytestmark = pytest.mark.unit


def _random(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.uint8])
def test_head_major_to_token_major_and_back(dtype):
    """The HF adapter's two directions: a strided view on either side, bytes kept exactly."""
    heads = _random((3, 2, 4, 40, 8), dtype, seed=1)  # [L, 2, H, T, D], T of a bigger buffer
    view = heads[:, :, :, 5:37]  # strided on the token axis
    blocks = torch.empty((3, 2, 32, 4, 8), dtype=dtype)
    transposed_copy(blocks, view.transpose(2, 3))
    assert torch.equal(blocks.view(torch.uint8), view.transpose(2, 3).contiguous().view(torch.uint8))
    back = torch.zeros_like(heads)
    transposed_copy(back[:, :, :, 5:37], blocks.transpose(2, 3))
    assert torch.equal(back[:, :, :, 5:37].contiguous().view(torch.uint8),
                       view.contiguous().view(torch.uint8))
    assert not back[:, :, :, :5].any() and not back[:, :, :, 37:].any()  # nothing outside


def test_an_innermost_axis_with_a_stride_falls_back_to_element_copies():
    src = _random((4, 6, 10), torch.float16, seed=2)
    dst = torch.zeros((4, 6, 5), dtype=torch.float16)
    strided = src[:, :, ::2]
    assert not run_contiguous(strided.view(torch.int16).numpy())
    transposed_copy(dst, strided)
    assert torch.equal(dst, strided)


def testrun_contiguous_reads_the_innermost_axis():
    a = np.zeros((4, 8), dtype=np.int16)
    assert run_contiguous(a) and run_contiguous(a[:, 2:6]) and run_contiguous(a.T.T)
    assert not run_contiguous(a.T)  # innermost stride is a row
    assert not run_contiguous(a[:, :1]) and not run_contiguous(np.zeros(0, dtype=np.int16))
