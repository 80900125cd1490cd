"""Quantized codecs end to end: client -> kernels.encode -> store -> kernels.decode."""

import pytest
import torch

from kvstore import KVLayout
from kvstore.client import KVClient
from kvstore.kernels import payload_nbytes

LAYOUT = KVLayout("codec-test", num_layers=2, num_kv_heads=2, head_dim=64,
                  dtype="bfloat16", block_tokens=32)

# error bound relative to the tensor's max magnitude (generous: per-group bounds are
# tested in tests/kernels against a numpy oracle; this checks the wiring)
BOUNDS = {"none": 0.0, "fp8_e4m3": 0.08, "int8": 0.01, "int4": 0.15}


@pytest.mark.parametrize("codec", sorted(BOUNDS))
def test_codec_round_trip_through_store(codec):
    torch.manual_seed(0)
    kv = torch.randn(LAYOUT.kv_shape(70), dtype=torch.bfloat16)
    tokens = list(range(70))
    with KVClient.connect("embedded", cpu_bytes=16 << 20, ssd_bytes=0) as client:
        ns = client.namespace(LAYOUT, codec=codec)
        assert ns.spec.block_bytes == payload_nbytes(LAYOUT, codec)
        assert ns.put(tokens, kv) == 64
        n, back = ns.get(tokens)
    assert n == 64 and back.dtype == torch.bfloat16
    err = (back.float() - kv[:, :, :64].float()).abs().max() / kv.float().abs().max()
    assert err <= BOUNDS[codec]
    if codec != "none":
        assert err > 0  # really quantized


def test_codecs_are_separate_namespaces():
    kv = torch.randn(LAYOUT.kv_shape(32), dtype=torch.bfloat16)
    with KVClient.connect("embedded", cpu_bytes=16 << 20, ssd_bytes=0) as client:
        client.namespace(LAYOUT, codec="int8").put(list(range(32)), kv)
        assert client.namespace(LAYOUT, codec="none").lookup(list(range(32))) == 0
        assert client.namespace(LAYOUT, codec="int8").lookup(list(range(32))) == 32
