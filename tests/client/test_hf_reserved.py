"""KVBuffer / ReservedLayer: a transformers cache that appends in place in a kept buffer."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kvstore.client.hf_adapter import cache_to_canonical, layout_for_model  # noqa: E402
from kvstore.client.hf_reserved import KVBuffer  # noqa: E402


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(
        vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )
    torch.manual_seed(2)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture
def layout(model):
    return layout_for_model(model.config, "tiny", block_tokens=16, dtype=torch.float32)


@torch.no_grad()
def test_prefill_writes_into_the_buffer_in_place(model, layout):
    ids = torch.randint(0, 400, (1, 40))
    buf = KVBuffer(layout, capacity=64)
    cache = buf.cache(0)
    model(ids, past_key_values=cache)
    ref = model(ids, use_cache=True).past_key_values
    assert cache.get_seq_length() == 40
    for i, layer in enumerate(cache.layers):
        assert layer.keys.data_ptr() == buf.tensor[i, 0].data_ptr()  # a view, not a copy
        assert torch.equal(buf.tensor[i, 0, :, :, :40], ref.layers[i].keys)
        assert torch.equal(buf.tensor[i, 1, :, :, :40], ref.layers[i].values)
    assert buf.holds(cache)
    assert torch.equal(buf.canonical(32), cache_to_canonical(ref, 32))


@torch.no_grad()
def test_continuation_matches_a_full_forward(model, layout):
    ids = torch.randint(0, 400, (1, 50))
    full = model(ids).logits[0, -7:]
    buf = KVBuffer(layout, capacity=50)
    model(ids[:, :43], past_key_values=buf.cache(0))
    out = model(ids[:, 43:], past_key_values=buf.cache(43)).logits[0]
    assert torch.allclose(out, full, atol=1e-5)


@torch.no_grad()
def test_overflow_falls_back_to_concatenation(model, layout):
    ids = torch.randint(0, 400, (1, 30))
    buf = KVBuffer(layout, capacity=16)
    cache = buf.cache(0)
    model(ids[:, :16], past_key_values=cache)
    assert buf.holds(cache)
    out = model(ids[:, 16:], past_key_values=cache).logits[0, -1]  # 30 > capacity 16
    assert cache.get_seq_length() == 30 and not buf.holds(cache)
    assert torch.allclose(out, model(ids).logits[0, -1], atol=1e-5)


def test_reserve_grows_and_never_shrinks(layout):
    buf = KVBuffer(layout)
    assert buf.capacity == 0
    buf.reserve(100)
    assert buf.capacity == 112  # whole store blocks of 16 tokens
    assert buf.tokens(100).shape == (2, 2, 2, 100, 16)
    buf.reserve(10)
    assert buf.capacity == 112
    buf.reserve(113)
    assert buf.capacity == 168  # at least half again: fewer reallocations
