"""What crosses the wire, converted: dtype names <-> DType, numpy arrays <->
little-endian tensor bytes, attend()'s keyword settings -> MethodSettings,
and Stats -> dict.

Plain functions over the generated messages, no channel or stream: the
request encoder, the stream driver and the unary call all go through them.
"""

from __future__ import annotations

import os
from typing import Any, Dict, NamedTuple, Optional, Sequence

import grpc
import numpy as np
from google.protobuf import descriptor

from . import _stubs
from ._errors import AttendError

pb, _ = _stubs.load()

_DTYPES = {
    "float32": pb.DTYPE_FLOAT32,
    "float16": pb.DTYPE_FLOAT16,
    "bfloat16": pb.DTYPE_BFLOAT16,
}
_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16",
                  "f16": "float16", "half": "float16", "bf16": "bfloat16"}
_DTYPE_BYTES = {pb.DTYPE_FLOAT32: 4, pb.DTYPE_FLOAT16: 2, pb.DTYPE_BFLOAT16: 2}


# --- dtype conversion ------------------------------------------------------

def _dtype_enum(name: str) -> int:
    key = _DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _DTYPES:
        raise ValueError(f"dtype: unknown '{name}' (float32|float16|bfloat16)")
    return _DTYPES[key]


def _to_wire(x: np.ndarray, dtype: int) -> memoryview:
    """Little-endian bytes of `x` in `dtype` (no copy when already so)."""
    if dtype == pb.DTYPE_FLOAT32:
        a = np.ascontiguousarray(x, dtype="<f4")
    elif dtype == pb.DTYPE_FLOAT16:
        a = np.ascontiguousarray(x, dtype="<f2")
    else:  # bfloat16: the top half of float32, rounded to nearest even
        u = np.ascontiguousarray(x, dtype="<f4").view("<u4")
        rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16
        nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        a = np.where(nan, (u >> 16) | np.uint32(0x40), rounded).astype("<u2")
    return memoryview(a).cast("B")


def _from_wire(buf, dtype: int, shape: Sequence[int]) -> np.ndarray:
    """float32 array of `shape` from little-endian bytes in `dtype`."""
    if dtype == pb.DTYPE_FLOAT32:
        a = np.frombuffer(buf, dtype="<f4").astype(np.float32, copy=False)
    elif dtype == pb.DTYPE_FLOAT16:
        a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
    elif dtype == pb.DTYPE_BFLOAT16:
        a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(
            np.float32)
    else:
        raise AttendError(grpc.StatusCode.INTERNAL,
                          f"server answered in unknown dtype {dtype}")
    return a.reshape(tuple(shape))


# --- settings --------------------------------------------------------------

# attend()'s keyword settings are the fields of MethodSettings, read off its
# descriptor, so a field added to the proto is a keyword with no edit here.
# method and causal are attend()'s own arguments, not keyword settings.
_SETTINGS_FIELDS = pb.MethodSettings.DESCRIPTOR.fields_by_name
_OWN_ARGUMENTS = ("method", "causal")
_FD = descriptor.FieldDescriptor
_CONVERSIONS = {  # cpp_type of a singular field -> conversion of its value
    _FD.CPPTYPE_INT32: int, _FD.CPPTYPE_INT64: int,
    _FD.CPPTYPE_UINT32: int, _FD.CPPTYPE_UINT64: int,
    _FD.CPPTYPE_FLOAT: float, _FD.CPPTYPE_DOUBLE: float,
    _FD.CPPTYPE_BOOL: bool, _FD.CPPTYPE_STRING: str,
}


def _enum_values(enum) -> Dict[str, int]:
    """An enum's values by name less the prefix all share, upper case:
    SparseSupport -> {"UNSPECIFIED": 0, "LSH": 1, "LOCAL": 2, "BOTH": 3}."""
    names = [v.name for v in enum.values]
    prefix = os.path.commonprefix(names)
    prefix = prefix[:prefix.rfind("_") + 1]
    return {v.name[len(prefix):]: v.number for v in enum.values}


_ENUM_VALUES = {f.name: _enum_values(f.enum_type)
                for f in _SETTINGS_FIELDS.values() if f.enum_type is not None}


def _is_repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6.31; label is gone in 7
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def _set_setting(s, name: str, value) -> None:
    """s.<name> = value, converted by the field's type: enum values by
    name ("lsh", "calibrated"), unsigned counts checked >= 0."""
    if name in _ENUM_VALUES:
        values = _ENUM_VALUES[name]
        number = values.get(str(value).upper())
        if number is None:
            choices = "|".join(n.lower() for n, v in values.items() if v != 0)
            raise ValueError(f"{name}: unknown '{value}' ({choices})")
        setattr(s, name, number)
        return
    field = _SETTINGS_FIELDS[name]
    convert = None if _is_repeated(field) else _CONVERSIONS.get(field.cpp_type)
    if convert is None:  # a message or repeated field: no keyword form yet
        raise TypeError(f"setting '{name}': not settable by keyword")
    if (field.cpp_type in (_FD.CPPTYPE_UINT32, _FD.CPPTYPE_UINT64)
            and int(value) < 0):
        raise ValueError(f"{name}: must be >= 0, got {value}")
    setattr(s, name, convert(value))


def _settings_proto(method: str, causal: bool, settings: Dict[str, Any]):
    """MethodSettings of attend()'s method, causal and keyword settings
    (None: unset). Unknown names raise TypeError, bad values ValueError."""
    s = pb.MethodSettings()
    _set_setting(s, "method", method)
    _set_setting(s, "causal", causal)
    for name, value in settings.items():
        if value is None:
            continue
        if name not in _SETTINGS_FIELDS or name in _OWN_ARGUMENTS:
            raise TypeError(f"unknown setting '{name}'")
        _set_setting(s, name, value)
    return s


# --- stats -----------------------------------------------------------------

class HeadPlan(NamedTuple):
    """How one (batch, head) slice was computed (v1.HeadPlan), when
    Scatterbrain chose per slice (sparse="auto", global_keys, target_error).
    sparse: "lsh" | "local" | "both"; exact: the error target made the slice
    exact attention (the other fields describe the last budget tried).
    support_mass, error_estimate, error_bound: None when not measured."""
    batch: int
    head: int
    exact: bool
    sparse: str
    num_features: int
    bucket_size: int
    window: int
    global_keys: int
    support_mass: Optional[float]
    error_estimate: Optional[float]
    error_bound: Optional[float]


_SPARSE_NAMES = {v: n.lower() for n, v in _ENUM_VALUES["sparse"].items()}


def _optional(msg, name: str) -> Optional[float]:
    return getattr(msg, name) if msg.HasField(name) else None


def _head_plan(h) -> HeadPlan:
    return HeadPlan(
        batch=h.batch, head=h.head, exact=h.exact,
        sparse=_SPARSE_NAMES.get(h.sparse, str(h.sparse)),
        num_features=h.num_features, bucket_size=h.bucket_size,
        window=h.window, global_keys=h.global_keys,
        support_mass=_optional(h, "support_mass"),
        error_estimate=_optional(h, "error_estimate"),
        error_bound=_optional(h, "error_bound"))


def stats_to_dict(stats) -> Dict[str, Any]:
    """v1.Stats as a dict; estimated_relative_error is None when not
    sampled, error_bound None without target_error; head_plans a list of
    HeadPlan (empty unless Scatterbrain chose per head)."""
    return {
        "queue_seconds": stats.queue_seconds,
        "compute_seconds": stats.compute_seconds,
        "batch_size": stats.batch_size,
        "dense_score_bytes": stats.dense_score_bytes,
        "workspace_bytes": stats.workspace_bytes,
        "memory_saved_bytes": stats.memory_saved_bytes,
        "estimated_relative_error": (stats.estimated_relative_error
                                     if stats.HasField("estimated_relative_error")
                                     else None),
        "denominator_guards": stats.denominator_guards,
        "fallbacks": stats.fallbacks,
        "backend": stats.backend,
        # Session requests: the session's lengths after the request, and
        # whether it ran on the incremental state (O(budget) per row).
        "session_lengths": list(stats.session_lengths),
        "incremental": stats.incremental,
        # Scatterbrain's per-head choices and, with target_error, the
        # request's estimated error bound; the cost in query-key
        # evaluations against exact attention's (0: not counted).
        "head_plans": [_head_plan(h) for h in stats.head_plans],
        "error_bound": _optional(stats, "error_bound"),
        "score_evaluations": stats.score_evaluations,
        "exact_score_evaluations": stats.exact_score_evaluations,
    }
