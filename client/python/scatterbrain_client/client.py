"""Client of scatterbrain.v1.AttentionService (see proto/scatterbrain/v1).

Tensors are numpy arrays [batch, heads, seq, dim]; they travel as
little-endian float32, float16 or bfloat16 bytes, cut into chunks of at
most `chunk_bytes` on the Attend stream, so any size fits. Outputs come
back as float32 arrays [batch, heads, seq_q, dim_v].

This module holds the Client (its channel, the retries of UNAVAILABLE
with backoff, attend, attend_many, health, info, sessions) and the module-level
attend() on a shared Client per target. The pieces it drives live beside
it: _wire (conversions), _request (Request, encoding, AttendResult),
_stream (one Attend stream), _session (server-held K/V sessions),
_health, _errors; the public names are
imported here too, so `scatterbrain_client.client` still offers them.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import grpc

from . import _channel, _stubs
from ._errors import AttendError, _error_from_rpc
from ._health import _health_check
from ._request import AttendResult, Request, _Encoded
from ._session import Session
from ._stream import _attend_stream, _Source
from ._wire import HeadPlan, _from_wire, stats_to_dict

pb, pb_grpc = _stubs.load()

DEFAULT_TARGET = "localhost:50051"
DEFAULT_CHUNK_BYTES = 1 << 20
# round_robin: calls spread over every address of the target (a list of
# endpoints, or a dns:/// name resolving to several).
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# Codes a request is sent again for (Client's docstring says when).
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class Client:
    """A channel to a scatterbrain_server. Thread-safe; use as a context
    manager or call close().

    target: "host:port", several "host:port,host:port" (IP literals,
    an ipv4:/// list) or any gRPC target URI ("dns:///name:port"); calls
    are balanced round robin over every address (pass your own
    grpc.lb_policy_name / grpc.service_config in `options` to override).

    Retries: UNAVAILABLE (a server down or restarting, a stream broken
    before the answer), and CANCELLED that this client did not ask for (a
    server shutting down cancels the calls it has not started), are
    retried, the whole request sent again (the computation is
    deterministic), waiting `initial_backoff` seconds, x2 per try up to
    `max_backoff`, +-20% jitter, while the retry starts within
    `retry_budget` seconds of the request's first failure and, when
    `max_attempts` > 0, fewer than `max_attempts` tries were made (1: no
    retry; 0: the budget decides). The 5 s budget outlasts a server
    restart (~1.2 s on a loaded 2-core machine; the old 5 tries, ~0.9 s of
    waits, did not). The channel reconnects on the same backoff (gRPC's own
    starts at 1 s and grows to 2 min; pass grpc.initial_reconnect_backoff_ms
    / grpc.max_reconnect_backoff_ms in `options` to override). attend_many
    resubmits its unanswered requests (same ids) on a new stream. Other
    codes are never retried. `timeout` is per try.

    Security (see _channel.py): `tls=True` or any tls_* option makes the
    channel TLS; `tls_ca_file` is the PEM bundle that verifies the server
    (default: gRPC's roots), `tls_cert_file` / `tls_key_file` this client's
    certificate for a server that requires mutual TLS, `tls_server_name`
    the name the server's certificate carries when it is not the target's
    host. `auth_token` (or `auth_token_file`, its first token) is sent as
    `authorization: Bearer <token>` on every call, health included.
    """

    def __init__(self, target: str = DEFAULT_TARGET, *,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 timeout: Optional[float] = None,
                 max_message_bytes: int = 256 << 20,
                 max_attempts: int = 0,
                 retry_budget: float = 5.0,
                 initial_backoff: float = 0.05,
                 max_backoff: float = 1.0,
                 options: Sequence = (),
                 tls: bool = False,
                 tls_ca_file: Optional[str] = None,
                 tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None,
                 tls_server_name: Optional[str] = None,
                 auth_token: Optional[str] = None,
                 auth_token_file: Optional[str] = None):
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes: must be > 0")
        if max_attempts < 0:
            raise ValueError("max_attempts: must be >= 0 (0: the budget alone)")
        if min(retry_budget, initial_backoff, max_backoff) < 0:
            raise ValueError(
                "retry_budget, initial_backoff, max_backoff: must be >= 0")
        self.target = target
        self.chunk_bytes = int(chunk_bytes)
        self.timeout = timeout
        self.max_attempts = int(max_attempts)
        self.retry_budget = float(retry_budget)
        self.initial_backoff = float(initial_backoff)
        self.max_backoff = float(max_backoff)
        self._closed = False
        opts = [("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes)]
        uri = target.strip()
        if "," in uri and "://" not in uri and not uri.startswith(
                ("ipv4:", "ipv6:", "dns:", "unix:")):
            hosts = [h.strip().replace("localhost", "127.0.0.1")
                     for h in uri.split(",") if h.strip()]
            uri = "ipv4:///" + ",".join(hosts)
        own = {name for name, _ in options}
        if not own & {"grpc.lb_policy_name", "grpc.service_config"}:
            opts.append(("grpc.service_config", _ROUND_ROBIN))
        # Reconnect on the retries' backoff (see the class docstring).
        for name, seconds in (("grpc.initial_reconnect_backoff_ms",
                               self.initial_backoff),
                              ("grpc.max_reconnect_backoff_ms",
                               self.max_backoff)):
            if name not in own:
                opts.append((name, max(1, int(seconds * 1000))))
        opts.extend(options)
        self._channel = _channel.make_channel(
            uri, opts, tls=tls, tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file, tls_key_file=tls_key_file,
            tls_server_name=tls_server_name, auth_token=auth_token,
            auth_token_file=auth_token_file)
        self._stub = pb_grpc.AttentionServiceStub(self._channel)
        self._health = _health_check(self._channel)
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def _next_id(self) -> str:
        """A fresh request id: "r1", "r2", ... (unique per Client)."""
        with self._ids_lock:
            return f"r{next(self._ids)}"

    def _backoff(self, retry: int) -> float:
        """Seconds before retry number `retry` (1 = the first)."""
        d = min(self.initial_backoff * (2 ** (retry - 1)), self.max_backoff)
        return d * random.uniform(0.8, 1.2)

    def _retry_delay(self, code, attempts: int,
                     first_failure: float) -> Optional[float]:
        """Seconds to wait before trying again a request that failed with
        `code` after `attempts` tries, its first failure at
        `first_failure` (time.monotonic()); None: not retried."""
        if code not in _RETRIED or self._closed:
            return None
        if self.max_attempts and attempts >= self.max_attempts:
            return None
        wait = self._backoff(attempts)
        if time.monotonic() + wait - first_failure > self.retry_budget:
            return None
        return wait

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel connects; grpc.FutureTimeoutError if not."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def health(self, service: str = "", timeout: Optional[float] = 5.0) -> str:
        """grpc.health.v1 status: "SERVING", "NOT_SERVING", ..."""
        return self._health(service, timeout=timeout)

    def info(self, timeout: Optional[float] = 5.0):
        """The server's v1.ServerInfo (version, backends, devices, limits)."""
        return self._stub.GetServerInfo(pb.GetServerInfoRequest(),
                                        timeout=timeout)

    def create_session(self, *, dim: int, heads: int = 1, batch: int = 1,
                       method: str = "scatterbrain", **kwargs) -> Session:
        """A server-held K/V session (Session.create's arguments: dim_v,
        kv_dtype, ttl, dtype, output_dtype, timeout and the method's
        settings). Close it, or use Client.session in a `with` block."""
        return Session.create(self, dim=dim, heads=heads, batch=batch,
                              method=method, **kwargs)

    def session(self, *, dim: int, heads: int = 1, batch: int = 1,
                method: str = "scatterbrain", **kwargs) -> Session:
        """create_session, for `with client.session(...) as s:` (the
        session is deleted on the server when the block ends)."""
        return self.create_session(dim=dim, heads=heads, batch=batch,
                                   method=method, **kwargs)

    def attend(self, q, k, v, method: str = "scatterbrain", *,
               dtype: str = "float32", output_dtype: Optional[str] = None,
               causal: bool = False, key_lengths: Optional[Sequence[int]] = None,
               return_stats: bool = False, unary: bool = False,
               timeout: Optional[float] = None, **settings):
        """Attention of q, k, v on the server; a float32 numpy array.

        method: exact | performer | lsh | local | scatterbrain. settings:
        the other fields of v1.MethodSettings by name (num_features,
        bucket_size, num_hashes, hash_projections, window, sparse,
        estimator, calibration_rows, lsh_hash, lsh_transform,
        kmeans_iterations, scale, seed, global_keys, target_error, ...),
        enum ones by value name (sparse="both", sparse="auto",
        lsh_transform="smyrf"); unset: the server's defaults, those of
        `scatterbrain_cli --help` but sparse (the server's --default_sparse,
        auto on the cpu backend). target_error (scatterbrain, in [0, 1)):
        per head the cheapest budget whose estimated error bound meets it,
        else exact; stats["head_plans"] (HeadPlan) and stats["error_bound"]
        say what was chosen. dtype: of q, k, v on
        the wire (float32 | float16 | bfloat16); output_dtype: of the
        output on the wire (default: dtype). return_stats: return (output,
        stats dict). unary: one AttendUnary message instead of the chunked
        stream.
        Raises AttendError (a grpc.RpcError) with the server's code and
        message.
        """
        req = Request(q, k, v, method, dtype, output_dtype, causal,
                      key_lengths, None, settings)
        if unary:
            first_failure = None
            for attempt in itertools.count(1):
                try:
                    out, stats = self._attend_unary(req, timeout)
                    break
                except AttendError as e:
                    if first_failure is None:
                        first_failure = time.monotonic()
                    # This client never cancels a unary call: a CANCELLED
                    # is the server's.
                    wait = self._retry_delay(e.code(), attempt, first_failure)
                    if wait is None:
                        raise
                time.sleep(wait)
        else:
            # Encoded here, so bad arguments raise ValueError / TypeError.
            enc = _Encoded(req, self._next_id())
            results = list(self.attend_many([enc], max_in_flight=1,
                                            timeout=timeout))
            out, stats = results[0].unwrap(), results[0].stats
        return (out, stats) if return_stats else out

    def _attend_unary(self, req: Request, timeout):
        enc = _Encoded(req, req.request_id or "")
        msg = pb.AttendUnaryRequest(header=enc.header)
        msg.q, msg.k, msg.v = (bytes(b) for _, b in enc.tensors)
        try:
            resp = self._stub.AttendUnary(
                msg, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as e:
            raise _error_from_rpc(e) from None
        s = resp.header.shape
        out = _from_wire(resp.output, resp.header.dtype,
                         (s.batch, s.heads, s.seq_q, s.dim_v))
        if not out.flags.writeable:  # a view of the response's bytes
            out = out.copy()
        return out, stats_to_dict(resp.header.stats)

    def attend_many(self, requests: Iterable, *, max_in_flight: int = 8,
                    timeout: Optional[float] = None) -> Iterator[AttendResult]:
        """Sends many requests on one Attend stream; yields AttendResult in
        completion order, each tagged with its request_id.

        requests: Request objects, dicts of attend() arguments, (q, k, v) or
        (q, k, v, kwargs) tuples, consumed lazily; at most `max_in_flight`
        are sent and not yet answered. A failed request yields a result with
        .error set and does not stop the others; a failure of the stream
        itself fails every request in flight. Ids: Request.request_id, or
        "r1", "r2", ... (unique per Client).
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight: must be >= 1")
        source = _Source(requests)
        attempts: Dict[str, int] = {}
        first_failure: Dict[str, float] = {}  # the retry budget runs from it
        idle_failures = 0  # broken streams in a row that answered nothing
        idle_since = 0.0   # when the first of them broke
        while True:
            state: Dict[str, Any] = {}
            retry: List[_Encoded] = []
            waits: List[float] = []
            progress = False
            for result, enc in _attend_stream(
                    self._stub, source, max_in_flight=max_in_flight,
                    chunk_bytes=self.chunk_bytes,
                    timeout=timeout if timeout is not None else self.timeout,
                    next_id=self._next_id, state=state):
                rid = result.request_id
                if result.error is not None and enc is not None:
                    first = first_failure.setdefault(rid, time.monotonic())
                    wait = self._retry_delay(result.error.code(),
                                             attempts.get(rid, 1), first)
                    if wait is not None:
                        attempts[rid] = attempts.get(rid, 1) + 1
                        retry.append(enc)
                        waits.append(wait)
                        continue
                attempts.pop(rid, None)
                first_failure.pop(rid, None)
                progress = progress or result.ok
                yield result
            err = state.get("error")
            broken = err is not None and err.code() in _RETRIED
            if not retry and (not broken or source.done()):
                return
            if progress or idle_failures == 0:
                idle_since = time.monotonic()
            idle_failures = 0 if progress else idle_failures + 1
            if not retry and idle_failures:
                wait = self._retry_delay(err.code(), idle_failures, idle_since)
                if wait is None:
                    return  # the rest of `requests` cannot be sent
                waits.append(wait)
            source.push_front(retry)
            time.sleep(max(waits, default=0.0))


_clients: Dict[str, Client] = {}  # by target
_clients_lock = threading.Lock()


def _shared_client(target: str) -> Client:
    with _clients_lock:
        c = _clients.get(target)
        if c is None:
            c = _clients[target] = Client(target)
        return c


def attend(q, k, v, method: str = "scatterbrain", *,
           target: str = DEFAULT_TARGET, dtype: str = "float32",
           causal: bool = False, key_lengths: Optional[Sequence[int]] = None,
           return_stats: bool = False, **settings):
    """Attention on the server at `target`; see Client.attend.

    Reuses one channel per target across calls.
    """
    return _shared_client(target).attend(
        q, k, v, method, dtype=dtype, causal=causal, key_lengths=key_lengths,
        return_stats=return_stats, **settings)
