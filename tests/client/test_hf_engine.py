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


def chat_turns(model, save_decode: bool):
    """Turn 1 generates an answer; turn 2's prompt = turn 1's prompt + answer + a question."""
    with KVClient.connect("embedded", cpu_bytes=64 << 20, ssd_bytes=0) as client:
        ns = client.namespace(layout_for_model(model.config, "tiny", 32, torch.float32))
        engine = HFEngine(model, ns, "tiny", block_tokens=32, adaptive=False)
        g = torch.Generator().manual_seed(3)
        prompt1 = torch.randint(0, 300, (150,), generator=g).tolist()
        turn1 = engine.generate(prompt1, 40, save_decode=save_decode)
        assert len(turn1.token_ids) == 40
        prompt2 = prompt1 + turn1.token_ids + torch.randint(0, 300, (20,), generator=g).tolist()
        turn2 = engine.first_token(prompt2, store=False)
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([prompt2])).logits[0, -1], -1)
        return turn1, turn2, ref


def test_generated_tokens_are_stored_and_the_next_turn_hits_through_the_answer(model):
    turn1, turn2, ref = chat_turns(model, save_decode=True)
    # 150 + 40 tokens, the KV of all but the last one: 189 -> 5 whole blocks of 32
    assert turn1.tokens_stored == 160
    assert turn2.tokens_reused == 160  # every whole block before the new question
    assert torch.allclose(turn2.logprobs, ref, atol=1e-4)


def test_without_save_decode_only_the_prompt_hits(model):
    turn1, turn2, ref = chat_turns(model, save_decode=False)
    assert turn1.tokens_stored == 128 and turn2.tokens_reused == 128
    assert torch.allclose(turn2.logprobs, ref, atol=1e-4)


def test_generate_matches_a_plain_greedy_decode_and_passes_its_hint(model):
    from kvstore.store_api import PrefixHint

    with KVClient.connect("embedded", cpu_bytes=64 << 20, ssd_bytes=0) as client:
        ns = client.namespace(layout_for_model(model.config, "tiny", 32, torch.float32))
        engine = HFEngine(model, ns, "tiny", block_tokens=32, adaptive=False)
        told = []
        hint = ns.hint
        ns.hint = lambda tokens, **kw: told.append((list(tokens), kw)) or hint(tokens, **kw)
        prompt = torch.randint(0, 300, (70,)).tolist()
        out = engine.generate(prompt, 8, hint=PrefixHint(session_end=True))
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(8):
                ids.append(int(torch.argmax(model(torch.tensor([ids])).logits[0, -1])))
        assert out.token_ids == ids[70:]
        assert told == [(prompt + out.token_ids, {"session_end": True, "keep_until": None,
                                                  "priority": 0})]
