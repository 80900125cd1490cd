"""A small client of the admin API: one channel, the token header, plain-dict replies.

    with AdminClient("127.0.0.1:7803", token="...") as admin:
        admin.call("GetStats")                      # -> dict (ints stay ints)
        admin.call("Pin", prefix={"namespace": "25d42a59", "tokens": [1, 2, 3, 4]})

Failures raise ``AdminError`` with the gRPC status name and the server's message.
"""

from __future__ import annotations

import grpc

from kvstore.admin import admin_pb2 as pb
from kvstore.admin import admin_pb2_grpc as pb_grpc
from kvstore.admin.convert import message_to_dict

REQUESTS = {
    "GetStats": pb.GetStatsRequest,
    "ListNamespaces": pb.ListNamespacesRequest,
    "Evict": pb.EvictRequest,
    "Flush": pb.FlushRequest,
    "Pin": pb.PinRequest,
    "Unpin": pb.UnpinRequest,
    "SetEvictionPolicy": pb.SetEvictionPolicyRequest,
    "Drain": pb.DrainRequest,
    "GetConfig": pb.GetConfigRequest,
    "GetCluster": pb.GetClusterRequest,
    "SetQuota": pb.SetQuotaRequest,
}
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class AdminError(Exception):
    def __init__(self, status: grpc.StatusCode, message: str):
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message

    @property
    def unreachable(self) -> bool:
        return self.status in UNREACHABLE


class AdminClient:
    def __init__(self, address: str, token: str | None = None, timeout: float = 10.0):
        self.address = address
        self.timeout = timeout
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.AdminStub(self.channel)

    def call(self, method: str, **fields) -> dict:
        request = REQUESTS[method](**fields)
        try:
            reply = getattr(self.stub, method)(
                request, timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise AdminError(exc.code(), exc.details() or "") from None
        return message_to_dict(reply)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
