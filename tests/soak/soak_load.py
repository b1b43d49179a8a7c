"""The soak test's well-formed load: a catalog of requests (every method,
every wire dtype, odd shapes, causal and padded keys, streamed, unary and
several on one stream), each answer checked against what it must be.

Exact and local answers are checked against a float64 numpy reference of
the same (wire-rounded) inputs: |out - ref| <= 1e-4 + rtol * |ref|, rtol
twice the unit roundoff of the output's wire dtype (0 for float32, 2^-10
for float16, 2^-7 for bfloat16): the server computes in float32 (errors
~1e-6 at these sizes) and then rounds the output to its wire dtype.
Performer, LSH and Scatterbrain are random but seeded: their answer must be
bit-for-bit the one the same request got before the abuse started (and
finite, of the right shape), whatever it was batched with.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np

import scatterbrain_client as sb
from scatterbrain_client import _wire

# Unit roundoff x 2 of the output's wire dtype (see the module docstring).
_RTOL = {"float32": 0.0, "float16": 2.0**-10, "bfloat16": 2.0**-7}
_ATOL = 1e-4


@dataclasses.dataclass
class Case:
    """One request of the catalog and how it is sent."""
    name: str
    method: str
    shape: tuple  # (batch, heads, seq_q, seq_k, dim, dim_v)
    dtype: str = "float32"
    output_dtype: Optional[str] = None
    causal: bool = False
    key_lengths: Optional[List[int]] = None
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    mode: str = "stream"  # stream | unary | many (4 copies on one stream)
    seed: int = 0
    q: Any = None
    k: Any = None
    v: Any = None
    expected: Any = None  # float64 reference, or the first answer

    def kwargs(self) -> Dict[str, Any]:
        kw = dict(method=self.method, dtype=self.dtype, causal=self.causal,
                  key_lengths=self.key_lengths, **self.settings)
        if self.output_dtype:
            kw["output_dtype"] = self.output_dtype
        return kw

    def out_dtype(self) -> str:
        return self.output_dtype or self.dtype


def _catalog() -> List[Case]:
    fast = dict(num_features=32, bucket_size=16, window=16, seed=11)
    return [
        Case("exact-f32", "exact", (1, 2, 33, 33, 16, 16)),
        Case("exact-f16-unary-causal-padded", "exact", (2, 1, 20, 31, 8, 8),
             dtype="float16", causal=True, key_lengths=[31, 25], mode="unary"),
        Case("exact-bf16-out-f32", "exact", (1, 3, 65, 65, 24, 24),
             dtype="bfloat16", output_dtype="float32"),
        Case("exact-f32-chunked", "exact", (1, 2, 300, 300, 32, 40),
             mode="many"),
        Case("local-f32-unary", "local", (1, 2, 97, 97, 16, 16),
             settings=dict(window=16), mode="unary"),
        Case("local-f16-causal", "local", (2, 2, 50, 61, 16, 8),
             dtype="float16", causal=True, settings=dict(window=9)),
        Case("performer-f32", "performer", (1, 2, 64, 64, 16, 16),
             settings=dict(num_features=32, seed=5)),
        Case("performer-bf16-causal-unary", "performer", (1, 1, 40, 40, 8, 8),
             dtype="bfloat16", causal=True, settings=dict(num_features=16,
                                                          seed=6),
             mode="unary"),
        Case("lsh-f32-unary", "lsh", (1, 2, 70, 70, 16, 16),
             settings=dict(bucket_size=8, seed=7), mode="unary"),
        Case("lsh-f16-smyrf-crosspolytope", "lsh", (1, 2, 90, 90, 16, 16),
             dtype="float16", settings=dict(bucket_size=16, seed=8,
                                            lsh_transform="smyrf",
                                            lsh_hash="crosspolytope")),
        Case("scatterbrain-f32", "scatterbrain", (2, 2, 128, 128, 32, 32),
             settings=fast, mode="many"),
        Case("scatterbrain-f16-both-unary", "scatterbrain",
             (1, 1, 45, 45, 8, 8), dtype="float16",
             settings=dict(fast, sparse="both", window=8), mode="unary"),
    ]


def _rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """x as the server receives it: rounded to the wire dtype."""
    enum = _wire._dtype_enum(dtype)
    return _wire._from_wire(_wire._to_wire(x, enum), enum, x.shape)


def reference(case: Case) -> np.ndarray:
    """Exact or local (sliding window) softmax attention in float64, the
    server's masks: causal bottom-right aligned (query i sees keys j <= i +
    seq_k - seq_q), padding keys past key_lengths[b], window |i + seq_k -
    seq_q - j| <= window / 2."""
    q, k, v = (_rounded(x, case.dtype).astype(np.float64)
               for x in (case.q, case.k, case.v))
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    nq, nk = q.shape[2], k.shape[2]
    i = np.arange(nq)[:, None] + (nk - nq)
    j = np.arange(nk)[None, :]
    hidden = np.zeros(s.shape, dtype=bool)
    if case.causal:
        hidden |= (j > i)[None, None]
    if case.method == "local":
        half = case.settings["window"] // 2
        hidden |= (np.abs(i - j) > half)[None, None]
    if case.key_lengths is not None:
        for b, n in enumerate(case.key_lengths):
            hidden[b, :, :, n:] = True
    assert not hidden.all(axis=-1).any(), "a row that sees no key"
    s = np.where(hidden, -np.inf, s)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def check(case: Case, out: np.ndarray) -> Optional[str]:
    """None when `out` is the right answer to `case`, else what is wrong."""
    b, h, nq, _, _, dv = case.shape
    if out.shape != (b, h, nq, dv):
        return f"{case.name}: shape {out.shape}, expected {(b, h, nq, dv)}"
    if not np.isfinite(out).all():
        return f"{case.name}: non-finite output"
    if case.method in ("exact", "local"):
        err = np.abs(out - case.expected)
        bound = _ATOL + _RTOL[case.out_dtype()] * np.abs(case.expected)
        if (err > bound).any():
            return (f"{case.name}: max |out - ref| {err.max():.3g} over the "
                    f"bound (atol {_ATOL}, rtol {_RTOL[case.out_dtype()]})")
    elif not np.array_equal(out, case.expected):
        diff = np.abs(out - case.expected).max()
        return f"{case.name}: differs from its first answer by {diff:.3g}"
    return None


def make_cases() -> List[Case]:
    """The catalog with its inputs and, for exact and local, references."""
    cases = _catalog()
    for n, c in enumerate(cases):
        b, h, nq, nk, d, dv = c.shape
        rng = np.random.default_rng(1000 + n)
        c.q = rng.standard_normal((b, h, nq, d)).astype(np.float32)
        c.k = rng.standard_normal((b, h, nk, d)).astype(np.float32)
        c.v = rng.standard_normal((b, h, nk, dv)).astype(np.float32)
        if c.method in ("exact", "local"):
            c.expected = reference(c)
    return cases


def run_case(client: sb.Client, case: Case,
             timeout: float) -> List[np.ndarray]:
    """The answers to one catalog case, sent its way (raises AttendError)."""
    if case.mode == "many":
        results = list(client.attend_many(
            [(case.q, case.k, case.v, case.kwargs()) for _ in range(4)],
            max_in_flight=4, timeout=timeout))
        return [r.unwrap() for r in results]
    return [client.attend(case.q, case.k, case.v, unary=case.mode == "unary",
                          timeout=timeout, **case.kwargs())]


def record_first_answers(client: sb.Client, cases: List[Case],
                         timeout: float) -> None:
    """Random methods: their expected answer is the one they get now."""
    for c in cases:
        if c.expected is None:
            c.expected = run_case(client, c, timeout)[0]


def verify_all(client: sb.Client, cases: List[Case],
               timeout: float) -> List[str]:
    """Every case once, sequentially; the failures (empty: all right)."""
    failures = []
    for c in cases:
        try:
            for out in run_case(client, c, timeout):
                bad = check(c, out)
                if bad:
                    failures.append(bad)
        except Exception as e:  # noqa: BLE001 (every failure is reported)
            failures.append(f"{c.name}: {type(e).__name__}: {e}")
    return failures


def run_load(target: str, cases: List[Case], threads: int, seconds: float,
             timeout: float) -> Dict[str, Any]:
    """`threads` threads, each with its own channel, cycling through the
    catalog (each from another start) for `seconds`; every answer checked.
    """
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    counts = {"requests_ok": 0, "requests_failed": 0}
    by_case: Dict[str, int] = {c.name: 0 for c in cases}
    failures: List[str] = []

    def worker(index: int) -> None:
        # No retries: a well-formed request must never need one here.
        with sb.Client(target, chunk_bytes=16 << 10,
                       max_attempts=1) as client:
            n = index
            while time.monotonic() < stop:
                case = cases[n % len(cases)]
                n += 1
                try:
                    outs = run_case(client, case, timeout)
                    bad = [m for m in (check(case, o) for o in outs) if m]
                except Exception as e:  # noqa: BLE001
                    outs = [None]
                    bad = [f"{case.name}: {type(e).__name__}: {e}"]
                with lock:
                    counts["requests_failed"] += len(bad)
                    counts["requests_ok"] += len(outs) - len(bad)
                    by_case[case.name] += len(outs)
                    failures.extend(bad[:max(0, 20 - len(failures))])

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return dict(counts, by_case=by_case, failures=failures)
