"""Block codecs: sizes, exact round trips, the numpy oracle, error bounds, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.kernels import CODECS, decode, encode, payload_nbytes, payload_spec
from kvstore.layout import KVLayout

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
HALF_ULP = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8, "float32": 2.0 ** -24}
TINY = {"float16": 2.0 ** -25, "bfloat16": 1e-37, "float32": 1e-44}
QUANTIZED = ("fp8_e4m3", "int8", "int4")


def _layout(L, T, H, D, dtype):
    return KVLayout("test/model", L, H, D, dtype, T)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy()


def assert_within_bounds(x: np.ndarray, y: np.ndarray, codec: str, dtype: str, group: int = 64):
    """|x - y| within the documented bound, relative to each scale group's max."""
    hm = x.transpose(0, 1, 3, 2, 4)  # [L, 2, H, T, D]
    if codec == "fp8_e4m3":
        bound = np.abs(hm).max(axis=(3, 4), keepdims=True) / 28.0
    elif codec == "int8":
        bound = np.abs(hm).max(axis=4, keepdims=True) / 254.0
    else:
        T = hm.shape[3]
        k = hm[:, 0]
        kb = np.empty_like(k)
        for g in range(0, T, group):
            part = k[:, :, g:g + group]
            kb[:, :, g:g + group] = (part.max(axis=2, keepdims=True)
                                     - part.min(axis=2, keepdims=True)) / 30.0
        v = hm[:, 1]
        vb = (v.max(axis=3, keepdims=True) - v.min(axis=3, keepdims=True)) / 30.0
        bound = np.stack([kb, np.broadcast_to(vb, v.shape)], axis=1)
    bound = np.broadcast_to(bound, hm.shape).transpose(0, 1, 3, 2, 4)
    err = np.abs(x.astype(np.float64) - y)
    tol = bound * (1 + 1e-5) + HALF_ULP[dtype] * np.abs(y) + 1e-6 * np.abs(x) + TINY[dtype]
    worst = np.argmax(err - tol)
    assert (err <= tol).all(), (codec, dtype, err.flat[worst], tol.flat[worst])


def check_codec_against_oracle(oracle, block: torch.Tensor, codec: str, bounds: bool = True):
    L, _, T, H, D = block.shape
    dtype = str(block.dtype).removeprefix("torch.")
    layout = _layout(L, T, H, D, dtype)
    payload = encode(block, codec)
    assert payload.dtype == torch.uint8 and payload.dim() == 1
    assert payload.numel() == payload_nbytes(layout, codec)
    x = _np(block)
    expected = oracle.encode(x, codec, layout.itemsize)
    got = payload.numpy()
    assert got.size == expected.size
    if not np.array_equal(got, expected):
        diff = np.flatnonzero(got != expected)
        secs, _ = oracle.sections(codec, L, T, H, D, layout.itemsize)
        where = [n for n, off, _, _ in secs if off <= diff[0]][-1]
        pytest.fail(f"{codec}: {diff.size} bytes differ from the oracle, first at "
                    f"{diff[0]} (section {where})")
    out = decode(payload, layout, codec)
    assert out.dtype == block.dtype and tuple(out.shape) == layout.block_shape
    y = _np(out)
    np.testing.assert_array_equal(y, oracle.decode(expected, codec, L, T, H, D, dtype))
    if bounds:
        assert_within_bounds(x, y, codec, dtype)


# -- sizes ----------------------------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dims", [(1, 16, 1, 64), (2, 100, 3, 80), (32, 256, 8, 128),
                                  (4, 512, 2, 112), (3, 48, 5, 96)])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_payload_size_is_the_documented_layout(oracle, codec, dims, dtype):
    L, T, H, D = dims
    layout = _layout(L, T, H, D, dtype)
    _, total = oracle.sections(codec, L, T, H, D, layout.itemsize)
    assert payload_nbytes(layout, codec) == total
    other = KVLayout("another/model", L, H, D, dtype, T, tp_rank=0, tp_size=2)
    assert payload_nbytes(other, codec) == total  # a function of geometry + codec only


def test_payload_size_ratios():
    layout = _layout(32, 256, 8, 128, "float16")
    ratio = {c: payload_nbytes(layout, c) / layout.block_nbytes for c in CODECS}
    assert ratio["none"] == 1.0
    assert 0.5 <= ratio["fp8_e4m3"] < 0.501
    assert 0.5 <= ratio["int8"] < 0.52
    assert 0.25 <= ratio["int4"] < 0.30


# -- none: exact bytes --------------------------------------------------------
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_none_is_bit_exact_for_any_bits(dtype):
    tdt = DTYPES[dtype]
    shape = (2, 2, 48, 3, 80)
    g = torch.Generator().manual_seed(7)
    bits = torch.randint(0, 256, (int(np.prod(shape)) * tdt.itemsize,), dtype=torch.uint8,
                         generator=g)
    block = bits.view(tdt).view(shape)  # includes NaNs, infinities, subnormals
    payload = encode(block, "none")
    assert torch.equal(payload, bits)
    out = decode(payload, _layout(2, 48, 3, 80, dtype), "none")
    assert torch.equal(out.view(torch.uint8).flatten(), bits)


def test_encode_accepts_a_non_contiguous_block(make_block):
    block = make_block((2, 2, 32, 4, 64), torch.float16, 3)
    strided = block.transpose(2, 3).contiguous().transpose(2, 3)
    assert not strided.is_contiguous()
    for codec in CODECS:
        assert torch.equal(encode(strided, codec), encode(block, codec))


# -- quantized codecs vs the numpy oracle -------------------------------------
@pytest.mark.parametrize("codec", QUANTIZED)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", [64, 80, 96, 112, 128])
def test_quantized_codecs_match_the_oracle(oracle, make_block, codec, dtype, head_dim):
    block = make_block((2, 2, 100, 2, head_dim), DTYPES[dtype], head_dim)
    check_codec_against_oracle(oracle, block, codec)


@pytest.mark.parametrize("codec", QUANTIZED)
@pytest.mark.parametrize("T,H", [(16, 8), (64, 4), (256, 2), (512, 1)])
def test_quantized_codecs_block_sizes_and_gqa(oracle, make_block, codec, T, H):
    block = make_block((1, 2, T, H, 128), torch.bfloat16, T + H)
    check_codec_against_oracle(oracle, block, codec)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    codec=st.sampled_from(QUANTIZED),
    dtype=st.sampled_from(list(DTYPES)),
    L=st.integers(1, 3),
    T=st.integers(1, 160),
    H=st.integers(1, 4),
    D=st.sampled_from([2, 8, 14, 64, 80, 96, 112, 128]),
    seed=st.integers(0, 2 ** 16),
)
def test_quantized_codecs_random_shapes(oracle, make_block, codec, dtype, L, T, H, D, seed):
    check_codec_against_oracle(oracle, make_block((L, 2, T, H, D), DTYPES[dtype], seed), codec)


def test_fp8_saturates_and_keeps_signs():
    block = torch.zeros((1, 2, 4, 1, 8), dtype=torch.float32)
    block[0, 0, 0, 0, 0] = 1000.0  # amax: maps to exactly 448
    block[0, 0, 1, 0, 1] = -1000.0
    block[0, 0, 2, 0, 2] = -1e-9  # rounds to -0
    layout = _layout(1, 4, 1, 8, "float32")
    out = decode(encode(block, "fp8_e4m3"), layout, "fp8_e4m3")
    assert out[0, 0, 0, 0, 0] == 1000.0 and out[0, 0, 1, 0, 1] == -1000.0
    assert out[0, 0, 2, 0, 2] == 0 and torch.signbit(out[0, 0, 2, 0, 2])
    assert torch.equal(out[0, 1], block[0, 1])  # all-zero V: scale 0, exact zeros


@pytest.mark.parametrize("codec", QUANTIZED)
def test_signed_zeros_encode_canonically(oracle, make_block, codec):
    block = make_block((2, 2, 70, 2, 64), torch.bfloat16, 11)
    block[0, 0, :, 0] = -0.0  # a whole K head of -0 (zero scales, -0 minima)
    block[1, 1, 3] = -0.0  # one V token of -0 (int8 / int4 per-token groups)
    block[1, 0, ::2, 1] = -0.0  # -0 mixed with +0 and values in K channels
    block[1, 0, 1::2, 1] = 0.0
    check_codec_against_oracle(oracle, block, codec)


@pytest.mark.parametrize("codec", QUANTIZED)
def test_subnormal_scales_saturate_like_the_oracle(oracle, make_block, codec):
    """Groups whose scale is subnormal (float32 values near 2^-140) or zero: the
    division may overshoot the code range there, so the reference must clamp
    exactly as the format says (it skips the clamp pass when every scale is normal).
    The documented error bounds assume normal scales, so only the bytes are held."""
    block = make_block((2, 2, 70, 2, 64), torch.float32, 13)
    tiny = torch.randn(70, 64, generator=torch.Generator().manual_seed(1)) * 2.0 ** -140
    block[0, 0, :, 1] = tiny  # a K head: fp8 / int4 groups with subnormal scales
    block[1, 1, :, 0] = tiny * 3  # a V head: int8 / int4 per-token groups
    block[1, 1, 5, 1, :3] = 2.0 ** -149  # one token: smallest subnormals and zeros
    block[1, 1, 5, 1, 3:] = 0.0
    check_codec_against_oracle(oracle, block, codec, bounds=False)


def test_int4_odd_head_dim_is_refused():
    with pytest.raises(InvalidArgument, match="even"):
        payload_nbytes(_layout(1, 16, 1, 65, "float16"), "int4")
    with pytest.raises(InvalidArgument, match="even"):
        encode(torch.zeros((1, 2, 16, 1, 65), dtype=torch.float16), "int4")
    assert payload_nbytes(_layout(1, 16, 1, 65, "float16"), "int8") > 0


def test_payload_spec_sections_are_aligned_and_disjoint():
    for codec in CODECS:
        spec = payload_spec(_layout(3, 100, 5, 80, "bfloat16"), codec)
        end = 0
        for sec in spec.sections:
            assert sec.offset % 16 == 0 and sec.offset >= end
            end = sec.offset + sec.nbytes
        assert end <= spec.nbytes and (codec == "none" or spec.nbytes % 16 == 0)


# -- bad input ----------------------------------------------------------------
def test_unknown_codec():
    block = torch.zeros((1, 2, 16, 1, 64), dtype=torch.float16)
    with pytest.raises(InvalidArgument, match="unknown codec"):
        encode(block, "fp4")
    with pytest.raises(InvalidArgument, match="unknown codec"):
        payload_nbytes(_layout(1, 16, 1, 64, "float16"), "zstd")
    with pytest.raises(InvalidArgument, match="unknown codec"):
        decode(torch.zeros(10, dtype=torch.uint8), _layout(1, 16, 1, 64, "float16"), "lz4")


@pytest.mark.parametrize("bad", [
    torch.zeros((1, 2, 16, 1, 64), dtype=torch.float64),
    torch.zeros((1, 2, 16, 1, 64), dtype=torch.int32),
    torch.zeros((2, 16, 1, 64), dtype=torch.float16),
    torch.zeros((1, 3, 16, 1, 64), dtype=torch.float16),
    torch.zeros((1, 2, 0, 1, 64), dtype=torch.float16),
    np.zeros((1, 2, 16, 1, 64), dtype=np.float16),
])
def test_encode_rejects_bad_blocks(bad):
    with pytest.raises(InvalidArgument):
        encode(bad, "int8")


def test_decode_rejects_bad_payloads():
    layout = _layout(1, 16, 1, 64, "float16")
    good = encode(torch.ones(layout.block_shape, dtype=torch.float16), "int8")
    with pytest.raises(InvalidArgument, match="bytes"):
        decode(good[:-1], layout, "int8")
    with pytest.raises(InvalidArgument, match="bytes"):
        decode(good, layout, "fp8_e4m3")  # another codec's size
    with pytest.raises(InvalidArgument, match="uint8"):
        decode(good.view(torch.int8), layout, "int8")
    with pytest.raises(InvalidArgument, match="uint8"):
        decode(good.view(1, -1), layout, "int8")
    with pytest.raises(InvalidArgument, match="KVLayout"):
        decode(good, {"num_layers": 1}, "int8")
    with pytest.raises(LayoutMismatch):
        decode(good, layout, "int8", out=torch.empty((1, 2, 16, 1, 64), dtype=torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("codec", CODECS)
def test_non_finite_input_matches_the_oracle(oracle, codec, dtype):
    """NaN / +inf / -inf poison their scale group (codecs.py): the reference writes
    the oracle's bytes (scale NaN, q = 0) and decodes the group to NaN."""
    g = torch.Generator().manual_seed(2)
    block = (torch.randn((2, 2, 80, 3, 16), generator=g) * 5).to(dtype)
    block[0, 0, 3, 1, 2] = float("nan")
    block[1, 1, 70, 2, 5] = float("inf")
    block[0, 1, 10, 0, 0] = float("-inf")
    block[1, 0, 65, 0, 7] = float("inf")  # int4: the second (ragged) K group
    if codec != "none":  # (the oracle's none takes raw bytes; the check below is exact)
        check_codec_against_oracle(oracle, block, codec, bounds=False)
    out = decode(encode(block, codec), _layout(2, 80, 3, 16, str(dtype)[6:]), codec)
    if codec == "none":
        assert torch.equal(out.view(torch.uint8), block.view(torch.uint8))
    else:
        assert out.isnan().any() and not out.isinf().any()
        assert out[0, 0, :, 1].isnan().any() and out[0, 0, :, 0].isfinite().all()
