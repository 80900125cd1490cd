"""What the ``vllm serve`` tests share: the trained model's folder, a long prompt, the daemon's stats.

The model is SmolLM2-135M-Instruct converted once per machine by
``kvstore.demo.trained_model`` (the tests skip when it is not installed); the
prompt is the first ``PROMPT_DOC_TOKENS`` tokens of the demo's document
(``kvstore.demo.document``) and a question about it.
"""

from __future__ import annotations

import importlib.util

import pytest

PROMPT_DOC_TOKENS = 1536  # six whole 256-token store blocks, then the question's tail


def skip_unless_ready() -> None:
    """Skip the module unless vLLM and the trained model are installed."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (make venv-vllm)", allow_module_level=True)
    from kvstore.demo.trained_model import ModelNotInstalled, gguf_path

    try:
        gguf_path()
    except ModelNotInstalled as e:
        pytest.skip(str(e), allow_module_level=True)
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the extra kvstore[model] is not installed", allow_module_level=True)


def model_dir():
    """The converted model's folder (converted now if this machine never did)."""
    from kvstore.demo.trained_model import trained_model_dir

    return trained_model_dir()


def document_prompt(folder) -> tuple[str, int]:
    """A completion prompt: the document's first tokens and a question; its length in tokens."""
    from transformers import AutoTokenizer

    from kvstore.demo.document import demo_document

    tokenizer = AutoTokenizer.from_pretrained(folder)
    doc = demo_document()
    text = tokenizer.decode(tokenizer(doc.text)["input_ids"][:PROMPT_DOC_TOKENS])
    prompt = f"{text}\n\nQuestion: {doc.question}\nAnswer:"
    return prompt, len(tokenizer(prompt)["input_ids"])


def store_hits(admin: str) -> int:
    """Blocks the daemon served (hits summed over its namespaces), read through the admin API."""
    from kvstore.admin.client import AdminClient

    with AdminClient(admin) as client:
        return sum(int(n["hits"]) for n in client.call("GetStats")["namespaces"])


def report(label: str, reply) -> None:
    print(f"{label}: TTFT {reply.ttft_s:.3f} s, {reply.prompt_tokens} prompt tokens, "
          f"{reply.cached_tokens} cached, text {reply.text!r}")
