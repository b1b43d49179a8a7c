"""An AttendUnary call cancelled (or past its deadline) while its message is
still arriving is not a protocol error.

Found by the soak test: gRPC runs the raw unary handler even when the
call's message never arrived whole, with no message at all, and the server
took that for bytes that do not parse: protocol_errors_total{kind=
"unparseable_message"} counted 73 of 200 such cancellations, so a client
whose deadline passes during a large upload looked like one sending
garbage. Fails before the fix in server/unary_reactor.cc, passes after.
"""

from __future__ import annotations

import pathlib
import re
import sys
import time
import urllib.request

import grpc
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from soak_test import _conftest  # noqa: E402  (first: it sets sys.path)
from soak_abuse import pb  # noqa: E402

UNARY = "/scatterbrain.v1.AttentionService/AttendUnary"


def unparseable(metrics_port: int) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return float(re.search(
        r'^scatterbrain_protocol_errors_total\{kind="unparseable_message"\} '
        r"(\S+)$", text, re.M).group(1))


def test_cancelled_unary_upload_is_not_unparseable():
    binary = _conftest._server_bin()
    if not binary.is_file():
        pytest.skip(f"no server binary at {binary} (set SB_SERVER_BIN)")
    server = _conftest.ServerProcess(binary, [
        "--host=127.0.0.1", f"--max_message_bytes={64 << 20}"])
    try:
        server.wait_serving()
        channel = grpc.insecure_channel(server.target, options=[
            ("grpc.max_send_message_length", -1)])
        call = channel.unary_unary(UNARY, request_serializer=None,
                                   response_deserializer=None)
        # 24 MiB: long enough on loopback that a cancel 0-4 ms after the
        # call starts lands mid-upload. Were one to arrive whole, its
        # q does not match its shape: INVALID_ARGUMENT, not a protocol error.
        big = pb.AttendUnaryRequest(
            header=pb.RequestHeader(
                dtype=pb.DTYPE_FLOAT32,
                settings=pb.MethodSettings(method=pb.METHOD_EXACT),
                shape=pb.Shape(batch=1, heads=1, seq_q=4, seq_k=4, dim=4,
                               dim_v=4)),
            q=bytes(24 << 20)).SerializeToString()
        for i in range(100):
            future = call.future(big, timeout=30)
            time.sleep(0.001 * (i % 5))
            future.cancel()
            with pytest.raises((grpc.FutureCancelledError, grpc.RpcError)):
                future.result()
        # Whatever the server still had in flight is over within a second.
        time.sleep(1)
        assert unparseable(server.metrics_port) == 0
        # Bytes that do not parse still count; an empty message parses (as
        # a request without a header) and does not.
        for payload, counted in ((b"\xff\xfe garbage", 1), (b"", 1)):
            with pytest.raises(grpc.RpcError) as e:
                call(payload, timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert unparseable(server.metrics_port) == counted
        channel.close()
    finally:
        assert server.stop() == 0
