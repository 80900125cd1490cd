import subprocess
import sys

import pytest

from kvstore import KVLayout
from kvstore.errors import InvalidArgument


def make(**kw):
    base = dict(model_id="llama-tiny", num_layers=4, num_kv_heads=2, head_dim=64)
    base.update(kw)
    return KVLayout(**base)


def test_shapes_and_sizes():
    layout = make(dtype="bfloat16", block_tokens=16)
    assert layout.kv_shape(10) == (4, 2, 10, 2, 64)
    assert layout.block_shape == (4, 2, 16, 2, 64)
    assert layout.block_nbytes == 4 * 2 * 16 * 2 * 64 * 2


@pytest.mark.parametrize(
    "field,value",
    [("num_layers", 0), ("head_dim", -1), ("dtype", "int8"), ("block_tokens", 0), ("tp_rank", 1)],
)
def test_invalid_layouts_raise(field, value):
    with pytest.raises(InvalidArgument):
        make(**{field: value})


def test_fingerprint_separates_everything_that_changes_bytes():
    base = make()
    prints = {
        base.fingerprint(),
        base.fingerprint(codec="fp8_e4m3"),
        base.fingerprint(tenant="acme"),
        make(dtype="bfloat16").fingerprint(),
        make(tp_size=2).fingerprint(),
        make(tp_size=2, tp_rank=1).fingerprint(),
        make(model_id="other").fingerprint(),
        make(block_tokens=128).fingerprint(),
    }
    assert len(prints) == 8
    assert base.fingerprint() == make().fingerprint()
    assert len(base.fingerprint()) == 16


@pytest.mark.integration
def test_fingerprint_stable_across_processes():
    code = (
        "from kvstore import KVLayout;"
        "print(KVLayout('llama-tiny', 4, 2, 64).fingerprint_hex('int8', 't1'))"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert outs == {make().fingerprint_hex("int8", "t1") + "\n"}


def test_dict_round_trip():
    layout = make(dtype="float32", tp_size=4, tp_rank=3)
    assert KVLayout.from_dict(layout.to_dict()) == layout


def test_accepts_torch_dtype():
    import torch

    assert make(dtype=torch.bfloat16).dtype == "bfloat16"
