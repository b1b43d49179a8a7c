"""AttendError: a request's failure as a gRPC status code and message.

One type for every failure a caller sees (a server's RequestError on the
stream, a failed RPC, a broken response), so attend() raises and
attend_many() reports the same thing; it is a grpc.RpcError, so code that
already catches those keeps working.
"""

from __future__ import annotations

from typing import Optional

import grpc


class AttendError(grpc.RpcError):
    """A request's error: a gRPC status code and the server's message.

    Raised by attend(); carried by AttendResult.error in attend_many(). Like
    grpc.RpcError from a failed call, it has code() and details().
    """

    def __init__(self, code: grpc.StatusCode, details: str,
                 request_id: Optional[str] = None):
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self.request_id = request_id

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"


_CODES_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def _error_from_code(code: int, details: str, request_id=None) -> AttendError:
    """The AttendError of a numeric gRPC code (a RequestError on the wire)."""
    return AttendError(_CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN),
                       details, request_id)


def _error_from_rpc(e: grpc.RpcError, request_id=None) -> AttendError:
    """The AttendError of a failed gRPC call (itself when it is one)."""
    if isinstance(e, AttendError):
        return e
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return AttendError(code or grpc.StatusCode.UNKNOWN, details or "",
                       request_id)
