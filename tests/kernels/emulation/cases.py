"""The emulated kernels against the torch reference: geometries and checks.

Not a test module. Each check runs the real ``kvstore.kernels`` entry points
(``pack_paged`` / ``unpack_paged`` / ``pack_hf`` / ``unpack_hf`` / ``encode`` /
``decode``) once with ``backend="reference"`` and once with ``backend="cuda"``,
the latter through ``cuda_backend.run`` and an :class:`EmulatorLauncher`, and
compares the payloads and the written caches byte for byte (decoded NaNs by
position: their bit patterns are not specified).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kvstore.kernels import (
    SKIP_BLOCK,
    EngineKind,
    EngineLayout,
    decode,
    dispatch,
    encode,
    pack_hf,
    pack_paged,
    payload_nbytes,
    unpack_hf,
    unpack_paged,
)
from kvstore.kernels import cuda_backend as cb
from kvstore.layout import KVLayout

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@contextlib.contextmanager
def emulated(launcher):
    """``backend="cuda"`` runs ``launcher`` on CPU tensors (the dispatcher's device
    check is the one thing bypassed; ``unsupported`` still refuses what the
    kernels cannot take)."""
    real_choose = dispatch.choose

    def choose(src, codec, backend):
        if backend != dispatch.CUDA:
            return real_choose(src, codec, backend)
        problem = cb.unsupported(src, codec)
        assert problem is None, problem
        return dispatch.CUDA

    previous = cb.set_launcher(launcher)
    dispatch.choose = choose
    cb._TABLES.clear()
    try:
        yield launcher
    finally:
        dispatch.choose = real_choose
        cb.set_launcher(previous)
        cb._TABLES.clear()


@dataclass(frozen=True)
class Geo:
    """One geometry: ``kind`` "nhd" / "hnd" (vLLM flash, HND strides), "hf", "block"."""

    name: str
    kind: str = "nhd"
    L: int = 2
    H: int = 2
    D: int = 64
    ebs: int = 16
    T: int = 64
    S: int = 2
    nb: int = 12
    slot_offset: int = 0  # bytes: 4 makes slots 16-byte misaligned (scalar kernels)
    skip: bool = True  # SKIP_BLOCK holes in the unpack
    start: int = 0  # HF: first token
    batch: int = 2  # HF: batch rows (the last one is used)

    def __str__(self) -> str:
        return self.name


def values(shape, dtype, seed, head_dim_index) -> torch.Tensor:
    """Normal values whose magnitude varies per head over 4 decades, outliers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    sshape = [1] * len(shape)
    sshape[head_dim_index] = shape[head_dim_index]
    x = x * 10.0 ** (torch.rand(sshape, generator=g) * 4 - 2)
    x = torch.where(torch.rand(shape, generator=g) < 0.003, x * 40, x)
    return x.to(dtype)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal, except that NaN matches any NaN (CUDA's are canonical)."""
    if a.dtype.is_floating_point:
        na, nb_ = a.isnan(), b.isnan()
        if not torch.equal(na, nb_):
            return False
        a, b = a.masked_fill(na, 0), b.masked_fill(nb_, 0)
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _slots(S: int, nbytes: int, offset: int) -> list[torch.Tensor]:
    """S payload slots in one arena, each starting ``offset`` bytes past 16-aligned."""
    stride = (nbytes + 15) // 16 * 16 + 16
    arena = torch.zeros(S * stride + 16, dtype=torch.uint8)
    return [arena[i * stride + offset: i * stride + offset + nbytes] for i in range(S)]


def _flash_caches(g: Geo, layout: KVLayout, dtype, seed):
    caches = []
    for i in range(g.L):
        x = values((2, g.nb, g.ebs, g.H, g.D), dtype, seed + i, 3)
        if i == 0:
            x[0, :, :, 0] = 0  # an all-zero K head: scale-0 groups
        if i == g.L - 1:
            x[1, :, :, -1] = 0.75  # a constant V head: int4 range 0
        if g.kind == "hnd":  # logical [2, nb, bs, H, D], physical [2, nb, H, bs, D]
            x = x.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
        caches.append(x)
    return caches


def expected_kernel(g: Geo, codec: str, dtype) -> str:
    esz = torch.tensor([], dtype=dtype).element_size()
    vec = (g.D * esz) % 16 == 0 and g.slot_offset % 16 == 0 and \
        (g.kind != "hf" or (g.start * g.D * esz) % 16 == 0)
    return f"_{cb._CODEC[codec]}_{cb._DT[dtype]}_{'v' if vec else 's'}"


def check_paged(launcher, g: Geo, codec: str, dtype, seed: int = 0) -> None:
    layout = KVLayout("m", g.L, g.H, g.D, str(dtype).removeprefix("torch."), g.T)
    engine = EngineLayout(EngineKind.VLLM_FLASH, g.ebs)
    caches = _flash_caches(g, layout, dtype, seed)
    R = g.T // g.ebs
    gen = torch.Generator().manual_seed(seed + 7)
    ids = torch.randperm(g.nb, generator=gen)[: g.S * R].tolist()
    n = payload_nbytes(layout, codec)
    ref = pack_paged(caches, ids, layout, codec, engine, backend="reference")
    before = len(launcher.launches)
    with emulated(launcher):
        got = pack_paged(caches, ids, layout, codec, engine, out=_slots(g.S, n, g.slot_offset),
                         backend="cuda")
    assert len(launcher.launches) == before + 1
    assert launcher.launches[-1]["name"].endswith(expected_kernel(g, codec, dtype))
    for i, (r, e) in enumerate(zip(ref, got)):
        if not torch.equal(r, e):
            diff = (r != e).nonzero().flatten()
            raise AssertionError(f"pack {codec} {dtype} {g}: payload {i} differs from the "
                                 f"reference at {diff.numel()} of {n} bytes, first at byte "
                                 f"{int(diff[0])} (reference {int(r[diff[0]])}, emulated "
                                 f"{int(e[diff[0]])})")
    targets = torch.randperm(g.nb, generator=gen)[: g.S * R]
    if g.skip:
        targets[0] = SKIP_BLOCK
        targets[-1] = SKIP_BLOCK
    dst_ref = _flash_caches(g, layout, dtype, seed + 100)  # untouched blocks must stay
    dst_emu = [c.clone() for c in dst_ref]
    unpack_paged(ref, dst_ref, targets, layout, codec, engine, backend="reference")
    with emulated(launcher):
        unpack_paged(_slots_of(got, g.slot_offset), dst_emu, targets, layout, codec, engine,
                     backend="cuda")
    for lay, (a, b) in enumerate(zip(dst_ref, dst_emu)):
        if not same_bytes(a, b):
            bad = (a.view(torch.uint8) != b.view(torch.uint8)).nonzero()
            raise AssertionError(f"unpack {codec} {dtype} {g}: layer {lay} differs from the "
                                 f"reference at {bad.shape[0]} bytes, first at "
                                 f"{bad[0].tolist()}")


def _slots_of(payloads, offset):
    """The payloads copied into fresh slots at ``offset`` (the unpack's alignment)."""
    slots = _slots(len(payloads), payloads[0].numel(), offset)
    for s, p in zip(slots, payloads):
        s.copy_(p)
    return slots


def check_hf(launcher, g: Geo, codec: str, dtype, seed: int = 0) -> None:
    layout = KVLayout("m", g.L, g.H, g.D, str(dtype).removeprefix("torch."), g.T)
    seq = g.start + g.S * g.T + 5
    past = [(values((g.batch, g.H, seq, g.D), dtype, seed + 2 * i, 1),
             values((g.batch, g.H, seq, g.D), dtype, seed + 2 * i + 1, 1)) for i in range(g.L)]
    num = g.S * g.T
    b = g.batch - 1
    ref = pack_hf(past, layout, codec, start=g.start, num_tokens=num, batch_index=b,
                  backend="reference")
    with emulated(launcher):
        got = pack_hf(past, layout, codec, start=g.start, num_tokens=num, batch_index=b,
                      backend="cuda")
    assert launcher.launches[-1]["name"].endswith(expected_kernel(g, codec, dtype))
    for r, e in zip(ref, got):
        assert torch.equal(r, e), f"pack_hf {codec} {dtype} {g}: payload differs"
    dst_ref = [(k.clone(), v.clone()) for k, v in past]
    dst_emu = [(k.clone(), v.clone()) for k, v in past]
    unpack_hf(ref, dst_ref, layout, codec, start=g.start, batch_index=b, backend="reference")
    with emulated(launcher):
        unpack_hf(got, dst_emu, layout, codec, start=g.start, batch_index=b, backend="cuda")
    for (ka, va), (kb, vb) in zip(dst_ref, dst_emu):
        assert same_bytes(ka, kb) and same_bytes(va, vb), f"unpack_hf {codec} {dtype} {g}"


def check_block(launcher, block: torch.Tensor, codec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """encode / decode of one canonical block; returns (payload, decoded)."""
    L, _, T, H, D = block.shape
    layout = KVLayout("block", L, H, D, str(block.dtype).removeprefix("torch."), T)
    ref = encode(block, codec, backend="reference")
    with emulated(launcher):
        got = encode(block, codec, backend="cuda")
    if not torch.equal(ref, got):
        diff = (ref != got).nonzero().flatten()
        raise AssertionError(f"encode {codec} {block.dtype} {tuple(block.shape)}: payload "
                             f"differs at {diff.numel()} bytes, first at {int(diff[0])}")
    out_ref = decode(ref, layout, codec, backend="reference")
    with emulated(launcher):
        out_emu = decode(ref, layout, codec, backend="cuda")
    assert same_bytes(out_ref, out_emu), f"decode {codec} {block.dtype} {tuple(block.shape)}"
    return got, out_emu


def check(launcher, g: Geo, codec: str, dtype, seed: int = 0) -> None:
    if g.kind == "hf":
        check_hf(launcher, g, codec, dtype, seed)
    elif g.kind == "block":
        block = values((g.L, 2, g.T, g.H, g.D), dtype, seed, 3)
        block[0, 0, :, 0] = 0
        block[-1, 1, :, -1] = 0.75
        check_block(launcher, block, codec)
    else:
        check_paged(launcher, g, codec, dtype, seed)
