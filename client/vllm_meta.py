"""What the scheduler-side connector tells the worker-side one each step.

vLLM calls ``build_connector_meta`` on the scheduler once per engine step and
hands the result to every worker (``bind_connector_metadata``) before the
forward pass; with a multi-process engine it is pickled across, so it holds
plain data only: token ids, vLLM block ids and the key salt.

Token ``t`` of a request lives in vLLM block ``block_ids[t // block_size]``
at offset ``t % block_size``; store block ``j`` covers tokens
``[j * block_tokens, (j + 1) * block_tokens)``, i.e. ``block_tokens //
block_size`` consecutive vLLM blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata


@dataclass
class LoadSpec:
    """Load the cached prefix ``tokens`` into the request's blocks, from token ``skip`` on.

    ``skip`` tokens (a multiple of vLLM's block size) are already in vLLM's
    own prefix cache and are left alone; ``len(tokens)`` is what the store
    reported at lookup, a multiple of the store block.
    """

    req_id: str
    tokens: np.ndarray  # uint32 prompt prefix to load
    block_ids: list[int]  # vLLM blocks holding tokens[0:len(tokens)]
    skip: int = 0
    extra: bytes = b""


@dataclass
class SaveSpec:
    """Store the whole store blocks of ``tokens``, computed by the end of this step.

    Gathered from block 0 because a put always describes a prefix; the store
    skips the blocks it already holds (``stored_before`` leading tokens, as far
    as the scheduler knows). ``tokens`` is a prefix of the prompt, or with
    ``save_decode`` of prompt + generated tokens. ``last``: the save of a
    request that has finished, whose blocks vLLM keeps until the worker
    reports it done (``get_finished``).
    """

    req_id: str
    tokens: np.ndarray  # uint32 prefix of the sequence, a multiple of block_tokens
    block_ids: list[int]  # vLLM blocks holding tokens[0:len(tokens)]
    extra: bytes = b""
    stored_before: int = 0
    last: bool = False


@dataclass
class KVStoreConnectorMetadata(KVConnectorMetadata):
    """One step's loads (before the forward) and saves (after it)."""

    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)
