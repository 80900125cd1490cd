"""A tcp ``ns.put`` sends each block from the caller's tensor (``Gathered``), never staged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kvstore import KVLayout
from kvstore.client import KVClient
from kvstore.client.codec import BlockCodec
from kvstore.transport.payloads import Gathered, payload_size, payload_views

pytestmark = pytest.mark.unit

LAYOUT = KVLayout("gathered", num_layers=3, num_kv_heads=2, head_dim=8, dtype="float16",
                  block_tokens=16)


def kv_of(seed: int, tokens: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((LAYOUT.num_layers, 2, tokens, LAYOUT.num_kv_heads, LAYOUT.head_dim),
                       generator=g).to(torch.float16)


def test_gathered_blocks_are_the_encoded_payloads():
    codec = BlockCodec(LAYOUT, "none")
    kv = kv_of(1, 48)
    blocks = codec.gathered(kv, 3)
    assert len(blocks) == 3 and all(len(b.pieces) == 2 * LAYOUT.num_layers for b in blocks)
    encode = codec.encoder(kv)
    for i, block in enumerate(blocks):
        staged = np.empty(codec.payload_nbytes, dtype=np.uint8)
        encode(i, staged)
        assert payload_size(block) == codec.payload_nbytes
        assert block.joined() == staged.tobytes()
        assert b"".join(payload_views([block])) == staged.tobytes()
    kv[0, 0, 0, 0, 0] = 7.0  # the pieces are the tensor's own memory: nothing was copied
    assert np.frombuffer(blocks[0].pieces[0], dtype=np.float16)[0] == 7.0


def test_only_plain_none_blocks_are_gathered():
    kv = kv_of(2, 32)
    assert BlockCodec(LAYOUT, "int8").gathered(kv, 2) is None  # quantized: encoded first
    strided = kv.transpose(3, 4).contiguous().transpose(3, 4)  # heads and dims swapped in memory
    assert BlockCodec(LAYOUT, "none").gathered(strided, 2) is None


@pytest.fixture
def tcp_ns():
    from kvstore.store import StoreConfig, TieredStore
    from kvstore.transport.server import ServerThread

    with TieredStore(StoreConfig(cpu_bytes="32MiB")) as store:
        with ServerThread(store, ["tcp://127.0.0.1:0"]) as srv:
            with KVClient.connect(srv.urls[0], strict=True) as c:
                space = c.namespace(LAYOUT)
                assert space.backend.capabilities.gathered_payloads
                yield space


def test_tcp_put_of_a_tensor_and_of_a_strided_view_round_trips(tcp_ns, monkeypatch):
    sent = []
    real = Gathered.of.__func__

    def spy(cls, pieces):
        block = real(cls, pieces)
        sent.append(block)
        return block

    monkeypatch.setattr(Gathered, "of", classmethod(spy))
    toks = np.arange(64, dtype=np.uint32)
    kv = kv_of(3, 64)
    assert tcp_ns.put(toks, kv) == 64
    assert len(sent) == 4  # every block went gathered
    n, got = tcp_ns.get(toks)
    assert n == 64 and torch.equal(got, kv)
    # a strided tensor falls back to staging, with the same bytes stored
    other = np.arange(100, 164, dtype=np.uint32)
    strided = kv_of(4, 64).transpose(3, 4).contiguous().transpose(3, 4)
    assert tcp_ns.put(other, strided) == 64
    assert len(sent) == 4
    n, got = tcp_ns.get(other)
    assert n == 64 and torch.equal(got, strided)
