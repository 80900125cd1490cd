"""The GPU transfer path with the real CUDA kernels, emulated on the CPU.

``PagedTransfers`` (the vLLM worker's block mover) on CPU flash caches with a
timeline that has "device memory", and the dispatcher sending every call the
kernels take to ``cuda_backend.run`` on the emulator of
``tests/kernels/emulation`` (the unmodified ``pack.cu`` / ``unpack.cu``, with
its bounds checks): the per-layer codec-``none`` launches (one-layer layouts
over slices of the staged payload rows) and the whole-block quantized ones,
held byte for byte to the torch reference.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from kvstore.client import KVClient
from kvstore.client.transfer import PagedTransfers
from kvstore.kernels import EngineLayout, dispatch, pack_paged, unpack_paged
from kvstore.kernels import cuda_backend as cb
from kvstore.kernels.streams import HostTimeline
from kvstore.layout import KVLayout
from tests.kernels.emulation.cases import emulated
from tests.kernels.emulation.emulator import CXX, EmulatorLauncher

L, H, D, BS, BT, NB = 2, 2, 64, 16, 64, 24
R = BT // BS


@pytest.fixture(scope="module")
def launcher():
    if shutil.which(CXX) is None:
        pytest.skip(f"{CXX} not on PATH: the CUDA emulator needs a C++ compiler")
    return EmulatorLauncher()


@pytest.fixture
def cuda_everywhere(launcher):
    """Automatic dispatch picks the (emulated) CUDA kernels for what they take."""
    with emulated(launcher):
        real = dispatch.choose

        def choose(src, codec, backend):
            if backend == dispatch.REFERENCE or cb.unsupported(src, codec) is not None:
                return real(src, codec, dispatch.REFERENCE)
            return dispatch.CUDA

        dispatch.choose = choose
        try:
            yield launcher
        finally:
            dispatch.choose = real


def _caches(hnd: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    if hnd:
        return [torch.randn((2, NB, H, BS, D), generator=g).half().permute(0, 1, 3, 2, 4)
                for _ in range(L)]
    return [torch.randn((2, NB, BS, H, D), generator=g).half() for _ in range(L)]


@pytest.mark.parametrize("codec", ["none", "fp8_e4m3", "int4"])
@pytest.mark.parametrize("hnd", [False, True], ids=["nhd", "hnd"])
def test_transfers_run_the_cuda_kernels_and_match_the_reference(cuda_everywhere, codec, hnd):
    launcher = cuda_everywhere
    engine = EngineLayout.vllm_flash(BS)
    with KVClient.connect("embedded", cpu_bytes="32MiB") as c:
        ns = c.namespace(KVLayout("emu", L, H, D, "float16", BT), codec=codec)
        src = _caches(hnd, seed=1)
        ids = [5, 1, 7, 3, 22, 9, 11, 0]
        toks = np.arange(2 * BT, dtype=np.uint32)
        tl = HostTimeline(separate_memory=True)
        moves = PagedTransfers(ns, src, engine, tl)
        before = len(launcher.launches)
        moves.begin_step()
        moves.open_saves([("r", toks, ids, b"")])
        for layer in range(L):
            moves.save_layer(layer)
        moves.flush_saves()
        packs = [x for x in launcher.launches[before:] if x["op"] == "pack"]
        assert len(packs) == (L if codec == "none" else 1)  # per layer for codec none
        n, stored = ns.get_blocks(toks)
        ref = pack_paged(src, ids, ns.layout, codec, engine, backend="reference")
        assert n == 2 * BT
        assert all(torch.equal(torch.frombuffer(bytearray(p), dtype=torch.uint8), r)
                   for p, r in zip(stored, ref))

        dst = _caches(hnd, seed=2)
        want = [x.clone() for x in dst]
        targets = [2, 4, 6, 8, 10, 12, 14, 16]
        before = len(launcher.launches)
        loads = PagedTransfers(ns, dst, engine, tl)
        loads.begin_step()
        assert loads.load(toks, targets, skip=BS) == 2 * BT
        loads.wait_all_layers()
        unpacks = [x for x in launcher.launches[before:] if x["op"] == "unpack"]
        assert len(unpacks) == (L if codec == "none" else 1)
        held = [-1] + targets[1:]
        unpack_paged(ref, want, held, ns.layout, codec, engine, backend="reference")
        for a, b in zip(dst, want):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
