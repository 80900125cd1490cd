"""host_empty: the CPU tensors ``ns.get`` returns, allocated through numpy."""

import pytest
import torch

from kvstore.client.host_buffers import host_empty

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.uint8])
def test_host_empty_is_a_fresh_writable_tensor_of_the_shape(dtype):
    a, b = host_empty((2, 2, 16, 4, 8), dtype), host_empty((2, 2, 16, 4, 8), dtype)
    assert a.shape == (2, 2, 16, 4, 8) and a.dtype == dtype and a.is_contiguous()
    assert a.device.type == "cpu" and a.data_ptr() != b.data_ptr()
    a.fill_(1)
    b.fill_(2)
    assert bool((a == 1).all()) and bool((b == 2).all())
