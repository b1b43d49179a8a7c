"""The Python client's Session against a real scatterbrain_server (conftest):
appends and attends equal numpy's exact attention on the same keys, decode
steps, lengths, closing, the context manager, errors with their codes."""

import grpc
import numpy as np
import pytest

import scatterbrain_client as sb

B, H, D, DV = 2, 2, 16, 8
SMALL = dict(num_features=16, bucket_size=8, window=8, seed=5)


def rand(*shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(
        np.float32)


def exact(q, k, v, see_all=False):
    """Exact attention in float64, [heads, seq, dim] per sequence or
    [batch, heads, seq, dim]; causal relative to the keys' length (row i
    sees j <= n_k - n_q + i) unless see_all."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    nq, nk = q.shape[-2], k.shape[-2]
    if not see_all:
        i = np.arange(nq)[:, None]
        j = np.arange(nk)[None, :]
        s = np.where(j > i + (nk - nq), -np.inf, s)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def test_create_append_attend_equals_numpy(client):
    k, v = rand(B, H, 20, D, seed=1), rand(B, H, 20, DV, seed=2)
    with client.session(batch=B, heads=H, dim=D, dim_v=DV,
                        method="exact") as s:
        assert len(s.id) == 32 and s.shape == (B, H, D, DV)
        info = s.append(k, v)
        assert list(info.lengths) == [20, 20]
        # Per-sequence counts: 3 more tokens to sequence 0, 6 to sequence 1.
        ks = [rand(H, 3, D, seed=3), rand(H, 6, D, seed=4)]
        vs = [rand(H, 3, DV, seed=5), rand(H, 6, DV, seed=6)]
        info = s.append(ks, vs)
        assert list(info.lengths) == [23, 26]
        q = rand(B, H, 4, D, seed=7)
        for see_all in (False, True):
            out, stats = s.attend(q, see_all=see_all, return_stats=True)
            assert out.dtype == np.float32 and out.shape == (B, H, 4, DV)
            assert stats["session_lengths"] == [23, 26]
            for b in range(B):
                kb = np.concatenate([k[b], ks[b]], axis=1)
                vb = np.concatenate([v[b], vs[b]], axis=1)
                np.testing.assert_allclose(
                    out[b], exact(q[b], kb, vb, see_all), atol=1e-5)
        info = s.info()
        assert list(info.lengths) == [23, 26]
        assert info.kv_bytes == (23 + 26) * H * (D + DV) * 4
        assert info.appends == 2


def test_step_loop_equals_one_shot(client):
    k, v = rand(B, H, 30, D, seed=10), rand(B, H, 30, DV, seed=11)
    with client.session(batch=B, heads=H, dim=D, dim_v=DV,
                        method="exact") as s:
        s.append(k, v)
        for t in range(5):
            q1 = rand(B, H, 1, D, seed=100 + t)
            k1 = rand(B, H, 1, D, seed=200 + t)
            v1 = rand(B, H, 1, DV, seed=300 + t)
            out, stats = s.step(q1, k1, v1, return_stats=True)
            k = np.concatenate([k, k1], axis=2)
            v = np.concatenate([v, v1], axis=2)
            assert stats["session_lengths"] == [31 + t] * B
            np.testing.assert_allclose(out, exact(q1, k, v), atol=1e-5)
            # The same attention as a one-shot causal call on the server.
            one = client.attend(q1, k, v, method="exact", causal=True)
            np.testing.assert_allclose(out, one, atol=1e-5)
        info = s.info()
        assert list(info.lengths) == [35, 35]
        assert info.steps == 5


@pytest.mark.parametrize("method", ["performer", "local"])
def test_incremental_steps_equal_one_shot_calls(client, method):
    k, v = rand(1, H, 24, D, seed=20), rand(1, H, 24, D, seed=21)
    with client.session(heads=H, dim=D, method=method, **SMALL) as s:
        s.append(k, v)
        for t in range(3):
            q1, k1, v1 = (rand(1, H, 1, D, seed=30 + 3 * t + i)
                          for i in range(3))
            out, stats = s.step(q1, k1, v1, return_stats=True)
            assert stats["incremental"]
            k = np.concatenate([k, k1], axis=2)
            v = np.concatenate([v, v1], axis=2)
            one = client.attend(q1, k, v, method=method, causal=True, **SMALL)
            np.testing.assert_allclose(out, one, atol=1e-5)


def test_chunked_uploads(server):
    # 64-byte messages: appends and attends travel in many chunks.
    with sb.Client(server.target, chunk_bytes=64) as c:
        k, v = rand(1, H, 40, D, seed=40), rand(1, H, 40, D, seed=41)
        with c.session(heads=H, dim=D, method="exact") as s:
            s.append(k, v)
            q = rand(1, H, 8, D, seed=42)
            np.testing.assert_allclose(s.attend(q), exact(q, k, v), atol=1e-5)


def _raw_get(client, sid):
    return client._stub.GetSession(sb.proto.GetSessionRequest(session_id=sid),
                                   timeout=10)


def test_close_and_context_manager_delete_on_the_server(client):
    s = client.create_session(heads=H, dim=D, method="exact")
    s.append(rand(1, H, 4, D, seed=50), rand(1, H, 4, D, seed=51))
    assert _raw_get(client, s.id).lengths == [4]
    freed = s.close()
    assert freed > 0 and s.closed
    assert s.close() is None  # idempotent
    with pytest.raises(grpc.RpcError) as e:
        _raw_get(client, s.id)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # Calls after close are refused here.
    with pytest.raises(sb.AttendError) as e:
        s.attend(rand(1, H, 1, D, seed=52))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # The context manager closes, also when the block raises.
    with pytest.raises(RuntimeError):
        with client.session(heads=H, dim=D, method="exact") as s2:
            sid = s2.id
            raise RuntimeError("boom")
    assert s2.closed
    with pytest.raises(grpc.RpcError) as e:
        _raw_get(client, sid)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_errors_carry_codes(client):
    with client.session(batch=B, heads=H, dim=D, method="exact") as s:
        with pytest.raises(ValueError, match="k "):
            s.append(rand(B, H, 2, D + 1, seed=1), rand(B, H, 2, D, seed=2))
        with pytest.raises(ValueError, match="q "):
            s.attend(rand(B, H + 1, 1, D, seed=3))
        with pytest.raises(ValueError, match="per-sequence"):
            s.append([rand(H, 1, D, seed=4)], [rand(H, 1, D, seed=5)])
        # Deleted behind its back: the server's NOT_FOUND.
        client._stub.DeleteSession(
            sb.proto.DeleteSessionRequest(session_id=s.id), timeout=10)
        for call in (lambda: s.attend(rand(B, H, 1, D, seed=6)),
                     lambda: s.step(*(rand(B, H, 1, D, seed=7 + i)
                                      for i in range(3))),
                     lambda: s.append(rand(B, H, 1, D, seed=10),
                                      rand(B, H, 1, D, seed=11)),
                     s.info):
            with pytest.raises(sb.AttendError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # The server's INVALID_ARGUMENT for a session it cannot make.
    with pytest.raises(sb.AttendError) as e:
        client.create_session(heads=H, dim=D, method="lsh",
                              lsh_transform="smyrf")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValueError):
        client.create_session(heads=H, dim=0, method="exact")
    with pytest.raises(TypeError):
        client.create_session(heads=H, dim=D, method="exact", no_such=1)


def test_half_precision(client):
    k, v = rand(1, H, 16, D, seed=60), rand(1, H, 16, D, seed=61)
    with client.session(heads=H, dim=D, method="exact", kv_dtype="float16",
                        dtype="bfloat16") as s:
        assert s.created.kv_dtype == sb.proto.DTYPE_FLOAT16
        s.append(k, v)
        q = rand(1, H, 2, D, seed=62)
        # bfloat16 on the wire keeps 8 bits of mantissa.
        np.testing.assert_allclose(s.attend(q), exact(q, k, v), atol=0.05)
        assert s.info().kv_bytes == 16 * H * 2 * D * 2
