"""grpc.health.v1.Health/Check without the grpcio-health-checking package.

HealthCheckRequest{string service = 1} and HealthCheckResponse{ServingStatus
status = 1} have one field each, so they are encoded by hand here instead
of adding a dependency for two one-field messages.
"""

from __future__ import annotations

import grpc

_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING",
                  3: "SERVICE_UNKNOWN"}


def _encode_health_request(service: str) -> bytes:
    data = service.encode()
    if not data:
        return b""
    out, n = bytearray(b"\x0a"), len(data)
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + data


def _read_varint(data: bytes, pos: int):
    """(value, position after it) of the varint at data[pos]."""
    value, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _decode_health_response(data: bytes) -> str:
    status, pos = 0, 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        if key & 7 != 0:  # not a varint: the response has no such field
            break
        value, pos = _read_varint(data, pos)
        if key >> 3 == 1:
            status = value
    return _HEALTH_STATUS.get(status, "UNKNOWN")


def _health_check(channel: grpc.Channel):
    """Health/Check on `channel`: call(service, timeout=...) -> status name."""
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=_encode_health_request,
        response_deserializer=_decode_health_response)
