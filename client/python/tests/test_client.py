"""The Python client against a real scatterbrain_server process (conftest)."""

import urllib.request

import grpc
import numpy as np
import pytest

import scatterbrain_client as sb

METHODS = ["exact", "performer", "lsh", "local", "scatterbrain"]
SMALL = dict(num_features=16, bucket_size=8, window=8, seed=3)


def qkv(b=1, h=2, n=33, d=16, seed=0, n_k=None, dv=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, h, n, d)).astype(np.float32)
    k = rng.standard_normal((b, h, n_k or n, d)).astype(np.float32)
    v = rng.standard_normal((b, h, n_k or n, dv or d)).astype(np.float32)
    return q, k, v


def reference(q, k, v, causal=False, key_lengths=None):
    """Exact softmax attention in float64 (bottom-right causal mask)."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    nq, nk = q.shape[2], k.shape[2]
    mask = np.zeros(s.shape, dtype=bool)
    if causal:
        i = np.arange(nq)[:, None]
        j = np.arange(nk)[None, :]
        mask |= (j > i + (nk - nq))[None, None]
    if key_lengths is not None:
        for b, n in enumerate(key_lengths):
            mask[b, :, :, n:] = True
    s = np.where(mask, -np.inf, s)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def test_health_and_info(client):
    assert client.health() == "SERVING"
    info = client.info()
    assert info.version
    assert "cpu" in info.backends
    assert info.backend
    assert info.limits.max_request_bytes > 0
    assert info.limits.chunk_bytes > 0


def test_exact_matches_numpy(client):
    q, k, v = qkv()
    out = client.attend(q, k, v, method="exact")
    assert out.dtype == np.float32 and out.shape == (1, 2, 33, 16)
    np.testing.assert_allclose(out, reference(q, k, v), atol=1e-4)


def test_exact_causal_key_lengths_cross(client):
    q, k, v = qkv(b=2, n=20, n_k=31, dv=8, seed=1)
    out = client.attend(q, k, v, method="exact", causal=True,
                        key_lengths=[31, 25])
    assert out.shape == (2, 2, 20, 8)
    np.testing.assert_allclose(
        out, reference(q, k, v, causal=True, key_lengths=[31, 25]), atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_every_method(client, method):
    q, k, v = qkv(seed=2)
    out, stats = client.attend(q, k, v, method=method, return_stats=True,
                               **SMALL)
    assert out.shape == (1, 2, 33, 16)
    assert np.isfinite(out).all()
    assert stats["batch_size"] >= 1
    assert stats["dense_score_bytes"] == 1 * 2 * 33 * 33 * 4
    assert stats["backend"]
    assert stats["compute_seconds"] >= 0 and stats["queue_seconds"] >= 0


def test_same_seed_same_output(client):
    q, k, v = qkv(seed=4)
    a = client.attend(q, k, v, method="scatterbrain", **SMALL)
    b = client.attend(q, k, v, method="scatterbrain", **SMALL)
    np.testing.assert_array_equal(a, b)


def test_module_level_attend(server):
    q, k, v = qkv(seed=5)
    out, stats = sb.attend(q, k, v, method="exact", target=server.target,
                           return_stats=True)
    np.testing.assert_allclose(out, reference(q, k, v), atol=1e-4)
    assert set(stats) >= {"queue_seconds", "compute_seconds", "batch_size",
                          "memory_saved_bytes", "estimated_relative_error"}


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision_on_the_wire(client, dtype, tol):
    q, k, v = qkv(seed=6)
    out = client.attend(q, k, v, method="exact", dtype=dtype)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference(q, k, v), atol=tol)
    # float16 inputs, float32 output on the wire.
    out32 = client.attend(q.astype(np.float16), k.astype(np.float16),
                          v.astype(np.float16), method="exact",
                          dtype="float16", output_dtype="float32")
    ref16 = reference(q.astype(np.float16), k.astype(np.float16),
                      v.astype(np.float16))
    np.testing.assert_allclose(out32, ref16, atol=1e-4)


def test_request_larger_than_one_chunk(server):
    q, k, v = qkv(b=1, h=2, n=256, d=32, seed=7)
    with sb.Client(server.target, chunk_bytes=4096) as c:
        out = c.attend(q, k, v, method="exact")
    np.testing.assert_allclose(out, reference(q, k, v), atol=1e-4)


def test_unary(client):
    q, k, v = qkv(seed=8)
    out, stats = client.attend(q, k, v, method="exact", unary=True,
                               return_stats=True)
    np.testing.assert_allclose(out, reference(q, k, v), atol=1e-4)
    assert stats["batch_size"] >= 1


def test_attend_many(client):
    inputs = [qkv(n=n, seed=10 + n) for n in (17, 33, 64, 40, 33, 9)]
    requests = []
    for i, (q, k, v) in enumerate(inputs):
        method = "exact" if i % 2 == 0 else "scatterbrain"
        requests.append(sb.Request.of(q, k, v, method=method,
                                      request_id=f"req-{i}", **SMALL))
    results = list(client.attend_many(requests, max_in_flight=4))
    assert sorted(r.request_id for r in results) == sorted(
        f"req-{i}" for i in range(len(inputs)))
    for r in results:
        assert r.ok, r.error
        i = int(r.request_id.split("-")[1])
        q, k, v = inputs[i]
        assert r.output.shape == q.shape
        assert r.stats["batch_size"] >= 1
        if i % 2 == 0:
            np.testing.assert_allclose(r.output, reference(q, k, v), atol=1e-4)
        else:
            assert np.isfinite(r.output).all()


def test_attend_many_forms(client):
    q, k, v = qkv(seed=20)
    items = [(q, k, v), (q, k, v, {"method": "exact"}),
             {"q": q, "k": k, "v": v, "method": "local", "window": 8}]
    results = list(client.attend_many(iter(items)))
    assert len(results) == 3
    assert len({r.request_id for r in results}) == 3
    assert all(r.ok for r in results)


def test_bad_shape_is_invalid_argument(client):
    q, k, v = qkv(seed=30)
    k_bad = k[..., :8]  # dim 8 against q's 16: the byte count of k is wrong
    with pytest.raises(grpc.RpcError) as e:
        client.attend(q, k_bad, v, method="exact")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details()
    assert isinstance(e.value, sb.AttendError)
    with pytest.raises(grpc.RpcError) as e:
        client.attend(q, k_bad, v, method="exact", unary=True)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details()


def test_bad_settings_name_the_field(client):
    q, k, v = qkv(seed=31)
    with pytest.raises(sb.AttendError) as e:
        client.attend(q, k, v, method="performer", num_features=7)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "num_features" in e.value.details()


def test_one_bad_request_does_not_fail_the_others(client):
    q, k, v = qkv(seed=32)
    requests = [
        sb.Request.of(q, k, v, method="exact", request_id="good-1"),
        sb.Request.of(q, k[..., :8], v, method="exact", request_id="bad"),
        sb.Request.of(q, k, v, method="exact", request_id="good-2"),
    ]
    results = {r.request_id: r for r in client.attend_many(requests)}
    assert set(results) == {"good-1", "bad", "good-2"}
    assert results["bad"].error.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(sb.AttendError):
        results["bad"].unwrap()
    for rid in ("good-1", "good-2"):
        np.testing.assert_allclose(results[rid].unwrap(), reference(q, k, v),
                                   atol=1e-4)


def test_client_side_errors(client):
    q, k, v = qkv(seed=33)
    with pytest.raises(ValueError):
        client.attend(q[0], k, v, method="exact")  # 3 dimensions
    with pytest.raises(ValueError):
        client.attend(q, k, v, method="nope")
    with pytest.raises(TypeError):
        client.attend(q, k, v, method="exact", not_a_setting=1)
    with pytest.raises(ValueError):
        client.attend(q, k, v, method="exact", dtype="int8")


def test_metrics_are_exported(server, client):
    q, k, v = qkv(seed=40)
    client.attend(q, k, v, method="exact")
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for name in ("scatterbrain_requests_total", "scatterbrain_batch_size",
                 "scatterbrain_request_duration_seconds",
                 "scatterbrain_received_bytes_total",
                 "scatterbrain_sent_bytes_total"):
        assert name in text, name
    assert 'code="OK"' in text


def test_stubs_older_than_the_proto_are_regenerated(tmp_path, monkeypatch):
    # A checkout whose proto changed after the stubs were generated must not
    # keep serving the old messages (a new setting would be "unknown").
    import os
    import shutil
    from scatterbrain_client import _stubs
    _stubs.load()  # present and current
    proto_dir = tmp_path / "proto"
    src = _stubs.find_proto_root() / _stubs.PROTO_FILE
    dst = proto_dir / _stubs.PROTO_FILE
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    monkeypatch.setenv("SB_PROTO_DIR", str(proto_dir))
    gen_mtime = (_stubs.GEN_DIR / "attention_pb2.py").stat().st_mtime
    os.utime(dst, (gen_mtime - 10, gen_mtime - 10))
    assert not _stubs._stale()
    os.utime(dst, (gen_mtime + 10, gen_mtime + 10))
    assert _stubs._stale()
