"""``Namespace.get_into``: the cached prefix decoded into the engine's own buffer, no allocation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kvstore import KVLayout
from kvstore.client import KVClient
from kvstore.transport.server import ServerThread

LAYOUT = KVLayout("get-into", num_layers=2, num_kv_heads=2, head_dim=8, dtype="float16",
                  block_tokens=4)


@pytest.fixture(params=["embedded", "tcp"])
def client(request, tmp_path):
    if request.param == "embedded":
        with KVClient.connect("embedded", cpu_bytes="16MiB") as c:
            yield c
        return
    from kvstore.store import StoreConfig, TieredStore

    with TieredStore(StoreConfig(cpu_bytes="16MiB")) as store:
        with ServerThread(store, ["tcp://127.0.0.1:0"]) as srv:
            with KVClient.connect(srv.urls[0], strict=True) as c:
                yield c


@pytest.mark.parametrize("codec", ["none", "int8"])
def test_get_into_fills_the_callers_buffer_and_leaves_the_rest(client, codec):
    ns = client.namespace(LAYOUT, codec=codec)
    tokens = np.arange(14)  # 3 whole blocks and a tail
    kv = torch.randn(LAYOUT.kv_shape(14), dtype=torch.float16)
    assert ns.put(tokens, kv) == 12
    n_ref, ref = ns.get(tokens)
    out = torch.full(LAYOUT.kv_shape(16), 7.0, dtype=torch.float16)
    before = out.data_ptr()
    assert ns.get_into(tokens, out) == 12
    assert out.data_ptr() == before
    assert torch.equal(out[:, :, :12], ref)
    assert bool((out[:, :, 12:] == 7.0).all())  # nothing written past the cached prefix


def test_get_into_reads_only_what_fits_and_misses_cleanly(client):
    ns = client.namespace(LAYOUT)
    tokens = np.arange(12)
    kv = torch.randn(LAYOUT.kv_shape(12), dtype=torch.float16)
    ns.put(tokens, kv)
    small = torch.zeros(LAYOUT.kv_shape(6), dtype=torch.float16)  # room for one block
    assert ns.get_into(tokens, small) == 4
    assert torch.equal(small[:, :, :4], kv[:, :, :4])
    assert ns.get_into(np.arange(100, 112), small) == 0
    with pytest.raises(Exception, match="does not match the layout"):
        ns.get_into(tokens, torch.zeros(3, 2, 12, 2, 8, dtype=torch.float16))
