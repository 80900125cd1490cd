"""The admin API's token: read from ``--admin-token-file``, checked by a server interceptor.

A call to ``kvstore.admin.v1.Admin`` must carry the metadata header
``authorization: Bearer <token>`` when the daemon has an admin token; a
missing or wrong one is refused with UNAUTHENTICATED before the method runs.
The health and reflection services stay open (probes and ``grpcurl list``
carry no token). The file holds one token (blank and ``#`` lines ignored);
comparison is constant-time.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from pathlib import Path

import grpc

from kvstore.errors import InvalidArgument

log = logging.getLogger("kvstore.admin")
ADMIN_PREFIX = "/kvstore.admin.v1.Admin/"


def read_token(path: str | os.PathLike) -> str:
    """The single token in ``path``; warns when others may read the file."""
    path = Path(path)
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("admin token file %s is readable by group/others (chmod 600)", path)
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except OSError as exc:
        raise InvalidArgument(f"cannot read the admin token file {path}: {exc}") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1 or any(c.isspace() for c in lines[0]):
        raise InvalidArgument(f"the admin token file {path} must hold exactly one token")
    return lines[0]


def _deny(message: str) -> grpc.RpcMethodHandler:
    def refuse(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses Admin calls without ``authorization: Bearer <token>``."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if not handler_call_details.method.startswith(ADMIN_PREFIX):
            return continuation(handler_call_details)
        presented = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else bytes(value)
        if presented is None:
            return _deny("admin token required (metadata authorization: Bearer <token>)")
        if not hmac.compare_digest(presented, self._expected):
            return _deny("bad admin token")
        return continuation(handler_call_details)
