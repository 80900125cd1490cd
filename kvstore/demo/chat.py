"""A question about a document, answered greedily through ``HFEngine`` and a daemon.

``chat_prompt`` builds the prompt through the tokenizer's chat template (the
document first, the question after it, so the document's whole blocks are
the shared prefix). ``ask_hf`` runs one request the way a serving engine
would, on a fresh engine (a new client, a new ``HFEngine`` with its own KV
memory; the model's weights are shared, they hold no state):

1. ``HFEngine.first_token``: lookup, load the cached prefix from the daemon
   (or prefill everything on a miss), forward of the rest, first token (the
   TTFT ends here); then the prompt's whole blocks are stored;
2. greedy decoding on the same KV memory until the end-of-turn token or
   ``max_new_tokens``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

BLOCK_TOKENS = 256


def chat_content(document: str, question: str) -> str:
    """The user turn's text: ``document`` then ``question`` (the document is the shared prefix)."""
    return (f"Read this document, then answer the question after it.\n\n{document}"
            f"\n\nQuestion: {question}")


def chat_prompt(tokenizer, document: str, question: str) -> list[int]:
    """Token ids of a user turn holding ``document`` then ``question``, ready for the answer."""
    content = chat_content(document, question)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                            add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # a BatchEncoding in recent transformers
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    return tokenizer(f"{content}\nAnswer:")["input_ids"]  # the random local model: no template


def stop_ids(tokenizer, model) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        ids |= set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids


@dataclass(frozen=True)
class Answer:
    carrier: str
    codec: str
    prompt_tokens: int
    ttft_s: float
    tokens_reused: int  # prompt tokens loaded from the daemon instead of computed
    tokens_stored: int  # prompt tokens this request stored (whole blocks)
    token_ids: list[int] = field(repr=False)
    text: str
    decode_s: float  # the answer's other tokens, after the first

    def same_as(self, other: Answer) -> bool:
        return self.token_ids == other.token_ids

    def first_divergence(self, other: Answer) -> int | None:
        """Index of the first differing token (None: identical)."""
        for i, (a, b) in enumerate(zip(self.token_ids, other.token_ids)):
            if a != b:
                return i
        if len(self.token_ids) != len(other.token_ids):
            return min(len(self.token_ids), len(other.token_ids))
        return None


@torch.no_grad()
def ask_hf(url: str, model, tokenizer, model_id: str, prompt: list[int], codec: str = "none",
           max_new_tokens: int = 64, store: bool = True) -> Answer:
    """One request on a fresh engine against the daemon at ``url`` (see the module's doc)."""
    from kvstore.client import KVClient
    from kvstore.client.hf_adapter import layout_for_model
    from kvstore.client.hf_engine import HFEngine

    layout = layout_for_model(model.config, model_id, BLOCK_TOKENS, torch.float32)
    stops = stop_ids(tokenizer, model)
    with KVClient.connect(url) as client:
        engine = HFEngine(model, client.namespace(layout, codec=codec), model_id,
                          block_tokens=BLOCK_TOKENS, adaptive=False)
        engine.buffer.reserve(len(prompt) + max_new_tokens)  # room for the answer too
        first = engine.first_token(prompt, store=store)
        t0 = time.perf_counter()
        ids = [first.token_id]
        cache = engine.buffer.cache(len(prompt))  # the prompt's KV, as the prefill left it
        while len(ids) < max_new_tokens and ids[-1] not in stops:
            logits = model(torch.tensor([[ids[-1]]]), past_key_values=cache, use_cache=True,
                           logits_to_keep=1).logits[0, -1]
            ids.append(int(torch.argmax(logits)))
        decode_s = time.perf_counter() - t0
    text_ids = ids[:-1] if ids[-1] in stops else ids
    return Answer(url.split("://")[0], codec, len(prompt), first.ttft_s, first.tokens_reused,
                  first.tokens_stored, ids, tokenizer.decode(text_ids).strip(), decode_s)
