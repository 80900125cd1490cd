"""A small Llama-style model and tokenizer made here, with no download.

The demo, the engine tests and the TTFT benchmark need a real model that both
transformers and vLLM load from a folder. Hub downloads are not available on
these machines, so this module builds one:

* a byte-level BPE tokenizer trained with ``tokenizers`` on the Python
  standard library's own source files (present on every machine), and
* a randomly initialised ``LlamaForCausalLM`` (hidden 768, 8 layers, 12 query
  heads / 4 KV heads, head_dim 64: about 63M parameters with an 8k vocab).

The weights are random, so the text it writes is noise; what matters to a KV
cache is that it is a real transformer with GQA and RoPE whose outputs depend
on every cached key and value. Building is deterministic for a given seed.

    python -m kvstore.demo.local_model PATH [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "kvstore_local_model.json"


@dataclass(frozen=True)
class LocalModelSpec:
    vocab_size: int = 8192
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 8
    num_attention_heads: int = 12
    num_key_value_heads: int = 4
    max_position_embeddings: int = 16384
    seed: int = 0


def _corpus(limit_bytes: int = 8 << 20):
    """Yield text from the standard library's sources (deterministic order)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        total += len(text)
        yield text
        if total >= limit_bytes:
            return


def train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def build_local_model(path: str | Path, spec: LocalModelSpec = LocalModelSpec()) -> Path:
    """Write tokenizer and random-weight model to ``path`` (skipped if already there)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    marker = path / MARKER
    if marker.exists() and json.loads(marker.read_text()) == asdict(spec):
        return path
    path.mkdir(parents=True, exist_ok=True)
    log.info("building local model in %s", path)
    tok = train_tokenizer(spec.vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    marker.write_text(json.dumps(asdict(spec)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build the local test model")
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    out = build_local_model(args.path, LocalModelSpec(seed=args.seed))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
