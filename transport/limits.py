"""Limits: what one connection may ask of the daemon, checked before any allocation.

Every frame is checked in this order, each before the bytes it guards are
allocated or read:

1. the 4-byte header length against ``max_header_bytes`` (before the header
   buffer is allocated);
2. the decoded header's ``sizes`` (count against ``max_segments``, their sum
   against ``max_payload_bytes``) before any payload byte is read;
3. the ``tokens`` argument against ``max_tokens``;
4. a new connection against ``max_connections`` (refused with an error reply),
   and a lease against ``max_leases_per_connection``.

Beside them, ``max_memo_tokens`` bounds each connection's prompt memo
(``transport.prompt_memo``: the prompts ``lookup_many`` sent, kept so that
they travel as digests afterwards), in tokens; 0 turns the memo off.
``max_memo_tokens_total`` bounds all the connections' memos together
(``transport.memo_budget``: granted at hello, given back at the end).

The defaults admit a 256K-token prompt and 4 GiB of blocks per request.

Connections that have not said hello yet (``transport.pre_hello``) get their
own, much smaller limits: at most ``max_pre_hello_connections`` of them (a
new one pushes the oldest out), a header of at most
``max_pre_hello_header_bytes``, no payload, and ``hello_seconds`` to say
hello. After hello, a frame whose first bytes arrived must have its whole
header within ``header_seconds`` (idle time between frames is not limited).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from kvstore.dataclass_dict import reject_unknown
from kvstore.errors import InvalidArgument, TooLarge
from kvstore.sizes import parse_size


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 2 << 20
    max_payload_bytes: int = 4 << 30
    max_segments: int = 16384
    max_tokens: int = 1 << 18
    max_connections: int = 1024
    max_leases_per_connection: int = 1024
    max_memo_tokens: int = 1 << 20  # per connection: 4 MiB of token arrays
    max_memo_tokens_total: int = 1 << 26  # every connection's memo together (transport.memo_budget)
    max_pre_hello_connections: int = 128
    max_pre_hello_header_bytes: int = 16 << 10
    hello_seconds: float = 5.0
    header_seconds: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_seconds"):
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                    raise InvalidArgument(f"limit {f.name} must be a positive number of seconds")
                object.__setattr__(self, f.name, float(value))
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"limit {f.name} must be a non-negative int, got {value!r}")
        if self.max_header_bytes < 64:
            raise InvalidArgument("max_header_bytes must be at least 64")

    # -- the checks, in frame order -----------------------------------------
    def check_header_length(self, length: int) -> None:
        if length > self.max_header_bytes:
            raise TooLarge(f"header of {length} bytes exceeds the limit of {self.max_header_bytes}")

    def check_sizes(self, sizes: list[int]) -> int:
        """Total payload bytes of ``sizes`` (already validated as non-negative ints)."""
        if len(sizes) > self.max_segments:
            raise TooLarge(f"{len(sizes)} payload segments exceed the limit of {self.max_segments}")
        total = sum(sizes)
        if total > self.max_payload_bytes:
            raise TooLarge(
                f"payload of {total} bytes exceeds the limit of {self.max_payload_bytes}"
            )
        return total

    def check_tokens(self, count: int) -> None:
        if count > self.max_tokens:
            raise TooLarge(f"{count} tokens exceed the limit of {self.max_tokens}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Limits:
        reject_unknown(cls, data, "limits")
        return cls(**{k: float(v) if k.endswith("_seconds") else parse_size(v)
                      for k, v in data.items()})

    def before_hello(self) -> Limits:
        """The limits of a connection that has not said hello: small header, no payload."""
        return replace(self, max_header_bytes=max(64, min(self.max_header_bytes,
                                                          self.max_pre_hello_header_bytes)),
                       max_payload_bytes=0, max_segments=0)
