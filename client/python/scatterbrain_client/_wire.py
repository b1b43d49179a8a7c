"""What crosses the wire, converted: dtype names <-> DType, numpy arrays <->
little-endian tensor bytes, attend()'s keyword settings -> MethodSettings,
and Stats -> dict.

Plain functions over the generated messages, no channel or stream: the
request encoder, the stream driver and the unary call all go through them.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import grpc
import numpy as np

from . import _stubs
from ._errors import AttendError

pb, _ = _stubs.load()

# Method settings accepted as keyword arguments (MethodSettings fields).
_INT_SETTINGS = ("num_features", "bucket_size", "num_hashes",
                 "hash_projections", "window", "calibration_rows",
                 "kmeans_iterations")
_ENUM_SETTINGS = {
    # keyword: (proto enum, value prefix)
    "sparse": (pb.SparseSupport, "SPARSE_SUPPORT_"),
    "estimator": (pb.Estimator, "ESTIMATOR_"),
    "lsh_hash": (pb.LshHash, "LSH_HASH_"),
    "lsh_transform": (pb.LshTransform, "LSH_TRANSFORM_"),
}
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

def _settings_proto(method: str, causal: bool, settings: Dict[str, Any]):
    s = pb.MethodSettings()
    try:
        s.method = pb.Method.Value("METHOD_" + str(method).upper())
    except ValueError:
        raise ValueError(f"method: unknown '{method}' "
                         "(exact|performer|lsh|local|scatterbrain)") from None
    s.causal = bool(causal)
    for name, value in settings.items():
        if value is None:
            continue
        if name in _INT_SETTINGS:
            if int(value) < 0:
                raise ValueError(f"{name}: must be >= 0, got {value}")
            setattr(s, name, int(value))
        elif name in _ENUM_SETTINGS:
            enum, prefix = _ENUM_SETTINGS[name]
            try:
                setattr(s, name, enum.Value(prefix + str(value).upper()))
            except ValueError:
                raise ValueError(f"{name}: unknown value '{value}'") from None
        elif name == "scale":
            s.scale = float(value)
        elif name == "seed":
            s.seed = int(value)
        else:
            raise TypeError(f"unknown setting '{name}'")
    return s


# --- stats -----------------------------------------------------------------

def stats_to_dict(stats) -> Dict[str, Any]:
    """v1.Stats as a dict; estimated_relative_error is None when not sampled."""
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
    }
