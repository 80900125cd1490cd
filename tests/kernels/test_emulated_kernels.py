"""The CUDA kernels (the unmodified pack.cu / unpack.cu) run on the CPU under the
emulation harness (tests/kernels/emulation) and are compared byte for byte with
the torch reference: every kernel x codec x dtype over a matrix of geometries.

The default run takes a quick subset (one geometry per feature, spread over the
codecs and dtypes); ``-m slow`` runs the full matrix. The launches go through
``cuda_backend.run`` (pointer tables, strides, offsets, SKIP_BLOCK holes,
vector/scalar choice, grid): only CuPy's launch is replaced.
"""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch

from kvstore.kernels import CODECS, payload_spec
from kvstore.kernels import cuda_backend as cb
from kvstore.layout import KVLayout
from tests.kernels.emulation.cases import DTYPES, Geo, check, check_block, expected_kernel
from tests.kernels.emulation.emulator import CXX, EmulatorLauncher

# integration: the module compiles the CUDA sources with g++ (tests/markers.py)
pytestmark = pytest.mark.integration

GEOS = [
    Geo("flash-nhd-d64-ebs16-T64"),
    Geo("flash-hnd-d128-H3", kind="hnd", H=3, D=128, T=32, S=3),
    Geo("odd-d33", D=33, ebs=8, T=40, S=2, nb=16),
    Geo("d36-unaligned-d", D=36, ebs=8, T=24, nb=10),
    Geo("gqa-one-kv-head", H=1, D=128, ebs=16, T=128, S=2, nb=20),
    Geo("gqa-h5-d80-T100-ebs10", H=5, D=80, ebs=10, T=100, S=2, nb=24),
    Geo("T16-ebs16", T=16, ebs=16, S=3, nb=8, L=3),
    Geo("T96-ebs32-d112", D=112, T=96, ebs=32, S=2, nb=8),
    Geo("T256-ebs128", T=256, ebs=128, S=2, nb=6, H=1, D=64),
    Geo("T512-ebs16", T=512, ebs=16, S=1, nb=40, H=1, L=1, D=64),
    Geo("slots-off-by-4", slot_offset=4, D=128, T=64, S=3),
    Geo("slots-off-by-4-d66", slot_offset=4, D=66, T=48, ebs=16, nb=8),
    Geo("d512", D=512, T=64, ebs=32, S=1, H=1, L=1, nb=4),
    Geo("no-skip", skip=False, D=96, T=128, ebs=64, S=2, nb=6),
    Geo("hf-start0", kind="hf", D=64, T=32, S=2),
    Geo("hf-start3-d36", kind="hf", D=36, T=16, S=3, start=3, H=3),
    Geo("hf-start5-d128", kind="hf", D=128, T=64, S=1, start=5, L=1),
    Geo("block-T100", kind="block", L=2, H=4, D=64, T=100),
    Geo("block-T64-d48", kind="block", L=1, H=2, D=48, T=64),
]


def _applies(g: Geo, codec: str) -> bool:
    return not (codec == "int4" and g.D % 2)  # int4 packs pairs: even head dims only


# The quick subset: each geometry once, codecs and dtypes rotating through it,
# plus every codec x dtype on the first (vectorised) and an unaligned geometry.
_COMBOS = list(itertools.product(CODECS, DTYPES))
QUICK = set()
for i, g in enumerate(GEOS):
    if g.name in ("T512-ebs16", "d512"):
        continue  # large: the full matrix only
    for k in range(2):
        codec, dtype = _COMBOS[(3 * i + 5 * k) % len(_COMBOS)]
        if _applies(g, codec):
            QUICK.add((g.name, codec, dtype))
for codec, dtype in _COMBOS:
    QUICK.add(("flash-nhd-d64-ebs16-T64", codec, dtype))
    QUICK.add(("slots-off-by-4-d66", codec, dtype))

PARAMS = [
    pytest.param(g, codec, dtype, id=f"{g}-{codec}-{str(dtype).removeprefix('torch.')}",
                 marks=() if (g.name, codec, dtype) in QUICK else pytest.mark.slow)
    for g in GEOS for codec in CODECS for dtype in DTYPES if _applies(g, codec)
]


def test_the_quick_subset_reaches_every_entry_point():
    """Every kv_{pack,unpack}_<codec>_<dtype>_<v|s> runs in the default run (each
    check asserts the variant it launched is the one expected here)."""
    by_name = {g.name: g for g in GEOS}
    reached = {expected_kernel(by_name[name], codec, dtype) for name, codec, dtype in QUICK}
    every = {f"_{cb._CODEC[c]}_{cb._DT[d]}_{v}" for c in CODECS for d in DTYPES for v in "vs"}
    assert reached == every  # x pack and unpack: both run in every check


@pytest.fixture(scope="module")
def emu():
    if shutil.which(CXX) is None:
        pytest.skip(f"{CXX} not on PATH: the CUDA emulator needs a C++ compiler")
    return EmulatorLauncher()


@pytest.mark.parametrize("g,codec,dtype", PARAMS)
def test_emulated_kernels_equal_the_reference(emu, g, codec, dtype):
    check(emu, g, codec, dtype, seed=len(g.name))


def _poisoned(codec: str, shape, spots) -> torch.Tensor:
    """Mask of the values sharing a scale group with a non-finite one (codecs.py)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for layer, kv, t, h, d in spots:
        if codec == "fp8_e4m3":
            mask[layer, kv, :, h, :] = True
        elif codec == "int8" or (codec == "int4" and kv == 1):
            mask[layer, kv, t, h, :] = True
        elif codec == "int4":
            g = t // 64
            mask[layer, 0, g * 64:(g + 1) * 64, h, d] = True
        else:
            mask[layer, kv, t, h, d] = True
    return mask


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("codec", CODECS)
def test_non_finite_input_poisons_its_scale_group(emu, codec, dtype):
    """A NaN, +inf or -inf makes its whole scale group decode as NaN, in the kernels
    and the reference alike (same payload bytes: scale NaN 0x7fc00000, q = 0); no
    NaN turns into a number (the old kernels' fmaxf dropped it and the clamp made
    it -448 * scale; an inf made the scale inf and decoded as -inf; int8 made NaN 0)."""
    g = torch.Generator().manual_seed(11)
    shape = (2, 2, 100, 2, 32)
    block = (torch.randn(shape, generator=g) * 3).to(dtype)
    spots = {(0, 0, 5, 1, 3): float("nan"), (1, 1, 7, 0, 2): float("inf"),
             (0, 1, 9, 0, 0): float("-inf"), (1, 0, 70, 1, 31): float("nan")}
    for (layer, kv, t, h, d), x in spots.items():
        block[layer, kv, t, h, d] = x
    payload, decoded = check_block(emu, block, codec)  # emulated == reference, bytes
    mask = _poisoned(codec, shape, spots)
    if codec == "none":
        assert torch.equal(decoded.view(torch.uint8), block.view(torch.uint8))
        return
    assert decoded[mask].isnan().all()
    assert decoded[~mask].isfinite().all()
    spec = payload_spec(KVLayout("block", 2, 2, 32, str(dtype).removeprefix("torch."), 100),
                        codec)
    scales = payload[spec.sections[0].offset:].view(torch.int32)
    assert (scales == 0x7FC00000).any()  # the canonical NaN, in the first scale section
