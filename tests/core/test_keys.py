import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kvstore import ROOT_KEY, block_key, block_keys
from kvstore.errors import InvalidArgument
from kvstore.tokens import as_tokens, as_tokens_many


def test_chain_matches_single_step():
    tokens = np.arange(40)
    keys = block_keys(tokens, 16)
    assert len(keys) == 2  # partial tail skipped
    assert keys[0] == block_key(ROOT_KEY, tokens[:16])
    assert keys[1] == block_key(keys[0], tokens[16:32])


def test_prefix_property():
    a = np.arange(64)
    b = a.copy()
    b[40] = 999
    ka, kb = block_keys(a, 16), block_keys(b, 16)
    assert ka[:2] == kb[:2] and ka[2] != kb[2] and ka[3] != kb[3]


def test_extra_changes_keys():
    tokens = list(range(32))
    assert block_keys(tokens, 16) != block_keys(tokens, 16, extra=b"lora:7")


def test_input_forms_agree():
    ref = block_keys(list(range(48)), 16)
    assert block_keys(np.arange(48, dtype=np.int64), 16) == ref
    assert block_keys(torch.arange(48), 16) == ref


def test_a_list_of_ids_converts_like_numpy_does():
    ids = [0, 1, 2**32 - 1, 151_643, np.int64(7), True]
    got = as_tokens(ids)
    assert got.dtype == np.dtype("<u4") and got.flags.c_contiguous
    assert got.tolist() == [0, 1, 2**32 - 1, 151_643, 7, 1]
    assert as_tokens([]).dtype == np.dtype("<u4") and len(as_tokens([])) == 0


@pytest.mark.parametrize("bad", [[-1, 2], [2**32], [[1, 2]], [1.5], [3, 2**32 + 5], [1, None],
                                 [2**64]])
def test_bad_tokens_rejected(bad):
    with pytest.raises(InvalidArgument):
        as_tokens(bad)


def test_as_tokens_many_passes_arrays_in_form_and_converts_the_rest():
    ready = np.arange(8, dtype=np.uint32)
    strided = np.arange(16, dtype=np.uint32)[::2]  # uint32 but not contiguous
    big_endian = np.arange(8, dtype=">u4")
    out = as_tokens_many([ready, list(range(4)), strided, big_endian, torch.arange(3)])
    assert out[0] is ready  # in form: as it is
    for got, want in zip(out, [range(8), range(4), range(0, 16, 2), range(8), range(3)]):
        assert got.dtype == np.dtype("<u4") and got.flags.c_contiguous
        assert got.tolist() == list(want)
    assert as_tokens_many(iter([ready])) == [ready]  # any iterable
    with pytest.raises(InvalidArgument):
        as_tokens_many([ready, [-1]])
    with pytest.raises(InvalidArgument):
        as_tokens_many([np.zeros((2, 4), dtype=np.uint32)])  # 2-D, even in uint32


@pytest.mark.integration
def test_keys_identical_across_processes():
    """A random seed (Python's hash) would make these differ between processes."""
    code = (
        "import numpy as np; from kvstore import block_keys;"
        "print(b''.join(block_keys(np.arange(1000) * 7919 % 50000, 64, extra=b'x')).hex())"
    )
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, check=True).stdout)
    assert len(outs) == 1
    expected = b"".join(block_keys(np.arange(1000) * 7919 % 50000, 64, extra=b"x")).hex()
    assert outs.pop().strip() == expected
