"""MemoBudget: the daemon-wide bound on the prompt memos of all connections.

Each connection's prompt memo (``transport.prompt_memo``) may keep up to its
bound in tokens (4 bytes each, in the prompts' own bytes). ``Limits.max_memo_tokens`` is what one connection may get;
``Limits.max_memo_tokens_total`` is what all of them together may: without
it, a client opening ``max_connections`` connections could make the daemon
keep 1024 x 4 MiB of token arrays. A connection is granted its bound at hello
(the smaller of the two limits' remainders; 0, no memo, once the budget is
spent) and gives it back when it ends. The grant is what its hello reply
advertises, so the client's mirror plans against the same bound.
"""

from __future__ import annotations

from kvstore.transport.limits import Limits


class MemoBudget:
    """Tokens of memo granted to the live connections, against ``Limits`` (read at each
    grant: an operator's new limits apply to the next connections)."""

    def __init__(self):
        self.granted = 0

    def grant(self, limits: Limits) -> int:
        """Tokens of memo for a new connection (0: none left)."""
        tokens = max(0, min(limits.max_memo_tokens, limits.max_memo_tokens_total - self.granted))
        self.granted += tokens
        return tokens

    def give_back(self, tokens: int) -> None:
        self.granted = max(0, self.granted - tokens)
