"""The soak test's misbehaving clients, each a loop run until `stop` is set:
half uploads, clients that never read, idle TCP connections, oversized
messages and garbage. Each counts what it did and what the server answered
in a Tally; an answer outside what the server must say is an `unexpected`
line (the soak test fails on any).

Messages are built with the client's generated stubs and sent through
gRPC calls with identity serializers, so a call can carry any bytes.
"""

from __future__ import annotations

import collections
import os
import selectors
import socket
import threading
import time
from typing import Callable, Dict, Iterator, List

import grpc

import scatterbrain_client as sb

pb = sb.proto
ATTEND = "/scatterbrain.v1.AttentionService/Attend"
UNARY = "/scatterbrain.v1.AttentionService/AttendUnary"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CODES = {c.value[0]: c for c in grpc.StatusCode}  # by number


class Tally:
    """Thread-safe counters and a bounded list of unexpected answers."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: Dict[str, int] = collections.Counter()
        self.unexpected: List[str] = []

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def code(self, what: str, code, expected, details: str = "") -> None:
        """Counts `what` answered `code`; unexpected unless in `expected`."""
        name = code.name if code is not None else "NONE"
        self.add(f"{what}:{name}")
        if code not in expected:
            with self._lock:
                if len(self.unexpected) < 20:
                    self.unexpected.append(f"{what}: {name} {details}".strip())


def _channel(target: str) -> grpc.Channel:
    # No client-side size limit: the oversized messages must reach the
    # server. No reconnect backoff beyond 100 ms: abuse at full rate.
    return grpc.insecure_channel(target, options=[
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 100)])


def _raw_stream(channel: grpc.Channel):
    return channel.stream_stream(ATTEND, request_serializer=None,
                                 response_deserializer=None)


def _raw_unary(channel: grpc.Channel, method: str = UNARY):
    return channel.unary_unary(method, request_serializer=None,
                               response_deserializer=None)


def _unary_status(call, message: bytes,
                  timeout: float = 30) -> grpc.StatusCode:
    """The status of a unary call (the answer itself is dropped)."""
    try:
        call(message, timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def _stream_status(call_stream, messages: List[bytes],
                   timeout: float = 30) -> grpc.StatusCode:
    """The status of an Attend call sending `messages` and half-closing,
    every answer read (and dropped)."""
    try:
        for _ in call_stream(iter(messages), timeout=timeout):
            pass
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def _header(rid: str, shape, dtype=pb.DTYPE_FLOAT32) -> bytes:
    b, h, nq, nk, d, dv = shape
    msg = pb.AttendRequest(header=pb.RequestHeader(
        request_id=rid, dtype=dtype,
        settings=pb.MethodSettings(method=pb.METHOD_EXACT),
        shape=pb.Shape(batch=b, heads=h, seq_q=nq, seq_k=nk, dim=d,
                       dim_v=dv)))
    return msg.SerializeToString()


def _chunk(rid: str, tensor, offset: int, data: bytes) -> bytes:
    return pb.AttendRequest(chunk=pb.TensorChunk(
        request_id=rid, tensor=tensor, offset=offset,
        data=data)).SerializeToString()


def _then_wait(messages: List[bytes], release: threading.Event,
               stop: threading.Event) -> Iterator[bytes]:
    """Sends `messages`, then nothing (the stream stays open, not
    half-closed) until `release` or `stop`."""
    yield from messages
    while not release.is_set() and not stop.is_set():
        release.wait(0.1)


# Half uploads: a header for a request whose buffers take 32 MiB (float32
# [4, 8, 1024, 64] q, k, v and output), 1 MiB of q, then silence. Every
# other cycle waits for the server (DEADLINE_EXCEEDED for the request at
# the upload timeout, then UNAVAILABLE for the stream at the idle timeout),
# the others give up after 0.5 s (a cancelled upload).
HALF_SHAPE = (4, 8, 1024, 1024, 64, 64)


def half_uploads(target: str, stop: threading.Event, tally: Tally,
                 streams: int = 8) -> None:
    def one(slot: int) -> None:
        with _channel(target) as channel:
            call_stream = _raw_stream(channel)
            cycle = 0
            while not stop.is_set():
                cycle += 1
                rid = f"half-{slot}-{cycle}"
                msgs = [_header(rid, HALF_SHAPE)] + [
                    _chunk(rid, pb.TENSOR_NAME_Q, i << 18, os.urandom(1 << 18))
                    for i in range(4)]
                release = threading.Event()
                call = call_stream(_then_wait(msgs, release, stop),
                                   timeout=60)
                tally.add("half_uploads")
                if cycle % 2 == 0:
                    time.sleep(0.5)
                    call.cancel()
                    release.set()
                    tally.add("half_uploads_cancelled")
                    continue
                try:
                    for raw in call:
                        r = pb.AttendResponse.FromString(raw)
                        # After `stop` the client half-closes: then the
                        # request is incomplete (INVALID_ARGUMENT).
                        tally.code("half_upload_request",
                                   CODES.get(r.error.code),
                                   {grpc.StatusCode.DEADLINE_EXCEEDED}
                                   if not stop.is_set() else
                                   set(grpc.StatusCode), r.error.message)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                release.set()
                # UNAVAILABLE: ended idle; CANCELLED: `stop` (ours).
                tally.code("half_upload_stream", code,
                           {grpc.StatusCode.UNAVAILABLE}
                           if not stop.is_set() else set(grpc.StatusCode))

    _run_threads(one, streams)


# Never-reading clients: three exact requests per stream whose outputs take
# 16 MiB each (float32 [1, 4, 1024, 1024]; inputs are small: seq_k = 16),
# then the client neither reads nor half-closes for HOLD_S, far longer than
# the computation and the server's send timeout. Then it reads: the stream
# must have been cancelled by the server (a gRPC client sees that status
# only once it has read what was buffered).
NEVER_READ_SHAPE = (1, 4, 1024, 16, 16, 1024)
HOLD_S = 10


def never_reading(target: str, stop: threading.Event, tally: Tally,
                  streams: int = 4) -> None:
    b, h, nq, nk, d, dv = NEVER_READ_SHAPE
    tensors = [(pb.TENSOR_NAME_Q, bytes(b * h * nq * d * 4)),
               (pb.TENSOR_NAME_K, bytes(b * h * nk * d * 4)),
               (pb.TENSOR_NAME_V, bytes(b * h * nk * dv * 4))]

    def one(slot: int) -> None:
        cycle = 0
        while not stop.is_set():
            cycle += 1
            msgs = []
            for n in range(3):
                rid = f"nr-{slot}-{cycle}-{n}"
                msgs.append(_header(rid, NEVER_READ_SHAPE))
                for name, data in tensors:
                    for off in range(0, len(data), 1 << 20):
                        msgs.append(_chunk(rid, name, off,
                                           data[off:off + (1 << 20)]))
            release = threading.Event()
            # A connection of its own: only this stream's window fills.
            with _channel(target) as channel:
                call = _raw_stream(channel)(_then_wait(msgs, release, stop),
                                            timeout=120)
                tally.add("never_reading_streams")
                if stop.wait(HOLD_S):
                    call.cancel()
                    release.set()
                    return
                try:
                    for _ in call:
                        pass
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                release.set()
                tally.code("never_reading_stream", code,
                           {grpc.StatusCode.CANCELLED})

    _run_threads(one, streams)


def _request(rid: str, shape) -> List[bytes]:
    """A whole exact float32 request of `shape`, zeros, in 1 MiB chunks."""
    b, h, nq, nk, d, dv = shape
    msgs = [_header(rid, shape)]
    for name, n in ((pb.TENSOR_NAME_Q, b * h * nq * d),
                    (pb.TENSOR_NAME_K, b * h * nk * d),
                    (pb.TENSOR_NAME_V, b * h * nk * dv)):
        for off in range(0, 4 * n, 1 << 20):
            msgs.append(_chunk(rid, name, off,
                               bytes(min(1 << 20, 4 * n - off))))
    return msgs


# Clients that give up at every moment of a request's life: the call
# cancelled right after sending, after the first answer message (the output
# being written), a CancelRequest mid-upload and after the upload, and unary
# calls whose deadline passes during the computation.
CANCEL_SHAPE = (1, 4, 512, 512, 64, 256)  # 2 MiB output, 3 MiB unary


def cancelling(target: str, stop: threading.Event, tally: Tally) -> None:
    whole = _request("c", CANCEL_SHAPE)
    cancel = pb.AttendRequest(cancel=pb.CancelRequest(
        request_id="c")).SerializeToString()
    b, h, nq, nk, d, dv = CANCEL_SHAPE
    unary = pb.AttendUnaryRequest(
        header=pb.AttendRequest.FromString(whole[0]).header,
        q=bytes(4 * b * h * nq * d), k=bytes(4 * b * h * nk * d),
        v=bytes(4 * b * h * nk * dv)).SerializeToString()
    with _channel(target) as channel:
        call_stream, call_unary = _raw_stream(channel), _raw_unary(channel)
        cycle = 0
        while not stop.is_set():
            cycle += 1
            release = threading.Event()
            # 1. Cancelled as soon as everything is sent.
            call = call_stream(_then_wait(whole, release, stop), timeout=60)
            time.sleep(0.01 * (cycle % 5))
            call.cancel()
            release.set()
            tally.add("cancel_after_send")
            # 2. Cancelled after the first answer message.
            release = threading.Event()
            call = call_stream(_then_wait(whole, release, stop), timeout=60)
            try:
                next(call)
                tally.add("cancel_after_first_answer")
            except (grpc.RpcError, StopIteration) as e:  # no answer
                tally.code("cancel_after_first_answer", None, set(), repr(e))
            call.cancel()
            release.set()
            # 3. CancelRequest mid-upload, then after the upload: the
            # request is answered CANCELLED and the stream ends OK.
            for msgs in (whole[:3] + [cancel], whole + [cancel]):
                try:
                    codes = [CODES.get(pb.AttendResponse.FromString(r)
                                       .error.code)
                             for r in call_stream(iter(msgs), timeout=60)]
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    codes, code = [], e.code()
                tally.code("cancel_request_stream", code, {grpc.StatusCode.OK})
                # After the upload the answer may have been sent already.
                tally.code("cancel_request_answer", codes[-1] if codes
                           else None, {grpc.StatusCode.CANCELLED,
                                       grpc.StatusCode.OK})
            # 4. A unary call whose deadline passes while it computes.
            code = _unary_status(call_unary, unary,
                                 timeout=0.02 * (1 + cycle % 5))
            tally.code("unary_deadline", code,
                       {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK})


def idle_tcp(address: str, stop: threading.Event, tally: Tally, what: str,
             connections: int = 100, preface: bytes = b"") -> None:
    """`connections` TCP connections that send nothing (or only `preface`)
    after connecting; each one the server closes is counted and replaced
    at once, until `stop`."""
    host, port = address.rsplit(":", 1)
    sel = selectors.DefaultSelector()
    opened_at: Dict[socket.socket, float] = {}
    held: List[float] = []

    def connect() -> None:
        s = socket.create_connection((host, int(port)), timeout=5)
        if preface:
            s.sendall(preface)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        opened_at[s] = time.monotonic()
        tally.add(f"{what}_opened")

    try:
        for _ in range(connections):
            connect()
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:  # the server's SETTINGS or GOAWAY; wait for EOF
                    continue
                held.append(time.monotonic() - opened_at.pop(s))
                sel.unregister(s)
                s.close()
                tally.add(f"{what}_closed_by_server")
                if not stop.is_set():
                    connect()
    finally:
        for s in list(opened_at):
            sel.unregister(s)
            s.close()
        sel.close()
    if held:
        held.sort()
        tally.add(f"{what}_held_ms_median", int(held[len(held) // 2] * 1000))
        tally.add(f"{what}_held_ms_max", int(held[-1] * 1000))


def oversized(target: str, stop: threading.Event, tally: Tally,
              max_message_bytes: int) -> None:
    """AttendUnary requests and Attend chunks of 3 x max_message_bytes:
    RESOURCE_EXHAUSTED, never an answer."""
    n = 3 * max_message_bytes
    unary = pb.AttendUnaryRequest(
        header=pb.RequestHeader(request_id="big", dtype=pb.DTYPE_FLOAT32,
                                settings=pb.MethodSettings(
                                    method=pb.METHOD_EXACT),
                                shape=pb.Shape(batch=1, heads=1, seq_q=n // 8,
                                               seq_k=1, dim=1, dim_v=1)),
        q=bytes(n)).SerializeToString()
    chunk = [_header("big", (1, 1, n // 4, 1, 1, 1)),
             _chunk("big", pb.TENSOR_NAME_Q, 0, bytes(n))]
    expected = {grpc.StatusCode.RESOURCE_EXHAUSTED}
    with _channel(target) as channel:
        call_unary, call_stream = _raw_unary(channel), _raw_stream(channel)
        while not stop.is_set():
            tally.code("oversized_unary", _unary_status(call_unary, unary),
                       expected)
            tally.code("oversized_chunk", _stream_status(call_stream, chunk),
                       expected)
            stop.wait(0.2)


def garbage(target: str, stop: threading.Event, tally: Tally) -> None:
    """Bytes that are not HTTP/2, not the RPC's message, or not a request
    of the stream, and methods the server does not have."""
    host, port = target.rsplit(":", 1)
    invalid = {grpc.StatusCode.INVALID_ARGUMENT}
    unimplemented = {grpc.StatusCode.UNIMPLEMENTED}
    junk = lambda: b"\xff\xfe" + os.urandom(200)  # noqa: E731 (never parses)

    def raw(prefix: bytes) -> None:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            try:
                s.sendall(prefix + os.urandom(4096))
                while s.recv(4096):  # until the server closes
                    pass
                tally.add("garbage_tcp_closed_by_server")
            except TimeoutError:
                tally.code("garbage_tcp", None, set())  # still open
            except OSError:  # reset: closed too
                tally.add("garbage_tcp_closed_by_server")

    unknown = _chunk("nobody", pb.TENSOR_NAME_Q, 0, b"\0" * 4)
    with _channel(target) as channel:
        call_unary, call_stream = _raw_unary(channel), _raw_stream(channel)
        unknown_methods = [
            _raw_unary(channel, m) for m in (
                "/scatterbrain.v1.AttentionService/Nope",
                "/no.such.Service/Method")]
        while not stop.is_set():
            raw(b"")
            raw(PREFACE)
            tally.code("garbage_unary", _unary_status(call_unary, junk()),
                       invalid)
            tally.code("garbage_stream",
                       _stream_status(call_stream, [junk()]), invalid)
            # Not requests: answered per message, the stream goes on (OK).
            tally.code("empty_and_unknown_id_stream",
                       _stream_status(call_stream, [b"", unknown]),
                       {grpc.StatusCode.OK})
            for call in unknown_methods:
                tally.code("unknown_method", _unary_status(call, junk()),
                           unimplemented)
            stop.wait(0.05)


def http_garbage(address: str, stop: threading.Event, tally: Tally) -> None:
    """At /metrics' port, at once: non-HTTP bytes (closed at the exposer's
    5 s request timeout), an unknown path (404) and an over-long request
    head (431). The server must answer so and close each connection within
    10 s."""
    host, port = address.rsplit(":", 1)
    cases = [("http_garbage_bytes", b"\xff" + os.urandom(1024), b""),
             ("http_unknown_path",
              b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
              b"HTTP/1.1 404"),
             ("http_long_head",
              b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000,
              b"HTTP/1.1 431")]

    def one(i: int) -> None:
        what, payload, answer = cases[i]
        got = b""
        try:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(payload)
                while True:
                    data = s.recv(4096)
                    if not data:
                        break
                    got += data
        except TimeoutError:
            tally.code(what, None, set(), "still open after 10 s")
            return
        except OSError:  # a reset after the answer is a close too
            pass
        tally.add(f"{what}_closed_by_server")
        if not got.startswith(answer):
            tally.code(what, None, set(), repr(got[:40]))

    while not stop.is_set():
        _run_threads(one, len(cases))
        stop.wait(0.1)


def _run_threads(fn: Callable[[int], None], n: int) -> None:
    pool = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
