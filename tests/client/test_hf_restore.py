"""Restoring a prefix straight into a transformers cache, over every carrier and codec.

The payloads are decoded from the store's own buffers (arena slots under a
read lease on shm and embedded, the reused receive buffer on tcp) into a
``KVBuffer``; the continued prompt must give the logits of a full forward.
"""

import shutil
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kvstore import KVLayout  # noqa: E402
from kvstore.client import BlockCodec, KVClient  # noqa: E402
from kvstore.client.hf_adapter import HFPrefixCache, layout_for_model  # noqa: E402
from kvstore.client.hf_reserved import KVBuffer  # noqa: E402
from kvstore.store.config import StoreConfig  # noqa: E402
from kvstore.store.tiered_store import TieredStore  # noqa: E402

# largest |logit difference| of the continued prompt vs a full forward
ATOL = {"none": 1e-5, "fp8_e4m3": 0.5, "int8": 0.05, "int4": 1.0}


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(
        vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )
    torch.manual_seed(4)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def urls():
    """A store served over shm and tcp in this process, plus the embedded store."""
    from kvstore.transport.server import ServerThread

    folder = tempfile.mkdtemp(prefix="kvs-hf-")
    store = TieredStore(StoreConfig(cpu_bytes="64MiB"))
    srv = ServerThread(store, [f"shm://{folder}/kv.sock", "tcp://127.0.0.1:0"]).start()
    yield {"shm": srv.urls[0], "tcp": srv.urls[1]}
    srv.stop()
    store.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("codec", sorted(ATOL))
@pytest.mark.parametrize("carrier", ["embedded", "shm", "tcp"])
@torch.no_grad()
def test_restore_continues_the_prompt(model, urls, carrier, codec):
    layout = layout_for_model(model.config, f"tiny-{carrier}", block_tokens=16,
                              dtype=torch.float32)
    ids = torch.randint(0, 400, (1, 75))
    tokens = ids[0].tolist()
    full = model(ids).logits[0, -1]
    url = "embedded" if carrier == "embedded" else urls[carrier]
    kwargs = {"cpu_bytes": 64 << 20, "ssd_bytes": 0} if carrier == "embedded" else {}
    with KVClient.connect(url, **kwargs) as client:
        adapter = HFPrefixCache(client.namespace(layout, codec=codec), layout, model.config)
        assert adapter.restore(tokens) == (0, None)  # nothing stored yet
        assert adapter.store(tokens, model(ids, use_cache=True).past_key_values) == 64
        buffer = KVBuffer(layout)
        n, cache = adapter.restore(tokens, buffer=buffer, spare=11)
        assert n == 64 and buffer.capacity >= 75 and buffer.holds(cache)
        out = model(ids[:, n:], past_key_values=cache).logits[0, -1]
        assert buffer.holds(cache)  # the suffix was appended in place
        # a second restore reuses the buffer (an engine's next request)
        n2, _ = adapter.restore(tokens[:40], buffer=buffer)
        assert n2 == 32 and buffer.capacity >= 75
    err = (out - full).abs().max().item()
    assert err <= ATOL[codec]
    if codec != "none":
        assert err > 0  # really quantized


@pytest.mark.parametrize("codec", sorted(ATOL))
def test_decode_heads_into_is_decode_transposed(codec):
    layout = KVLayout("heads", num_layers=2, num_kv_heads=3, head_dim=64, dtype="bfloat16",
                      block_tokens=32)
    codec_ = BlockCodec(layout, codec)
    blocks = [torch.randn(layout.block_shape).to(torch.bfloat16) for _ in range(3)]
    payloads = [codec_.encode(b) for b in blocks]
    out = torch.full((2, 2, 3, 100, 64), 7.0, dtype=torch.bfloat16)
    codec_.decode_heads_into(payloads, out[:, :, :, 4:100])
    for i, payload in enumerate(payloads):
        want = torch.empty(layout.block_shape, dtype=torch.bfloat16)
        codec_.decode_into(payload, want)
        assert torch.equal(out[:, :, :, 4 + 32 * i : 36 + 32 * i], want.transpose(2, 3))
    assert (out[:, :, :, :4] == 7).all()  # nothing written outside the range
    with pytest.raises(Exception, match="tokens"):
        codec_.decode_heads_into(payloads, out[:, :, :, :10])
