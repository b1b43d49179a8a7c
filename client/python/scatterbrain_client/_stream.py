"""The Attend stream driver behind Client.attend_many.

_attend_stream runs one bidirectional Attend call: a feed generator (on
gRPC's request thread) takes items from a _Source, encodes them and sends
their chunks while at most `max_in_flight` are unanswered; the caller's
thread reads the responses, reassembles each output in an _Incoming and
yields one AttendResult per request. Retrying a broken stream is the
Client's business: _Source lets the next stream pick up what this one did
not send, and each result comes with its _Encoded so it can be resent.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional

import grpc
import numpy as np

from ._errors import AttendError, _error_from_code, _error_from_rpc
from ._request import AttendResult, _as_request, _Encoded
from ._wire import _DTYPE_BYTES, _from_wire, stats_to_dict


class _Incoming:
    """An output being received."""

    def __init__(self):
        self.shape = None
        self.dtype = None
        self.buf = None
        self.received = 0
        self.stats = None


class _Source:
    """attend_many's requests, shared by the streams of its tries: items
    taken by a stream that broke before sending them go back to the front."""

    def __init__(self, items: Iterable):
        self._it = iter(items)
        self._front: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._exhausted = False

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            if self._front:
                return self._front.popleft()
        try:
            return next(self._it)
        except StopIteration:
            self._exhausted = True
            raise

    def push_front(self, items) -> None:
        with self._lock:
            self._front.extendleft(reversed(list(items)))

    def done(self) -> bool:
        with self._lock:
            return self._exhausted and not self._front


def _attend_stream(stub, source: _Source, *, max_in_flight: int,
                   chunk_bytes: int, timeout: Optional[float],
                   next_id: Callable[[], str], state: Dict[str, Any]):
    """One Attend stream over `source`; yields (AttendResult, its
    _Encoded or None); sets state["error"] when the stream failed.

    stub: an AttentionServiceStub; timeout: of the call (None: none);
    next_id: a fresh request id for items that have none.
    """
    slots = threading.BoundedSemaphore(max_in_flight)
    closed = threading.Event()
    lock = threading.Lock()
    # Held by the feed from taking an item to registering it: once the
    # stream is over, taking it means no item is half taken.
    feed_lock = threading.Lock()
    pending: Dict[str, _Incoming] = {}
    encoded: Dict[str, _Encoded] = {}
    local: List[AttendResult] = []   # failed before sending (guarded by lock)
    feed_error: List[BaseException] = []

    def feed():
        # Runs on gRPC's request-consuming thread.
        try:
            while not closed.is_set():
                with feed_lock:
                    if closed.is_set():
                        return
                    try:
                        item = next(source)
                    except StopIteration:
                        return
                    while not slots.acquire(timeout=0.1):
                        if closed.is_set():
                            source.push_front([item])
                            return
                    enc, rid = None, None
                    try:
                        if isinstance(item, _Encoded):  # attend(), retries
                            enc, rid = item, item.request_id
                        else:
                            req = _as_request(item)
                            rid = req.request_id or next_id()
                            enc = _Encoded(req, rid)
                    except (ValueError, TypeError) as e:
                        rid = rid or next_id()
                        slots.release()
                        with lock:
                            local.append(AttendResult(rid, error=AttendError(
                                grpc.StatusCode.INVALID_ARGUMENT, str(e),
                                rid)))
                        continue
                    with lock:
                        if rid in pending:
                            local.append(AttendResult(rid, error=AttendError(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                f"request_id: '{rid}' is already in flight",
                                rid)))
                            slots.release()
                            continue
                        pending[rid] = _Incoming()
                        encoded[rid] = enc
                for m in enc.messages(chunk_bytes):
                    if closed.is_set():
                        return
                    yield m
        except Exception as e:  # the caller's iterable failed
            feed_error.append(e)

    call = stub.Attend(feed(), timeout=timeout)

    def drain_local():
        with lock:
            out = list(local)
            local.clear()
        return out

    try:
        for resp in call:
            for r in drain_local():
                yield r, None
            rid = resp.request_id
            with lock:
                inc = pending.get(rid)
            if inc is None:
                continue
            result = _on_response(rid, inc, resp)
            if result is not None:
                with lock:
                    pending.pop(rid, None)
                    enc = encoded.pop(rid, None)
                slots.release()
                yield result, enc
        stream_error = None
    except grpc.RpcError as e:
        stream_error = _error_from_rpc(e)
    finally:
        closed.set()
        call.cancel()
    with feed_lock:  # the feed takes nothing from `source` from now on
        pass
    state["error"] = stream_error
    for r in drain_local():
        yield r, None
    if feed_error:
        raise feed_error[0]
    with lock:
        left = list(pending)
        pending.clear()
    for rid in left:
        err = stream_error or AttendError(
            grpc.StatusCode.UNAVAILABLE,
            "the Attend stream ended before the response", rid)
        yield AttendResult(rid, error=AttendError(
            err.code(), err.details(), rid)), encoded.get(rid)


def _on_response(rid: str, inc: _Incoming, resp) -> Optional[AttendResult]:
    """Folds one AttendResponse into `inc`; the request's AttendResult once
    it is complete (or failed), else None."""
    kind = resp.WhichOneof("kind")
    if kind == "error":
        return AttendResult(rid, error=_error_from_code(
            resp.error.code, resp.error.message, rid))
    if kind == "header":
        s = resp.header.shape
        inc.shape = (s.batch, s.heads, s.seq_q, s.dim_v)
        inc.dtype = resp.header.dtype
        eb = _DTYPE_BYTES.get(inc.dtype)
        if eb is None:
            return AttendResult(rid, error=AttendError(
                grpc.StatusCode.INTERNAL,
                f"server answered in unknown dtype {inc.dtype}", rid))
        inc.buf = bytearray(int(np.prod(inc.shape)) * eb)
        inc.stats = stats_to_dict(resp.header.stats)
    elif kind == "chunk":
        c = resp.chunk
        if (inc.buf is None or c.offset != inc.received
                or c.offset + len(c.data) > len(inc.buf)):
            return AttendResult(rid, error=AttendError(
                grpc.StatusCode.INTERNAL,
                f"output chunk out of order (offset {c.offset})", rid))
        inc.buf[c.offset:c.offset + len(c.data)] = c.data
        inc.received += len(c.data)
    if not resp.last:
        return None
    if inc.buf is None or inc.received != len(inc.buf):
        return AttendResult(rid, error=AttendError(
            grpc.StatusCode.INTERNAL,
            f"output incomplete: {inc.received} bytes", rid))
    return AttendResult(rid, _from_wire(inc.buf, inc.dtype, inc.shape),
                        inc.stats)
