"""Embedded KVClient: torch round trips through the in-process TieredStore."""

import numpy as np
import pytest
import torch

from kvstore.client import KVClient, Namespace
from kvstore.errors import InvalidArgument, LayoutMismatch
from kvstore.layout import KVLayout
from kvstore.store_api import Capabilities


def layout(dtype="float16", bt=4):
    return KVLayout("tiny", num_layers=2, num_kv_heads=2, head_dim=8, dtype=dtype, block_tokens=bt)


def kv_for(lay, tokens):
    g = torch.Generator().manual_seed(int(sum(tokens)) + len(tokens))
    return torch.randn(lay.kv_shape(len(tokens)), generator=g).to(lay.torch_dtype)


@pytest.fixture
def client():
    with KVClient.connect("embedded", cpu_bytes="1MiB") as c:
        yield c


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_round_trip(client, dtype):
    lay = layout(dtype)
    ns = client.namespace(lay)
    tokens = list(range(100, 118))  # 4 whole blocks + 2-token tail
    kv = kv_for(lay, tokens)
    assert ns.lookup(tokens) == 0
    assert ns.put(tokens, kv) == 16  # the partial tail is not stored
    assert ns.lookup(tokens) == 16
    n, got = ns.get(tokens)
    assert n == 16 and got.dtype == lay.torch_dtype and got.shape == lay.kv_shape(16)
    assert torch.equal(got, kv[:, :, :16])
    n, got = ns.get(np.array(tokens[:9], dtype=np.int64))  # numpy tokens, prefix
    assert n == 8 and torch.equal(got, kv[:, :, :8])
    n, got = ns.get(torch.tensor(tokens[:8] + [5, 5, 5, 5]))  # diverges in block 2
    assert n == 8 and torch.equal(got, kv[:, :, :8])


def test_miss_and_short_kv(client):
    lay = layout()
    ns = client.namespace(lay)
    assert ns.get([1, 2, 3, 4, 5]) == (0, None)
    tokens = list(range(12))
    kv = kv_for(lay, tokens)[:, :, :9]  # KV for 9 tokens: 2 whole blocks
    assert ns.put(tokens, kv) == 8
    assert ns.put([1, 2, 3], kv_for(lay, [1, 2, 3])) == 0
    n, got = ns.get(tokens)
    assert n == 8 and torch.equal(got, kv[:, :, :8])


def test_non_contiguous_kv_and_sharing_prefixes(client):
    lay = layout()
    ns = client.namespace(lay)
    kv = torch.randn(2, 2, 16, 8, 2).to(torch.float16).transpose(3, 4)  # heads/dim strided
    assert not kv.is_contiguous()
    a = list(range(16))
    assert ns.put(a, kv) == 16
    b = a[:8] + [77] * 8
    kv_b = torch.cat([kv[:, :, :8], kv_for(lay, b)[:, :, 8:]], dim=2)
    assert ns.put(b, kv_b) == 16
    assert torch.equal(ns.get(a)[1], kv) and torch.equal(ns.get(b)[1], kv_b)


def test_validation_errors(client):
    lay = layout()
    ns = client.namespace(lay)
    with pytest.raises(LayoutMismatch):
        ns.put(list(range(4)), torch.zeros(2, 2, 4, 3, 8, dtype=torch.float16))  # heads
    with pytest.raises(LayoutMismatch):
        ns.put(list(range(4)), torch.zeros(2, 2, 4, 2, 8, dtype=torch.float32))  # dtype
    with pytest.raises(InvalidArgument):
        ns.put(list(range(4)), torch.zeros(2, 2, 4, 2, dtype=torch.float16))  # rank
    with pytest.raises(InvalidArgument):
        ns.put(list(range(4)), np.zeros((2, 2, 4, 2, 8), dtype=np.float16))
    with pytest.raises(InvalidArgument):
        ns.lookup([[1, 2]])
    with pytest.raises(InvalidArgument):
        ns.get([-1, 2, 3, 4])


def test_raw_blocks_and_namespaces(client):
    lay = layout()
    ns = client.namespace(lay)
    assert client.namespace(lay) is ns
    other = client.namespace(lay, tenant="b")
    assert other.id != ns.id
    payloads = [bytes([i]) * ns.spec.block_bytes for i in range(2)]
    assert ns.put_blocks(list(range(8)), payloads) == 8
    assert ns.get_blocks(list(range(8))) == (8, payloads)
    assert other.lookup(list(range(8))) == 0  # tenants do not share
    assert ns.delete(list(range(8))) == 2


class CopyingBackend:
    """The embedded store seen as a carrier without leases (put/get payloads, as tcp)."""

    capabilities = Capabilities(leases=False)

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_generic_backend_path_matches_zero_copy(client):
    lay = layout("bfloat16")
    ns = client.namespace(lay)
    plain = Namespace(CopyingBackend(client.backend), lay)  # same namespace, through payloads
    assert ns.uses_leases and not plain.uses_leases
    tokens = list(range(40, 56))
    kv = kv_for(lay, tokens)
    assert plain.put(tokens, kv) == 16
    assert torch.equal(ns.get(tokens)[1], kv)
    assert torch.equal(plain.get(tokens)[1], kv)
    received, leased = [], []
    assert plain.read_blocks(tokens, lambda ps: received.extend(bytes(p) for p in ps)) == 16
    assert ns.read_blocks(tokens, lambda ps: leased.extend(bytes(p) for p in ps)) == 16
    assert len(received) == 4 and received == leased


def test_embedded_with_ssd_flush_and_reopen(tmp_path):
    lay = layout()
    tokens = list(range(16))
    kv = kv_for(lay, tokens)
    cfg = dict(cpu_bytes="64KiB", ssd_dir=str(tmp_path), ssd_bytes="1MiB", segment_bytes="64KiB")
    with KVClient.connect("embedded", **cfg) as c:
        assert c.namespace(lay).put(tokens, kv) == 16
        c.flush()
    with KVClient.connect("embedded", **cfg) as c:
        n, got = c.namespace(lay).get(tokens)
        assert n == 16 and torch.equal(got, kv)


def test_unknown_carrier():
    with pytest.raises(InvalidArgument):
        KVClient.connect("carrier-pigeon://nowhere")
