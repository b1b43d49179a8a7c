"""attend_many's items: Request in, AttendResult out, and _Encoded between.

Request is one call's arguments as a value; _Encoded is it on the wire (the
RequestHeader and the q, k, v bytes, cut into AttendRequest messages of at
most `chunk_bytes`). Encoding checks the arguments here, so bad ones raise
ValueError / TypeError before anything is sent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np

from . import _stubs
from ._errors import AttendError
from ._wire import _dtype_enum, _settings_proto, _to_wire

pb, _ = _stubs.load()


@dataclasses.dataclass
class Request:
    """One attention call: the arguments of Client.attend as a value.

    q: [batch, heads, seq_q, dim]; k: [batch, heads, seq_k, dim];
    v: [batch, heads, seq_k, dim_v]. `settings` holds the method's keyword
    settings (num_features, bucket_size, window, sparse, scale, seed, ...).
    """
    q: Any
    k: Any
    v: Any
    method: str = "scatterbrain"
    dtype: str = "float32"
    output_dtype: Optional[str] = None
    causal: bool = False
    key_lengths: Optional[Sequence[int]] = None
    request_id: Optional[str] = None
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, q, k, v, method: str = "scatterbrain", **kwargs) -> "Request":
        """Request(q, k, v, method, ...) with settings as keyword arguments."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"settings"}
        own = {n: kwargs.pop(n) for n in list(kwargs) if n in fields}
        return cls(q, k, v, method, settings=kwargs, **own)


def _as_request(item) -> Request:
    if isinstance(item, Request):
        return item
    if isinstance(item, dict):
        return Request.of(**item)
    if isinstance(item, (tuple, list)):
        if len(item) == 4 and isinstance(item[3], dict):
            return Request.of(*item[:3], **item[3])
        return Request.of(*item)
    raise TypeError("attend_many: each item is a Request, a dict of attend() "
                    "arguments, (q, k, v) or (q, k, v, kwargs)")


class _Encoded:
    """A request as header + wire bytes."""

    def __init__(self, req: Request, request_id: str):
        arrays = []
        for name, x in (("q", req.q), ("k", req.k), ("v", req.v)):
            a = np.asarray(x)
            if a.ndim != 4:
                raise ValueError(f"{name}: expected 4 dimensions [batch, heads, "
                                 f"seq, dim], got shape {a.shape}")
            arrays.append(a)
        q, k, v = arrays
        self.request_id = request_id
        dtype = _dtype_enum(req.dtype)
        header = pb.RequestHeader(request_id=request_id)
        header.settings.CopyFrom(
            _settings_proto(req.method, req.causal, req.settings))
        # The shape comes from q (batch, heads, seq_q, dim), k (seq_k) and v
        # (dim_v); inconsistent tensors are left for the server to reject by
        # their byte counts, naming the tensor.
        header.shape.batch, header.shape.heads = q.shape[0], q.shape[1]
        header.shape.seq_q, header.shape.dim = q.shape[2], q.shape[3]
        header.shape.seq_k, header.shape.dim_v = k.shape[2], v.shape[3]
        header.dtype = dtype
        if req.output_dtype is not None:
            header.output_dtype = _dtype_enum(req.output_dtype)
        if req.key_lengths is not None:
            header.key_lengths.extend(int(x) for x in req.key_lengths)
        self.header = header
        self.tensors = [(pb.TENSOR_NAME_Q, _to_wire(q, dtype)),
                        (pb.TENSOR_NAME_K, _to_wire(k, dtype)),
                        (pb.TENSOR_NAME_V, _to_wire(v, dtype))]

    def nbytes(self) -> int:
        return sum(len(b) for _, b in self.tensors)

    def messages(self, chunk_bytes: int) -> Iterator[Any]:
        yield pb.AttendRequest(header=self.header)
        for name, data in self.tensors:
            for off in range(0, len(data), chunk_bytes):
                yield pb.AttendRequest(chunk=pb.TensorChunk(
                    request_id=self.request_id, tensor=name, offset=off,
                    data=bytes(data[off:off + chunk_bytes])))


@dataclasses.dataclass
class AttendResult:
    """One completed request of attend_many: output and stats, or error."""
    request_id: str
    output: Optional[np.ndarray] = None   # float32 [batch, heads, seq_q, dim_v]
    stats: Optional[Dict[str, Any]] = None
    error: Optional[AttendError] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> np.ndarray:
        """The output, or raises the request's AttendError."""
        if self.error is not None:
            raise self.error
        return self.output
