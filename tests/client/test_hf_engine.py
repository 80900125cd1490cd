import pytest
import torch

transformers = pytest.importorskip("transformers")

from kvstore.client import KVClient  # noqa: E402
from kvstore.client.hf_adapter import layout_for_model  # noqa: E402
from kvstore.client.hf_engine import HFEngine  # noqa: E402


@pytest.fixture(scope="module")
def model():
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    )
    torch.manual_seed(1)
    return transformers.LlamaForCausalLM(config).eval()


def test_second_request_reuses_prefix_and_matches_recompute(model):
    with KVClient.connect("embedded", cpu_bytes=64 << 20, ssd_bytes=0) as client:
        ns = client.namespace(layout_for_model(model.config, "tiny", 32, torch.float32))
        engine = HFEngine(model, ns, "tiny", block_tokens=32, adaptive=False)
        shared = torch.randint(0, 300, (300,)).tolist()
        a = engine.first_token(shared + [1, 2, 3])
        assert a.tokens_reused == 0 and a.tokens_stored == 288
        b = engine.first_token(shared + [4, 5, 6, 7])
        assert b.tokens_reused == 288
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([shared + [4, 5, 6, 7]])).logits[0, -1], -1)
        assert torch.allclose(b.logprobs, ref, atol=1e-5)
        assert b.token_id == int(torch.argmax(ref))


def test_adaptive_engine_skips_load_when_carrier_is_slow(model):
    with KVClient.connect("embedded", cpu_bytes=64 << 20, ssd_bytes=0) as client:
        ns = client.namespace(layout_for_model(model.config, "tiny", 32, torch.float32))
        engine = HFEngine(model, ns, "tiny", block_tokens=32)
        tokens = torch.randint(0, 300, (200,)).tolist()
        engine.first_token(tokens + [9])
        engine.bandwidth.bytes_per_s = 1.0  # a carrier that would take ages
        out = engine.first_token(tokens + [8])
        assert out.tokens_cached == 192 and out.tokens_reused == 0


def test_load_false_recomputes_even_when_cached(model):
    with KVClient.connect("embedded", cpu_bytes=64 << 20, ssd_bytes=0) as client:
        ns = client.namespace(layout_for_model(model.config, "tiny", 32, torch.float32))
        engine = HFEngine(model, ns, "tiny", block_tokens=32, adaptive=False)
        tokens = torch.randint(0, 300, (100,)).tolist()
        engine.first_token(tokens)
        hit = engine.first_token(tokens, store=False)
        miss = engine.first_token(tokens, store=False, load=False)
        assert hit.tokens_reused == 96 and miss.tokens_reused == 0 and miss.tokens_cached == 0
        assert torch.allclose(hit.logprobs, miss.logprobs, atol=1e-5)
