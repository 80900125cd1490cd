"""``sdpa_gqa``: transformers' SDPA attention that never expands grouped KV heads.

With grouped-query attention (fewer KV heads than query heads) transformers'
``sdpa`` attention passes ``enable_gqa=True`` to torch only when there is no
attention mask. A suffix of several tokens after a restored prefix needs a
mask (causal inside the suffix), so it falls back to ``repeat_kv``: a copy of
the whole cached prefix, once per query head of a group, in every layer and
every forward. After a 4k-token restore that copy costs more than the restore
itself. torch's CPU (and CUDA) SDPA accept ``enable_gqa`` together with a mask
(torch >= 2.5), so this variant always passes it; the arithmetic is the same
attention (the tests compare logits with ``sdpa``).

    from kvstore.client.hf_attention import use_grouped_sdpa
    use_grouped_sdpa(model)            # model.set_attn_implementation("sdpa_gqa")

Unusual calls (a position bias, a paged cache, attention weights requested)
go to transformers' own ``sdpa_attention_forward`` unchanged.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_gqa"


def grouped_sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                                   scaling=None, is_causal=None, **kwargs):
    """Attention of ``query`` ``[B, Hq, q, D]`` over ``key``/``value`` ``[B, Hkv, k, D]``."""
    if (kwargs.get("position_bias") is not None or kwargs.get("cache") is not None
            or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    q_len = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(q_len > 1 and attention_mask is None and causal)
    if causal and key.shape[2] > q_len:  # prefill into an empty static cache (as transformers)
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=causal, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register ``sdpa_gqa`` (attention and its mask: SDPA's) with transformers; its name."""
    AttentionInterface.register(NAME, grouped_sdpa_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_grouped_sdpa(model) -> None:
    """Switch ``model`` to ``sdpa_gqa`` (same results as ``sdpa``, no KV head expansion)."""
    model.set_attn_implementation(register())
