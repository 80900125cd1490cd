"""sdpa_gqa gives sdpa's logits without expanding grouped KV heads."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kvstore.client.hf_attention import use_grouped_sdpa  # noqa: E402


def _model(attn):
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
    )
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(config).eval()
    model.set_attn_implementation(attn)
    return model


@torch.no_grad()
def test_grouped_sdpa_matches_sdpa_with_a_masked_suffix(monkeypatch):
    ref, mine = _model("sdpa"), _model("sdpa")
    use_grouped_sdpa(mine)
    assert mine.config._attn_implementation == "sdpa_gqa"
    ids = torch.randint(0, 300, (1, 90))
    expanded = []
    import transformers.integrations.sdpa_attention as sdpa

    original = sdpa.repeat_kv
    monkeypatch.setattr(sdpa, "repeat_kv", lambda x, n: expanded.append(n) or original(x, n))
    for model in (ref, mine):
        cache = model(ids[:, :80], use_cache=True).past_key_values
        out = model(ids[:, 80:], past_key_values=cache).logits  # 10 tokens: a mask is needed
        if model is ref:
            want, calls = out, len(expanded)
    assert calls > 0 and len(expanded) == calls  # sdpa expanded the heads, sdpa_gqa never did
    assert torch.allclose(out, want, atol=1e-5)
    assert torch.allclose(mine(ids).logits, ref(ids).logits, atol=1e-5)  # full prefill too
