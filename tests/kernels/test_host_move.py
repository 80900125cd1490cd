"""``host_copy.move``: np.copyto's result, whichever way it takes (int64 words, opaque runs,
element by element), for contiguous, strided and misaligned arrays."""

import os
import random

import numpy as np
import pytest

from kvstore.kernels.host_copy import MIN_WORD_RUN, contiguous_bytes, move

pytestmark = pytest.mark.unit


def _pair(shape, dtype, dst_offset: int, seed: int):
    rng = np.random.default_rng(seed)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    src = rng.integers(0, 256, nbytes, dtype=np.uint8).view(dtype).reshape(shape)
    raw = np.zeros(nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64 + dst_offset
    dst = raw[start : start + nbytes].view(dtype).reshape(shape)
    return dst, src, raw


@pytest.mark.parametrize("offset", [0, 8, 16, 2])
@pytest.mark.parametrize("shape", [(4, 2048), (2, 2, 256, 8, 16), (3, 5, 7), (1, 4096)])
def test_move_equals_copyto_whatever_the_alignment(shape, offset):
    dst, src, _ = _pair(shape, np.int16, offset, seed=1)
    move(dst, src)
    assert np.array_equal(dst, src)


def test_a_strided_block_of_a_bigger_tensor_is_filled_and_nothing_else():
    """The decode of block 1 into ``[L, 2, T, H, D]``: runs of H*D*B elements per (L, K/V)."""
    out = np.zeros((2, 2, 3 * 64, 4, 32), dtype=np.float16)
    block = np.random.default_rng(2).standard_normal((2, 2, 64, 4, 32)).astype(np.float16)
    view = out[:, :, 64:128]
    assert contiguous_bytes(view, block) == 64 * 4 * 32 * 2 >= MIN_WORD_RUN
    move(view, block)
    assert np.array_equal(out[:, :, 64:128].view(np.int16), block.view(np.int16))
    assert not out[:, :, :64].any() and not out[:, :, 128:].any()


def test_transposes_and_odd_shapes_keep_every_byte():
    seed = int(os.environ.get("KVSTORE_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    for _ in range(50):
        shape = tuple(rng.choice([1, 2, 3, 8, 64]) for _ in range(rng.randint(1, 4)))
        dst, src, _ = _pair(shape, rng.choice([np.uint8, np.int16, np.int32]), rng.choice([0, 8, 4]),
                            seed=rng.randrange(1000))
        if dst.ndim > 1 and rng.random() < 0.5:  # a transposed source
            src = np.ascontiguousarray(src.swapaxes(0, -1)).swapaxes(0, -1)
        move(dst, src)
        assert np.array_equal(dst, src), shape


def test_contiguous_bytes_stops_at_the_first_axis_either_side_steps_over():
    a = np.zeros((4, 8, 16), dtype=np.int16)
    assert contiguous_bytes(a, a) == a.nbytes
    assert contiguous_bytes(a[:, :4], a[:, 4:]) == 4 * 16 * 2
    assert contiguous_bytes(a.transpose(1, 0, 2), a.transpose(1, 0, 2)) == 16 * 2
