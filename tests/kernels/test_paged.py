"""Pack / unpack between engine caches (vLLM flash, vLLM CPU, HF) and store blocks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.kernels import (
    CODECS,
    EngineKind,
    EngineLayout,
    decode,
    encode,
    pack_hf,
    pack_paged,
    payload_nbytes,
    unpack_hf,
    unpack_paged,
)
from kvstore.layout import KVLayout
from tests.kernels.engine_caches import (
    build_cache,
    engine_of,
    expected_block,
    read_cache,
)
from tests.kernels.engine_caches import tokens as _tokens

KINDS = [EngineKind.VLLM_FLASH, "vllm_flash_hnd", EngineKind.VLLM_CPU, EngineKind.VLLM_CPU_AMX]


def _fits(kind, ebs, D, dtype=torch.bfloat16) -> bool:
    """vLLM's AMX layout exists for bf16 with block size and head dim multiples of 32."""
    return kind != EngineKind.VLLM_CPU_AMX or (ebs % 32 == 0 and D % 32 == 0
                                               and dtype == torch.bfloat16)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("ebs,T", [(16, 64), (16, 256), (32, 32), (8, 40)])
def test_pack_equals_encode_of_the_gathered_blocks(kind, codec, ebs, T):
    L, H, D, nb = 2, 2, 64, 40
    if not _fits(kind, ebs, D):
        ebs, T = 32, (T + 31) // 32 * 32  # AMX: a block size it takes
    R = T // ebs
    tokens = _tokens(L, nb, ebs, H, D, torch.bfloat16, seed=ebs + T)
    caches = [build_cache(kind, k, v) for k, v in tokens]
    layout = KVLayout("m", L, H, D, "bfloat16", T)
    g = torch.Generator().manual_seed(T)
    ids = torch.randperm(nb, generator=g)[: 2 * R].tolist()
    payloads = pack_paged(caches, ids, layout, codec, engine_of(kind, ebs))
    assert len(payloads) == 2
    for i, p in enumerate(payloads):
        want = expected_block(tokens, ids[i * R:(i + 1) * R], T)
        assert torch.equal(p, encode(want, codec))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("codec", CODECS)
def test_unpack_writes_only_the_target_slots(kind, codec):
    L, H, D, nb, ebs, T, dtype = 2, 3, 80, 24, 16, 64, torch.float16
    if not _fits(kind, ebs, D, dtype):
        D, ebs, T, dtype = 64, 32, 128, torch.bfloat16
    R = T // ebs
    layout = KVLayout("m", L, H, D, str(dtype).removeprefix("torch."), T)
    src_tokens = _tokens(L, nb, ebs, H, D, dtype, seed=1)
    src = [build_cache(kind, k, v) for k, v in src_tokens]
    engine = engine_of(kind, ebs)
    payloads = pack_paged(src, list(range(2 * R)), layout, codec, engine)
    dst = [build_cache(kind, k, v) for k, v in _tokens(L, nb, ebs, H, D, dtype, seed=2)]
    before = [c.clone() for c in dst]
    targets = [9, 3, 17, 0, 22, 5, 11, 14]  # 2 store blocks, not in order
    unpack_paged(payloads, dst, targets, layout, codec, engine)
    others = [b for b in range(nb) if b not in targets]
    for layer in range(L):
        k_before, v_before = read_cache(kind, before[layer])
        k_after, v_after = read_cache(kind, dst[layer])
        # untouched engine blocks are bytewise unchanged (K and V, whole cache)
        for b_view, a_view in ((k_before, k_after), (v_before, v_after)):
            assert torch.equal(b_view[others].contiguous().view(torch.uint8),
                               a_view[others].contiguous().view(torch.uint8))
        for i in range(2):
            block = decode(payloads[i], layout, codec)
            got_k = torch.cat([k_after[t] for t in targets[i * R:(i + 1) * R]])
            got_v = torch.cat([v_after[t] for t in targets[i * R:(i + 1) * R]])
            assert torch.equal(got_k, block[layer, 0]) and torch.equal(got_v, block[layer, 1])


def test_store_blocks_move_between_engine_layouts():
    """Pack from a flash cache with 16-token blocks, unpack into a CPU cache with 32."""
    L, H, D, T = 2, 2, 64, 128
    layout = KVLayout("m", L, H, D, "float32", T)
    tokens = _tokens(L, 32, 16, H, D, torch.float32, seed=5)
    flash = [build_cache(EngineKind.VLLM_FLASH, k, v) for k, v in tokens]
    ids16 = list(range(8, 24))
    payloads = pack_paged(flash, ids16, layout, "none", EngineLayout.vllm_flash(16))
    cpu = [build_cache(EngineKind.VLLM_CPU, k, v)
           for k, v in _tokens(L, 10, 32, H, D, torch.float32, seed=6)]
    ids32 = [7, 2, 5, 9, 0, 1, 3, 4]
    unpack_paged(payloads, cpu, ids32, layout, "none", EngineLayout.vllm_cpu(32))
    for layer in range(L):
        k32, v32 = read_cache(EngineKind.VLLM_CPU, cpu[layer])
        assert torch.equal(torch.cat([k32[i] for i in ids32]),
                           torch.cat([tokens[layer][0][i] for i in ids16]))
        assert torch.equal(torch.cat([v32[i] for i in ids32]),
                           torch.cat([tokens[layer][1][i] for i in ids16]))


def test_block_ids_as_tensor_and_output_slots():
    L, H, D, T, ebs = 1, 2, 64, 32, 16
    layout = KVLayout("m", L, H, D, "float16", T)
    tokens = _tokens(L, 8, ebs, H, D, torch.float16, seed=3)
    caches = [build_cache(EngineKind.VLLM_FLASH, k, v) for k, v in tokens]
    engine = EngineLayout.vllm_flash(ebs)
    ids = torch.tensor([6, 1, 2, 3], dtype=torch.int32)
    nbytes = payload_nbytes(layout, "int8")
    arena = torch.zeros(3 * nbytes + 16, dtype=torch.uint8)
    slots = [arena[16 + nbytes:16 + 2 * nbytes], arena[16:16 + nbytes]]
    rows = pack_paged(caches, ids, layout, "int8", engine, out=slots)
    assert [r.data_ptr() for r in rows] == [s.data_ptr() for s in slots]
    assert torch.equal(slots[0], encode(expected_block(tokens, [6, 1], T), "int8"))
    assert torch.equal(arena[:16], torch.zeros(16, dtype=torch.uint8))
    out2d = torch.empty((2, nbytes), dtype=torch.uint8)
    pack_paged(caches, ids, layout, "int8", engine, out=out2d)
    assert torch.equal(out2d[1], slots[1])
    assert pack_paged(caches, [], layout, "int8", engine) == []


# -- HF transformers ----------------------------------------------------------
def _hf(L, B, H, seq, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((B, H, seq, D), generator=g).to(dtype),
             torch.randn((B, H, seq, D), generator=g).to(dtype)) for _ in range(L)]


@pytest.mark.parametrize("codec", CODECS)
def test_hf_pack_and_unpack_a_token_range(codec):
    L, B, H, D, T, seq = 2, 3, 2, 96, 32, 150
    layout = KVLayout("m", L, H, D, "bfloat16", T)
    pkv = _hf(L, B, H, seq, D, torch.bfloat16, seed=9)
    payloads = pack_hf(pkv, layout, codec, start=20, batch_index=1)
    assert len(payloads) == (seq - 20) // T  # only whole blocks
    for i, p in enumerate(payloads):
        lo = 20 + i * T
        want = torch.stack([torch.stack([k[1, :, lo:lo + T].transpose(0, 1),
                                         v[1, :, lo:lo + T].transpose(0, 1)]) for k, v in pkv])
        assert torch.equal(p, encode(want, codec))
    dst = _hf(L, B, H, seq, D, torch.bfloat16, seed=10)
    before = [(k.clone(), v.clone()) for k, v in dst]
    cache = SimpleNamespace(layers=[SimpleNamespace(keys=k, values=v) for k, v in dst])
    unpack_hf(payloads[:2], cache, layout, codec, start=7, batch_index=2)
    for layer, ((k, v), (k0, v0)) in enumerate(zip(dst, before)):
        for t, t0 in ((k, k0), (v, v0)):
            changed = t.view(torch.int16) != t0.view(torch.int16)
            changed[2, :, 7:7 + 2 * T] = False
            assert not changed.any()  # nothing outside batch 2, tokens [7, 71)
        for i in range(2):
            block = decode(payloads[i], layout, codec)
            lo = 7 + i * T
            assert torch.equal(k[2, :, lo:lo + T].transpose(0, 1), block[layer, 0])
            assert torch.equal(v[2, :, lo:lo + T].transpose(0, 1), block[layer, 1])


def test_hf_cache_objects_and_empty_ranges():
    L, H, D, T = 2, 1, 64, 16
    layout = KVLayout("m", L, H, D, "float32", T)
    pkv = _hf(L, 1, H, 40, D, torch.float32, seed=4)
    legacy = pack_hf(tuple(pkv), layout, "none", num_tokens=32)
    old_style = SimpleNamespace(key_cache=[k for k, _ in pkv], value_cache=[v for _, v in pkv])
    assert all(torch.equal(a, b) for a, b in zip(legacy, pack_hf(old_style, layout, "none")))
    assert pack_hf(pkv, layout, "none", start=30) == []


# -- bad input ----------------------------------------------------------------
def _setup(kind=EngineKind.VLLM_FLASH, ebs=16, T=64, nb=12, dtype=torch.float16):
    layout = KVLayout("m", 2, 2, 64, str(dtype).removeprefix("torch."), T)
    caches = [build_cache(kind, k, v) for k, v in _tokens(2, nb, ebs, 2, 64, dtype, seed=0)]
    return layout, caches, EngineLayout(kind, ebs)


def test_store_block_must_be_a_multiple_of_the_engine_block():
    layout, caches, engine = _setup(ebs=16, T=40)
    with pytest.raises(InvalidArgument, match="multiple"):
        pack_paged(caches, [0, 1], layout, "none", engine)


@pytest.mark.parametrize("ids,match", [
    ([0, 1, 2], "whole store blocks"),
    ([0, 1, 2, 12], r"\[0, 12\)"),
    ([-1, 1, 2, 3], r"\[0, 12\)"),
    ([0.5, 1, 2, 3], "integers|integer"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer"),
    (torch.zeros((2, 2), dtype=torch.int64), "1-D"),
])
def test_bad_block_ids(ids, match):
    layout, caches, engine = _setup()
    with pytest.raises(InvalidArgument, match=match):
        pack_paged(caches, ids, layout, "none", engine)


def test_unpack_refuses_repeated_ids_and_bad_payloads():
    layout, caches, engine = _setup()
    payloads = pack_paged(caches, [0, 1, 2, 3], layout, "int4", engine)
    with pytest.raises(InvalidArgument, match="repeat"):
        unpack_paged(payloads, caches, [4, 5, 4, 6], layout, "int4", engine)
    with pytest.raises(InvalidArgument, match="bytes"):
        unpack_paged(payloads, caches, [4, 5, 6, 7], layout, "int8", engine)
    with pytest.raises(InvalidArgument, match="expected 2 payloads"):
        unpack_paged(payloads, caches, [4, 5, 6, 7, 8, 9, 10, 11], layout, "int4", engine)
    with pytest.raises(InvalidArgument, match="uint8"):
        unpack_paged([p.view(torch.int8) for p in payloads], caches, [4, 5, 6, 7], layout,
                     "int4", engine)
    pack_paged(caches, [0, 0, 0, 0], layout, "int4", engine)  # repeats are fine for a pack


def test_bad_caches():
    layout, caches, engine = _setup()
    with pytest.raises(LayoutMismatch, match="layer"):
        pack_paged(caches[:1], [0, 1, 2, 3], layout, "none", engine)
    with pytest.raises(LayoutMismatch, match="shape"):
        pack_paged(caches, [0, 1, 2, 3], layout, "none", EngineLayout.vllm_flash(32))
    with pytest.raises(LayoutMismatch, match="shape"):
        pack_paged(caches, [0, 1, 2, 3], layout, "none", EngineLayout.vllm_cpu(16))
    with pytest.raises(LayoutMismatch, match="dtype"):
        pack_paged([c.float() for c in caches], [0, 1, 2, 3], layout, "none", engine)
    with pytest.raises(LayoutMismatch, match="one shape"):
        pack_paged([caches[0], caches[1][:, :5]], [0, 1, 2, 3], layout, "none", engine)
    with pytest.raises(InvalidArgument, match="EngineLayout"):
        pack_paged(caches, [0, 1, 2, 3], layout, "none", "vllm_flash")
    with pytest.raises(InvalidArgument, match="unknown engine kind"):
        EngineLayout("sglang", 16)
    with pytest.raises(InvalidArgument, match="block_size"):
        EngineLayout.vllm_flash(0)
    with pytest.raises(InvalidArgument, match="backend"):
        pack_paged(caches, [0, 1, 2, 3], layout, "none", engine, backend="triton")
    with pytest.raises(InvalidArgument, match="CUDA"):
        pack_paged(caches, [0, 1, 2, 3], layout, "none", engine, backend="cuda")


def test_bad_hf_arguments():
    L, H, D, T = 2, 2, 64, 16
    layout = KVLayout("m", L, H, D, "float16", T)
    pkv = _hf(L, 2, H, 48, D, torch.float16, seed=1)
    with pytest.raises(InvalidArgument, match="multiple"):
        pack_hf(pkv, layout, "none", num_tokens=20)
    with pytest.raises(InvalidArgument, match="exceed"):
        pack_hf(pkv, layout, "none", start=40, num_tokens=16)
    with pytest.raises(InvalidArgument, match="batch_index"):
        pack_hf(pkv, layout, "none", batch_index=2)
    with pytest.raises(LayoutMismatch, match="layers"):
        pack_hf(pkv[:1], layout, "none")
    with pytest.raises(LayoutMismatch):
        pack_hf([(k.transpose(1, 2), v) for k, v in pkv], layout, "none")
    with pytest.raises(InvalidArgument, match="start"):
        pack_hf(pkv, layout, "none", start=-1)
    with pytest.raises(InvalidArgument, match="payloads"):
        unpack_hf(object(), pkv, layout, "none")


@pytest.mark.parametrize("kind", KINDS)
def test_none_payload_slots_at_odd_byte_offsets(kind):
    """Codec none moves straight between cache and slots; a slot the dtype cannot
    be viewed on (odd address) still gets the same bytes, both ways."""
    L, H, D, T, ebs, nb = 2, 2, 64, 64, 32, 8
    layout = KVLayout("m", L, H, D, "bfloat16", T)
    tokens = _tokens(L, nb, ebs, H, D, torch.bfloat16, seed=7)
    caches = [build_cache(kind, k, v) for k, v in tokens]
    engine = engine_of(kind, ebs)
    n = payload_nbytes(layout, "none")
    arena = torch.zeros(2 * n + 3, dtype=torch.uint8)
    slots = [arena[1:1 + n], arena[2 + n:2 + 2 * n]]
    pack_paged(caches, [3, 5, 0, 6], layout, "none", engine, out=slots)
    assert torch.equal(slots[1], encode(expected_block(tokens, [0, 6], T), "none"))
    fresh = [torch.zeros_like(c) for c in caches]
    unpack_paged(slots, fresh, [1, 2, 7, 4], layout, "none", engine)
    for c, f in zip(caches, fresh):
        k0, v0 = read_cache(kind, c)
        k1, v1 = read_cache(kind, f)
        assert torch.equal(k1[[1, 2, 7, 4]], k0[[3, 5, 0, 6]])
        assert torch.equal(v1[[1, 2, 7, 4]], v0[[3, 5, 0, 6]])


@pytest.mark.parametrize("codec", ["none", "int8"])
def test_payloads_off_the_fast_path_take_one_copy_each_way(codec, monkeypatch):
    """Strided payload rows (as rows on another device would be): the kernels write one
    staging buffer, then one copy per row (one in all for a 2-D out); an unpack copies
    each row once into one buffer. No stacking, no per-row host round trip."""
    from kvstore.kernels import EngineLayout, pack_paged, payload_nbytes, unpack_paged

    layout = KVLayout("m", 2, 2, 32, "float16", 32)
    engine = EngineLayout.vllm_flash(16)
    g = torch.Generator().manual_seed(0)
    caches = [torch.randn((2, 8, 16, 2, 32), generator=g).half() for _ in range(2)]
    n = payload_nbytes(layout, codec)
    ref = pack_paged(caches, [3, 1, 4, 0], layout, codec, engine)
    wide = torch.zeros((2, 2 * n), dtype=torch.uint8)
    strided = [wide[i, ::2] for i in range(2)]  # 1-D, not contiguous
    dst = [torch.zeros_like(c) for c in caches]
    want = [torch.zeros_like(c) for c in caches]
    unpack_paged(ref, want, [7, 6, 5, 2], layout, codec, engine)
    stacked = []
    monkeypatch.setattr(torch, "stack", lambda *a, **k: stacked.append(1) or torch.cat(
        [t.unsqueeze(0) for t in a[0]]))
    pack_paged(caches, [3, 1, 4, 0], layout, codec, engine, out=strided)
    assert all(torch.equal(s, r) for s, r in zip(strided, ref))
    unpack_paged(strided, dst, [7, 6, 5, 2], layout, codec, engine)
    assert stacked == []
    assert all(torch.equal(a, b) for a, b in zip(dst, want))
