"""Settings of the vLLM connector, and the store namespace an engine maps to.

Everything comes from vLLM's ``KVTransferConfig``::

    KVTransferConfig(
        kv_connector="KVStoreConnector",
        kv_connector_module_path="kvstore.client.vllm_connector",
        kv_role="kv_both",                      # kv_producer: save only; kv_consumer: load only
        kv_load_failure_policy="recompute",     # a block lost between lookup and load is recomputed
        kv_connector_extra_config={
            "url": "embedded",                  # or "tcp://127.0.0.1:7801", "shm:///run/kvstore.sock"
            "codec": "none",                    # or fp8_e4m3 / int8 / int4 (kvstore.kernels)
            "block_tokens": 256,                # tokens per store block: a multiple of vLLM's block_size
                                                # (below)
            "model_id": "my-model",             # default: vLLM's served model name
            "tenant": "",                       # namespace salt (tenants never share blocks)
            "strict": False,                    # True: an unreachable store raises instead of missing
            "load": True, "save": True,         # switch one direction off (e.g. a recompute baseline)
            "save_decode": True,                # store the generated tokens' KV too (next chat turn hits)
            "batch_lookups": True,              # the step's waiting requests in one lookup_many
            "store": {"cpu_bytes": "4GiB"},     # embedded only: StoreConfig keywords
        },
    )

``block_tokens`` is the unit of reuse: the store keeps and serves whole
blocks of this many tokens, so a hit leaves the prompt's tail after its last
whole block (up to ``block_tokens - 1`` tokens, at least one) to compute,
where vLLM's own prefix cache leaves up to ``block_size - 1``. Smaller blocks
reuse more of each prompt and let prompts that share less than a block
share something; larger ones mean fewer blocks to look up, lease and copy
per prompt. It must be a positive multiple of vLLM's ``block_size`` (the
engine's ``--block-size``; 32 or more on vLLM's CPU build, whose attention
needs a multiple of 32), checked when the engine starts. Measured TTFT by
block size: ``docs/ttft.md``.

One request may switch either direction off for itself (a recompute
baseline, a prompt that must not be stored) with
``SamplingParams(extra_args={"kv_transfer_params": {"kvstore": {"load": False,
"save": False}}})``, store its prompt only with ``"save_decode": False``, and
hint the store about its blocks when it finishes with ``"session_end": True``
(the conversation is over: its private blocks go first), ``"keep_until":
SECONDS`` and/or ``"priority": P`` (protect them: a system prompt, a document
an agent comes back to) (``kvstore.client.vllm_scheduler.request_options``).

The namespace's ``KVLayout`` is read from vLLM's ``KVCacheConfig`` (the same
object on the scheduler and the worker side), so both sides name the same
blocks. Only models with one full-attention KV cache group are supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvstore.errors import InvalidArgument
from kvstore.layout import KVLayout


@dataclass(frozen=True)
class ConnectorSettings:
    """The connector's part of ``kv_connector_extra_config`` plus the role flags."""

    url: str = "embedded"
    codec: str = "none"
    block_tokens: int = 256
    model_id: str = ""
    tenant: str = ""
    strict: bool = False
    load: bool = True  # look up and load cached prefixes
    save: bool = True  # store the whole blocks of computed prompts
    save_decode: bool = True  # ... and of the generated tokens (prompt + output)
    batch_lookups: bool = True  # the step's waiting requests in one lookup_many (StepLookups)
    store: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_vllm(cls, vllm_config) -> ConnectorSettings:
        transfer = vllm_config.kv_transfer_config
        extra = dict(transfer.kv_connector_extra_config or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(extra) - known
        if unknown:
            raise InvalidArgument(f"unknown kv_connector_extra_config keys: {sorted(unknown)}")
        model = vllm_config.model_config
        if not extra.get("model_id"):
            names = getattr(model, "served_model_name", None) or model.model
            extra["model_id"] = names[0] if isinstance(names, (list, tuple)) else str(names)
        extra["block_tokens"] = _block_tokens(extra.get("block_tokens", cls.block_tokens))
        # the role decides the direction; "load"/"save" may only switch one off
        extra["load"] = bool(transfer.is_kv_consumer) and bool(extra.get("load", True))
        extra["save"] = bool(transfer.is_kv_producer) and bool(extra.get("save", True))
        return cls(**extra)


def _block_tokens(value) -> int:
    """``block_tokens`` as a positive int; a clear error for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgument(f"kv_connector_extra_config block_tokens must be a positive "
                              f"integer, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"kv_connector_extra_config block_tokens must be a positive "
                              f"integer, got {value!r}") from None
    if n <= 0:
        raise InvalidArgument(f"kv_connector_extra_config block_tokens must be positive, got {n}")
    return n


@dataclass(frozen=True)
class EngineGeometry:
    """What the connector needs of vLLM's KV cache: layer order and block size."""

    layer_names: tuple[str, ...]
    block_size: int  # tokens per vLLM block
    num_kv_heads: int
    head_dim: int
    dtype: Any  # torch.dtype

    @classmethod
    def from_kv_cache_config(cls, kv_cache_config) -> EngineGeometry:
        groups = kv_cache_config.kv_cache_groups
        if len(groups) != 1:
            raise InvalidArgument(f"KVStoreConnector supports one KV cache group, got {len(groups)}")
        spec = groups[0].kv_cache_spec
        if type(spec).__name__ != "FullAttentionSpec":
            raise InvalidArgument(f"KVStoreConnector needs full attention, got {type(spec).__name__}")
        return cls(tuple(groups[0].layer_names), spec.block_size, spec.num_kv_heads,
                   spec.head_size, spec.dtype)

    def layout(self, settings: ConnectorSettings, tp_rank: int = 0, tp_size: int = 1) -> KVLayout:
        if settings.block_tokens % self.block_size:
            bt, bs = settings.block_tokens, self.block_size
            near = max(bs, round(bt / bs) * bs)
            raise InvalidArgument(
                f"kv_connector_extra_config block_tokens {bt} is not a multiple of vLLM's "
                f"block_size {bs}: the store keeps whole vLLM blocks; use a multiple of {bs} "
                f"(e.g. {near}) or change vLLM's --block-size")
        return KVLayout(model_id=settings.model_id, num_layers=len(self.layer_names),
                        num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                        dtype=str(self.dtype).removeprefix("torch."),
                        block_tokens=settings.block_tokens, tp_rank=tp_rank, tp_size=tp_size)
