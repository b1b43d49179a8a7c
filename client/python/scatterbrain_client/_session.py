"""Session: a K/V cache held by the server (CreateSession), filled by
appends (AppendKV) and attended by requests that carry only their queries,
or a decode step's query, key and value (one round trip per token).

    with client.session(heads=8, dim=64, method="scatterbrain",
                        num_features=128, bucket_size=64) as s:
        s.append(k, v)                  # [batch, heads, n, dim] each
        out = s.attend(q)               # causal w.r.t. the stored keys
        out, stats = s.step(q1, k1, v1, return_stats=True)   # decode step

Attends and steps travel on the Attend stream (chunked like Client.attend,
through the same stream driver), appends on the AppendKV client stream,
both cut into messages of at most the Client's chunk_bytes.

Retries follow the Client's policy (UNAVAILABLE, and CANCELLED this client
did not ask for), except where a retry could apply data twice:
  - create, info and attend are retried; a create whose answer was lost
    may leave an orphan session on a live server, which its TTL evicts;
  - append is retried only while the upload was not complete: the server
    applies an append when the client's writes are done, so one broken
    before that was not applied; after it the error is raised as is;
  - step (append and attend in one message) is never retried: an
    UNAVAILABLE may or may not have appended (info() tells);
  - close is retried; a NOT_FOUND on a retry means an earlier try deleted.
Errors are AttendError (a grpc.RpcError with the server's code and
message); bad arguments raise ValueError / TypeError before anything is
sent.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional, Sequence

import grpc
import numpy as np

from . import _stubs
from ._errors import AttendError, _error_from_rpc
from ._request import _Encoded
from ._stream import _attend_stream, _Source
from ._wire import _dtype_enum, _settings_proto, _to_wire

pb, _ = _stubs.load()


class _SessionEncoded(_Encoded):
    """An Attend request on a session: header (with .session) + q, and k, v
    when the step appends. Sent like any _Encoded (its messages())."""

    def __init__(self, header, tensors, request_id: str):
        self.request_id = request_id
        header.request_id = request_id
        self.header = header
        self.tensors = tensors


def _array(name: str, x, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape "
                         f"{a.shape}")
    return a


class Session:
    """A session on the server; see the module docstring.

    Made by Client.create_session / Client.session (or Session.create).
    Use as a context manager (which closes it; a session already gone on
    the server, NOT_FOUND, is no error there), or call close(); calls after
    close() raise AttendError(FAILED_PRECONDITION). Not thread-safe: one
    call at a time.
    """

    def __init__(self, client, info, dtype: int, output_dtype: Optional[int],
                 timeout: Optional[float]):
        self._client = client
        self._created = info
        self.id: str = info.session_id
        s = info.shape
        self.shape = (s.batch, s.heads, s.dim, s.dim_v)
        self._dtype = dtype
        self._output_dtype = output_dtype
        self._timeout = timeout if timeout is not None else client.timeout
        self._closed = False

    # --- creation ----------------------------------------------------------

    @classmethod
    def create(cls, client, *, dim: int, heads: int = 1, batch: int = 1,
               dim_v: Optional[int] = None, method: str = "scatterbrain",
               kv_dtype: str = "float32", ttl: Optional[float] = None,
               dtype: str = "float32", output_dtype: Optional[str] = None,
               timeout: Optional[float] = None, **settings) -> "Session":
        """CreateSession on `client`'s channel.

        dim / dim_v: head dims of keys (and queries) / values (dim_v
        default dim). method and settings: as Client.attend, fixed for the
        session's life. kv_dtype: how the server stores K and V (float32,
        float16, bfloat16). ttl: idle seconds before the server may evict
        it (None: the server's default). dtype / output_dtype: of q, k, v /
        outputs on the wire (numpy float32 in and out either way).
        timeout: of each call (None: the Client's).
        """
        for name, n in (("dim", dim), ("heads", heads), ("batch", batch),
                        ("dim_v", dim_v or dim)):
            if int(n) <= 0:
                raise ValueError(f"{name}: must be > 0, got {n}")
        if ttl is not None and ttl < 0:
            raise ValueError(f"ttl: must be >= 0, got {ttl}")
        req = pb.CreateSessionRequest(
            settings=_settings_proto(method, False, settings),
            batch=int(batch), heads=int(heads), dim=int(dim),
            dim_v=int(dim_v or dim), kv_dtype=_dtype_enum(kv_dtype),
            ttl_seconds=float(ttl or 0.0))
        wire_dtype = _dtype_enum(dtype)
        out_dtype = _dtype_enum(output_dtype) if output_dtype else None
        t = timeout if timeout is not None else client.timeout
        info = _with_retries(client, lambda: client._stub.CreateSession(
            req, timeout=t))
        return cls(client, info, wire_dtype, out_dtype, timeout)

    # --- calls -------------------------------------------------------------

    def append(self, k, v, counts: Optional[Sequence[int]] = None):
        """Appends keys and values; returns the SessionInfo after it.

        k: [batch, heads, n, dim] and v: [batch, heads, n, dim_v] (n new
        tokens for every sequence); or, for different counts per sequence,
        lists of `batch` arrays [heads, n_b, dim] / [heads, n_b, dim_v]
        (counts is then taken from them; passing it too checks it).
        All or nothing on the server.
        """
        self._check_open()
        batch, heads, dim, dim_v = self.shape
        if isinstance(k, (list, tuple)) or isinstance(v, (list, tuple)):
            ks = [_array(f"k[{b}]", x, 3) for b, x in enumerate(k)]
            vs = [_array(f"v[{b}]", x, 3) for b, x in enumerate(v)]
            if len(ks) != batch or len(vs) != batch:
                raise ValueError(f"k, v: need {batch} per-sequence arrays, "
                                 f"got {len(ks)} and {len(vs)}")
            got = [x.shape[1] for x in ks]
            if counts is not None and list(counts) != got:
                raise ValueError(
                    f"counts: {list(counts)} != the arrays' {got}")
            counts = got
            for b in range(batch):
                if (ks[b].shape != (heads, got[b], dim)
                        or vs[b].shape != (heads, got[b], dim_v)):
                    raise ValueError(
                        f"sequence {b}: k {ks[b].shape}, v {vs[b].shape}; "
                        f"need ({heads}, n, {dim}) and ({heads}, n, {dim_v})")
            kb = b"".join(bytes(_to_wire(x, self._dtype)) for x in ks)
            vb = b"".join(bytes(_to_wire(x, self._dtype)) for x in vs)
        else:
            k, v = _array("k", k, 4), _array("v", v, 4)
            n = k.shape[2]
            if (k.shape != (batch, heads, n, dim)
                    or v.shape != (batch, heads, n, dim_v)):
                raise ValueError(
                    f"k {k.shape}, v {v.shape}: need ({batch}, {heads}, n, "
                    f"{dim}) and ({batch}, {heads}, n, {dim_v})")
            if counts is not None and list(counts) != [n]:
                raise ValueError(f"counts: {list(counts)} != [{n}]")
            counts = [n]
            kb = bytes(_to_wire(k, self._dtype))
            vb = bytes(_to_wire(v, self._dtype))
        header = pb.AppendKVRequest(header=pb.AppendKVHeader(
            session_id=self.id, dtype=self._dtype,
            counts=[int(c) for c in counts]))
        chunk = self._client.chunk_bytes

        attempts, first_failure = 0, None
        while True:
            attempts += 1
            sent = {"all": False}

            def messages() -> Iterator[Any]:
                yield header
                for name, data in ((pb.TENSOR_NAME_K, kb),
                                   (pb.TENSOR_NAME_V, vb)):
                    for off in range(0, len(data), chunk):
                        yield pb.AppendKVRequest(chunk=pb.TensorChunk(
                            tensor=name, offset=off,
                            data=data[off:off + chunk]))
                # gRPC half-closes after the last message: from here the
                # server may apply the append.
                sent["all"] = True

            try:
                return self._client._stub.AppendKV(messages(),
                                                   timeout=self._timeout)
            except grpc.RpcError as e:
                err = _error_from_rpc(e)
                if sent["all"]:
                    raise err from None
                first_failure = first_failure or time.monotonic()
                wait = self._client._retry_delay(err.code(), attempts,
                                                 first_failure)
                if wait is None:
                    raise err from None
            time.sleep(wait)

    def attend(self, q, see_all: bool = False, return_stats: bool = False):
        """Queries q [batch, heads, seq_q, dim] attend to the stored keys:
        causal relative to each sequence's length L (row i sees keys
        j <= L - seq_q + i), or every key with see_all. Returns the float32
        output [batch, heads, seq_q, dim_v] (and the stats dict, with
        session_lengths and incremental, when return_stats)."""
        self._check_open()
        enc = self._encode(q, None, None, see_all)
        return self._run(enc, retry=True, return_stats=return_stats)

    def step(self, q, k, v, return_stats: bool = False):
        """A decode step: k [batch, heads, seq_q, dim] and v [..., dim_v]
        are appended, then q [batch, heads, seq_q, dim] attends causally,
        in one request. Never retried (see the module docstring)."""
        self._check_open()
        enc = self._encode(q, k, v, False)
        return self._run(enc, retry=False, return_stats=return_stats)

    def info(self):
        """GetSession: a SessionInfo (lengths, kv_bytes, state_bytes,
        held_bytes, idle_seconds, limits, appends, steps, refits)."""
        self._check_open()
        req = pb.GetSessionRequest(session_id=self.id)
        return _with_retries(self._client, lambda: self._client._stub
                             .GetSession(req, timeout=self._timeout))

    def close(self) -> Optional[int]:
        """Deletes the session on the server; returns the bytes it freed (0
        when a retry found it already deleted; None when already closed).
        Closed afterwards whatever the outcome (a session whose delete
        failed is evicted after its TTL)."""
        if self._closed:
            return None
        self._closed = True
        req = pb.DeleteSessionRequest(session_id=self.id)
        tries = {"n": 0}

        def delete():
            tries["n"] += 1
            try:
                return self._client._stub.DeleteSession(
                    req, timeout=self._timeout).freed_bytes
            except grpc.RpcError as e:
                if tries["n"] > 1 and e.code() == grpc.StatusCode.NOT_FOUND:
                    return 0
                raise

        return _with_retries(self._client, delete)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def created(self):
        """The server's answer to CreateSession (limits, shape, settings)."""
        return self._created

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        # A session already gone (evicted past its TTL, deleted elsewhere)
        # is the state close() wants: not an error of the block.
        try:
            self.close()
        except AttendError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def __repr__(self) -> str:
        return (f"Session(id={self.id!r}, shape={self.shape}, "
                f"closed={self._closed})")

    # --- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise AttendError(grpc.StatusCode.FAILED_PRECONDITION,
                              f"session {self.id}: closed")

    def _encode(self, q, k, v, see_all: bool) -> _SessionEncoded:
        batch, heads, dim, dim_v = self.shape
        q = _array("q", q, 4)
        n = q.shape[2]
        if q.shape != (batch, heads, n, dim) or n == 0:
            raise ValueError(f"q {q.shape}: need ({batch}, {heads}, "
                             f"seq_q > 0, {dim})")
        header = pb.RequestHeader(dtype=self._dtype)
        if self._output_dtype is not None:
            header.output_dtype = self._output_dtype
        header.shape.batch, header.shape.heads = batch, heads
        header.shape.seq_q, header.shape.dim = n, dim
        header.shape.dim_v = dim_v
        header.session.session_id = self.id
        header.session.see_all = bool(see_all)
        tensors = [(pb.TENSOR_NAME_Q, _to_wire(q, self._dtype))]
        if k is not None:
            k, v = _array("k", k, 4), _array("v", v, 4)
            if k.shape != (batch, heads, n, dim) or v.shape != (batch, heads,
                                                                n, dim_v):
                raise ValueError(
                    f"k {k.shape}, v {v.shape}: need ({batch}, {heads}, {n}, "
                    f"{dim}) and ({batch}, {heads}, {n}, {dim_v})")
            header.session.append = True
            tensors += [(pb.TENSOR_NAME_K, _to_wire(k, self._dtype)),
                        (pb.TENSOR_NAME_V, _to_wire(v, self._dtype))]
        return _SessionEncoded(header, tensors, self._client._next_id())

    def _run(self, enc: _SessionEncoded, retry: bool, return_stats: bool):
        attempts, first_failure = 0, None
        while True:
            attempts += 1
            result = None
            for r, _ in _attend_stream(
                    self._client._stub, _Source([enc]), max_in_flight=1,
                    chunk_bytes=self._client.chunk_bytes,
                    timeout=self._timeout, next_id=self._client._next_id,
                    state={}):
                result = r
            if result is None:  # a stream that ended without a word
                result_error = AttendError(
                    grpc.StatusCode.UNAVAILABLE,
                    "the Attend stream ended before the response",
                    enc.request_id)
            else:
                result_error = result.error
            if result_error is None:
                return ((result.output, result.stats) if return_stats
                        else result.output)
            if not retry:
                raise result_error
            first_failure = first_failure or time.monotonic()
            wait = self._client._retry_delay(result_error.code(), attempts,
                                             first_failure)
            if wait is None:
                raise result_error
            time.sleep(wait)


def _with_retries(client, call):
    """call() (an idempotent unary call) until it succeeds or the Client's
    retry policy says stop; errors as AttendError."""
    attempts, first_failure = 0, None
    while True:
        attempts += 1
        try:
            return call()
        except grpc.RpcError as e:
            err = _error_from_rpc(e)
            first_failure = first_failure or time.monotonic()
            wait = client._retry_delay(err.code(), attempts, first_failure)
            if wait is None:
                raise err from None
        time.sleep(wait)
