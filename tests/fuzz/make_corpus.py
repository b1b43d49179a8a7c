#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/<target>/.

Seeds are small valid and near-valid inputs, one idea each, named
seed-<what>; the script replaces every seed-* file and leaves the others
(regress-*: inputs that once crashed a target, kept as regression tests)
alone. Deterministic: rerunning it changes nothing.

Run from the repository root (needs numpy and the Python client's protobuf
stubs, which generate themselves on first import; grpcio-tools):

    PYTHONPATH=client/python python3 tests/fuzz/make_corpus.py
"""

from __future__ import annotations

import io
import pathlib
import struct

import numpy as np

from scatterbrain_client._stubs import load

pb, _ = load()
CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"


def write(target: str, seeds: dict[str, bytes]) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed-*"):
        old.unlink()
    for name, data in seeds.items():
        (d / f"seed-{name}").write_bytes(data)


# --- request: length-prefixed AttendRequest messages --------------------------

def records(*messages) -> bytes:
    out = b""
    for m in messages:
        b = m.SerializeToString()
        out += struct.pack("<H", len(b)) + b
    return out


def header(rid="r", method=pb.METHOD_EXACT, shape=(1, 1, 4, 4, 8, 8),
           dtype=pb.DTYPE_FLOAT32, **kw):
    h = pb.RequestHeader(request_id=rid, dtype=dtype)
    h.settings.method = method
    h.shape.batch, h.shape.heads, h.shape.seq_q, h.shape.seq_k, \
        h.shape.dim, h.shape.dim_v = shape
    for k, v in kw.items():
        if k == "key_lengths":
            h.key_lengths.extend(v)
        elif k == "output_dtype":
            h.output_dtype = v
        else:
            setattr(h.settings, k, v)
    return pb.AttendRequest(header=h)


def chunk(rid, tensor, offset, data):
    return pb.AttendRequest(chunk=pb.TensorChunk(
        request_id=rid, tensor=tensor, offset=offset, data=data))


def tensors(shape, dtype=np.float32, seed=0, scale=1.0):
    b, h, sq, sk, d, dv = shape
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * scale).astype(dtype).tobytes()
            for s in ((b, h, sq, d), (b, h, sk, d), (b, h, sk, dv))]


def upload(rid, data, split=None):
    """Chunks of q, k, v in order; `split` bytes each (None: whole)."""
    out = []
    for t, blob in zip((pb.TENSOR_NAME_Q, pb.TENSOR_NAME_K,
                        pb.TENSOR_NAME_V), data):
        step = split or max(len(blob), 1)
        for off in range(0, len(blob), step):
            out.append(chunk(rid, t, off, blob[off:off + step]))
    return out


def request_seeds() -> dict[str, bytes]:
    s = (1, 1, 4, 4, 8, 8)
    f16 = pb.DTYPE_FLOAT16
    seeds = {
        "exact-f32": records(header(), *upload("r", tensors(s))),
        "exact-f16-split-elements": records(
            header(dtype=f16, output_dtype=pb.DTYPE_BFLOAT16),
            *upload("r", tensors(s, np.float16), split=7)),
        "scatterbrain-lsh": records(
            header(method=pb.METHOD_SCATTERBRAIN, shape=(1, 2, 8, 8, 4, 4),
                   num_features=8, bucket_size=4, num_hashes=2,
                   calibration_rows=2, seed=3),
            *upload("r", tensors((1, 2, 8, 8, 4, 4), seed=1))),
        "scatterbrain-both-causal-ragged": records(
            header(method=pb.METHOD_SCATTERBRAIN, shape=(2, 1, 6, 6, 4, 4),
                   sparse=pb.SPARSE_SUPPORT_BOTH, window=2, bucket_size=2,
                   num_features=4, causal=True, key_lengths=[6, 3],
                   estimator=pb.ESTIMATOR_UNBIASED),
            *upload("r", tensors((2, 1, 6, 6, 4, 4), seed=2), split=16)),
        "performer-bf16": records(
            header(method=pb.METHOD_PERFORMER, dtype=pb.DTYPE_BFLOAT16,
                   num_features=16),
            *upload("r", [(np.frombuffer(t, np.uint32) >> 16)
                          .astype(np.uint16).tobytes()
                          for t in tensors(s, seed=4)])),
        "lsh-crosspolytope-smyrf": records(
            header(method=pb.METHOD_LSH, shape=(1, 1, 8, 8, 4, 4),
                   lsh_hash=pb.LSH_HASH_CROSSPOLYTOPE,
                   lsh_transform=pb.LSH_TRANSFORM_SMYRF, bucket_size=2,
                   hash_projections=2),
            *upload("r", tensors((1, 1, 8, 8, 4, 4), seed=5))),
        "local-cross-attention": records(
            header(method=pb.METHOD_LOCAL, shape=(1, 1, 3, 5, 4, 2),
                   window=2, scale=0.5),
            *upload("r", tensors((1, 1, 3, 5, 4, 2), seed=6))),
        "two-interleaved-one-cancelled": records(
            header("a"), header("b"),
            *[m for pair in zip(upload("a", tensors(s)),
                                upload("b", tensors(s, seed=9)))
              for m in pair][:5],
            pb.AttendRequest(cancel=pb.CancelRequest(request_id="b")),
            *upload("a", tensors(s))[3:]),
        "large-values": records(
            header(method=pb.METHOD_SCATTERBRAIN, num_features=4,
                   bucket_size=2),
            *upload("r", tensors(s, seed=7, scale=1e18))),
        # Near-valid: each is refused in one way.
        "nan-in-q": records(
            header(), *upload("r", [b"\x00\x00\xc0\x7f" + tensors(s)[0][4:],
                                    *tensors(s)[1:]])),
        "wrong-offset": records(header(), chunk("r", pb.TENSOR_NAME_Q, 4,
                                                b"\x00" * 16)),
        "past-the-end": records(header(), chunk("r", pb.TENSOR_NAME_Q, 0,
                                                b"\x00" * 200)),
        "unknown-tensor": records(header(), chunk("r", pb.TENSOR_NAME_OUTPUT,
                                                  0, b"\x00" * 4)),
        "chunk-before-header": records(chunk("r", pb.TENSOR_NAME_Q, 0, b"")),
        "duplicate-id": records(header(), header(), *upload("r", tensors(s))),
        "no-id": records(header(rid="")),
        "dim-zero": records(header(shape=(1, 1, 4, 4, 0, 8))),
        "seq-over-limit": records(header(shape=(1, 1, 1000, 4, 8, 8))),
        "bytes-over-limit": records(header(shape=(64, 8, 64, 64, 64, 64))),
        "odd-num-features": records(header(method=pb.METHOD_PERFORMER,
                                           num_features=3)),
        "unknown-method": records(header(method=42)),
        "key-lengths-mismatch": records(header(key_lengths=[1, 2])),
        "garbage-after-header": records(header()) + b"\x05\x00\xff\xff\xff\xff\xff",
    }
    return seeds


# --- npy: .npy files ------------------------------------------------------------

def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_header(dict_text: str, version=1) -> bytes:
    body = dict_text.encode()
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(body)) + body


def npy_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    v2 = npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n",
                    version=2) + np.float32([1, 2]).tobytes()
    return {
        "f4-rank4": npy(a),
        "f2-rank2": npy(rng.standard_normal((3, 5)).astype(np.float16)),
        "f4-scalar": npy(np.float32(3.5)),
        "f4-empty": npy(np.zeros((2, 0, 3), np.float32)),
        "v2-header": v2,
        "v3-header": v2[:6] + b"\x03" + v2[7:],
        "long-suffix": npy_header("{'descr': '<f4', 'fortran_order': False, "
                                  "'shape': (1L, 2L), }") + bytes(8),
        "extra-key": npy_header("{'descr': '<f4', 'fortran_order': False, "
                                "'shape': (1,), 'x': [1, (2, 3)], }") + bytes(4),
        "fortran": npy(np.asfortranarray(rng.standard_normal((2, 3))
                                         .astype(np.float32))),
        "big-endian": npy(np.float32([1, 2]).astype(">f4")),
        "float64": npy(np.float64([1, 2])),
        "structured": npy(np.zeros(2, dtype=[("a", "<f4")])),
        "truncated-data": npy(a)[:-4],
        "extra-data": npy(a) + b"\x00\x00\x00\x00",
        "truncated-header": npy(a)[:20],
        "bad-magic": b"\x93NUMPX" + npy(a)[6:],
        "version-9": npy(a)[:6] + b"\x09" + npy(a)[7:],
        "huge-shape": npy_header("{'descr': '<f4', 'fortran_order': False, "
                                 "'shape': (100000000000, 100000000000), }"),
        "header-length-too-large": b"\x93NUMPY\x02\x00\xff\xff\xff\x00",
        "escaped-string": npy_header("{'descr': '<f\\4', 'fortran_order': False, "
                                     "'shape': (1,), }") + bytes(4),
    }


# --- settings: MethodSettings ------------------------------------------------------

def settings_seeds() -> dict[str, bytes]:
    S = pb.MethodSettings
    full = S(method=pb.METHOD_SCATTERBRAIN, num_features=64, bucket_size=32,
             num_hashes=2, hash_projections=4, window=16,
             sparse=pb.SPARSE_SUPPORT_BOTH, estimator=pb.ESTIMATOR_UNBIASED,
             calibration_rows=8, lsh_hash=pb.LSH_HASH_CROSSPOLYTOPE,
             lsh_transform=pb.LSH_TRANSFORM_SMYRF, kmeans_iterations=5,
             causal=True, scale=0.125, seed=12345,
             precision=pb.PRECISION_TF32)
    nan_scale = S(method=pb.METHOD_EXACT)
    nan_scale.scale = float("nan")
    seeds = {f"method-{m}": S(method=m).SerializeToString()
             for m in range(1, 6)}
    seeds.update({
        "all-fields": full.SerializeToString(),
        "method-unset": S(num_features=8).SerializeToString(),
        "method-unknown": S(method=99).SerializeToString(),
        "sparse-unknown": S(method=pb.METHOD_SCATTERBRAIN,
                            sparse=7).SerializeToString(),
        "counts-zero": S(method=pb.METHOD_SCATTERBRAIN, num_features=0,
                         bucket_size=0, num_hashes=0, window=0,
                         hash_projections=0).SerializeToString(),
        "counts-huge": S(method=pb.METHOD_LSH, bucket_size=0xffffffff,
                         num_hashes=0x80000000).SerializeToString(),
        "scale-nan": nan_scale.SerializeToString(),
        "scale-negative": S(method=pb.METHOD_EXACT,
                            scale=-1.0).SerializeToString(),
        "odd-features": S(method=pb.METHOD_PERFORMER,
                          num_features=7).SerializeToString(),
    })
    return seeds


# --- dtype: a dtype byte, then elements -------------------------------------------

def dtype_seeds() -> dict[str, bytes]:
    special = np.float32([0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 65519.99,
                          1e-8, 6e-8, 3.3895314e38, 3.4e38, np.inf, -np.inf,
                          np.nan, 1.4e-45]).tobytes()
    halves = np.uint16([0x0000, 0x8000, 0x0001, 0x03ff, 0x7bff, 0x7c00,
                        0xfc00, 0x7c01, 0x7e00, 0xffff]).tobytes()
    return {
        "f32-special": b"\x00" + special,
        "f16-special": b"\x01" + halves,
        "bf16-special": b"\x02" + halves,
        "f16-from-f32-special": b"\x01" + special,
        "bf16-from-f32-special": b"\x02" + special,
        "odd-length": b"\x01\x00\x3c\x00",
    }


if __name__ == "__main__":
    write("request", request_seeds())
    write("npy", npy_seeds())
    write("settings", settings_seeds())
    write("dtype", dtype_seeds())
