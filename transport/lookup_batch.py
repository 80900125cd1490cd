"""The prompts of a ``lookup_many`` request as the daemon reads them: plain or memo.

A plain request carries every prompt's tokens as a payload segment; a memo
request (``digests`` in its args, ``transport.prompt_memo``) names every
prompt by its digest and carries the tokens of some, the others coming from
the connection's ``PromptMemo``. Either way the op gets each prompt's token
array and extra, checked as before: at most ``MAX_LOOKUPS`` prompts, the
segments' tokens against ``max_tokens`` before they are read, and every
prompt's tokens (the memo's included) against it once resolved.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from kvstore.errors import InvalidArgument
from kvstore.tokens import TOKEN_DTYPE
from kvstore.transport import messages as m
from kvstore.transport.limits import Limits
from kvstore.transport.messages import Request
from kvstore.transport.prompt_memo import PromptMemo
from kvstore.transport.session import Payload, Session


async def read_segments(payload: Payload, sizes: list[int]) -> list[np.ndarray]:
    """The token arrays of every segment, read in one stream read into one buffer."""
    if not sizes:
        return []
    width = TOKEN_DTYPE.itemsize
    tokens = np.empty(sum(sizes) // width, dtype=TOKEN_DTYPE)
    await payload.read_rest_into(memoryview(tokens).cast("B"))
    ends = itertools.accumulate(size // width for size in sizes)
    return [tokens[end - size // width : end] for end, size in zip(ends, sizes)]


async def read_lookups(session: Session, req: Request, payload: Payload,
                       limits: Limits) -> tuple[Sequence[np.ndarray], list[bytes]]:
    """Every prompt's token array and extra, in order (InvalidArgument, TooLarge,
    ``UnknownPrompt``; the dispatcher skips what is left of the payload)."""
    if "digests" not in req.args:
        extras = m.lookup_many_request(req.args, req.sizes)
        limits.check_tokens(sum(req.sizes) // TOKEN_DTYPE.itemsize)
        return await read_segments(payload, req.sizes), extras
    bound = min(session.memo_tokens, limits.max_memo_tokens)  # granted at hello, or less
    if not bound:
        raise InvalidArgument("no prompt memo on this connection (max_memo_tokens is 0)")
    memo_req = m.lookup_many_memo_request(req.args, req.sizes)
    limits.check_tokens(sum(req.sizes) // TOKEN_DTYPE.itemsize)
    segments = await read_segments(payload, req.sizes)  # views of one buffer, copied out
    if session.prompts is None:
        session.prompts = PromptMemo(bound)
    batch = session.prompts.resolve(memo_req.digests, memo_req.carried, segments)
    limits.check_tokens(batch.tokens)
    return batch, memo_req.extras
