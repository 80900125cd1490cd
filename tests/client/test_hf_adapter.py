import pytest
import torch

transformers = pytest.importorskip("transformers")

from kvstore.client.hf_adapter import (  # noqa: E402
    HFPrefixCache,
    cache_to_canonical,
    canonical_to_cache,
    layout_for_model,
)
from kvstore.errors import LayoutMismatch  # noqa: E402


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(
        vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture
def client(tmp_path):
    from kvstore.client import KVClient

    with KVClient.connect("embedded", cpu_bytes=64 << 20, ssd_bytes=0) as c:
        yield c


def test_layout_from_config(model):
    layout = layout_for_model(model.config, "tiny", block_tokens=16)
    assert (layout.num_layers, layout.num_kv_heads, layout.head_dim) == (3, 2, 16)


def test_round_trip_is_exact(model):
    ids = torch.randint(0, 500, (1, 40))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    kv = cache_to_canonical(cache)
    assert kv.shape == (3, 2, 40, 2, 16)
    back = canonical_to_cache(kv)
    for a, b in zip(cache.layers, back.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_restored_prefix_continues_prompt(model, client):
    layout = layout_for_model(model.config, "tiny", block_tokens=16)
    adapter = HFPrefixCache(client.namespace(layout), layout, model.config)
    ids = torch.randint(0, 500, (1, 70))
    tokens = ids[0].tolist()
    with torch.no_grad():
        full = model(ids).logits[0, -1]
        first = model(ids[:, :50], use_cache=True).past_key_values
        assert adapter.store(tokens[:50], first) == 48
        n, cache = adapter.restore(tokens)
        assert n == 48
        cont = model(ids[:, n:], past_key_values=cache).logits[0, -1]
    assert torch.allclose(full, cont, atol=1e-5)


def test_geometry_mismatch_is_refused(model, client):
    layout = layout_for_model(model.config, "tiny", block_tokens=16, dtype=torch.float16)
    adapter = HFPrefixCache(client.namespace(layout), layout)
    with torch.no_grad():
        cache = model(torch.randint(0, 500, (1, 20)), use_cache=True).past_key_values
    with pytest.raises(LayoutMismatch):
        adapter.store(list(range(20)), cache)


def test_miss_restores_nothing(model, client):
    layout = layout_for_model(model.config, "tiny", block_tokens=16)
    adapter = HFPrefixCache(client.namespace(layout), layout, model.config)
    assert adapter.restore(list(range(100))) == (0, None)


@pytest.mark.parametrize("codec", ["none", "int8"])
@pytest.mark.parametrize("carrier", ["embedded", "put_get"])
def test_device_path_on_cpu_tensors(model, client, codec, carrier):
    """The GPU model's path (pack_hf / unpack_hf, staged on the "device", one copy per
    block each way, commit and release after the copy's event) on CPU tensors: same
    API, same result as the CPU path."""
    from kvstore.client.hf_reserved import KVBuffer
    from kvstore.kernels.streams import HostTimeline, order_of
    from kvstore.store_api import Capabilities

    if carrier == "put_get":
        class NoLeases:
            capabilities = Capabilities(leases=False)

            def __init__(self, store):
                self._store = store

            def __getattr__(self, name):
                if name.startswith("lease") or name in ("read_slot", "commit_lease"):
                    raise AttributeError(name)
                return getattr(self._store, name)

        client.backend = NoLeases(client.backend)
    layout = layout_for_model(model.config, "tiny", block_tokens=16)
    tl = HostTimeline(separate_memory=True)
    ns = client.namespace(layout, codec=codec)
    adapter = HFPrefixCache(ns, layout, model.config, timeline=tl)
    host = HFPrefixCache(ns, layout, model.config)
    ids = torch.randint(0, 500, (1, 70))
    tokens = ids[0].tolist()
    with torch.no_grad():
        full = model(ids).logits[0, -1]
        first = model(ids[:, :50], use_cache=True).past_key_values
        assert adapter.store(tokens[:50], first) == 48
        copies = [op for op in tl.log if op.kind == "copy"]
        assert [op.label for op in copies] == (["d2h"] * 3 if carrier == "embedded" else ["d2h"])
        buffer = KVBuffer(layout)
        n, cache = adapter.restore(tokens, buffer=buffer, spare=32)
        assert n == 48 and buffer.holds(cache)
        h2d = [op for op in tl.log if op.kind == "copy" and op.label == "h2d"]
        assert len(h2d) == 3  # one per block, straight into the device staging
        pos = order_of(tl.log, dict(kind="copy", label="h2d"), dict(kind="kernel", label="unpack"),
                       dict(kind="record", label="loaded"), dict(kind="wait", stream="compute"))
        assert -1 not in pos
        n2, ref = host.restore(tokens)  # the CPU path's restore of the same blocks
        assert n2 == 48
        for a, b in zip(cache.layers, ref.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        cont = model(ids[:, n:], past_key_values=cache).logits[0, -1]
    if codec == "none":
        assert torch.allclose(full, cont, atol=1e-5)
