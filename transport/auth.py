"""Auth tokens of the daemon: who may say hello, and as which tenant.

The token file (``--auth-token-file``) holds either one token (any client
that presents it may name any tenant), or lines ``TENANT:TOKEN`` that bind a
token to its tenant (a hello naming another tenant is refused). Blank lines
and lines starting with ``#`` are ignored. Tokens are compared in constant
time (``hmac.compare_digest``) against every entry, so the time taken does
not tell which entry came close.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from pathlib import Path

from kvstore.errors import InvalidArgument, Unauthorized

log = logging.getLogger(__name__)
ANY_TENANT = None


class TokenAuth:
    def __init__(self, entries: list[tuple[bytes, str | None]]):
        if not entries:
            raise InvalidArgument("an auth token file must hold at least one token")
        self._entries = entries

    @classmethod
    def from_text(cls, text: str) -> TokenAuth:
        entries: list[tuple[bytes, str | None]] = []
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if len(lines) == 1 and ":" not in lines[0]:
            return cls([(lines[0].encode(), ANY_TENANT)])
        for ln in lines:
            tenant, sep, token = ln.partition(":")
            if not sep or not token.strip():
                raise InvalidArgument("auth token file lines must read TENANT:TOKEN")
            entries.append((token.strip().encode(), tenant.strip()))
        return cls(entries)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TokenAuth:
        path = Path(path)
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("auth token file %s is readable by group/others (chmod 600)", path)
        return cls.from_text(path.read_text())

    def check(self, token, tenant: str) -> str:
        """The tenant the hello may act as; raises Unauthorized."""
        if isinstance(token, str):
            token = token.encode()
        if not isinstance(token, bytes):
            raise Unauthorized("auth token required")
        matched: str | None | bool = False
        for expected, bound in self._entries:
            if hmac.compare_digest(expected, token) and matched is False:
                matched = bound
        if matched is False:
            raise Unauthorized("bad auth token")
        if matched is not ANY_TENANT and matched != tenant:
            raise Unauthorized("wrong tenant for this token")
        return tenant
