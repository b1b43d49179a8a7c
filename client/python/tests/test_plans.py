"""Scatterbrain's per-head choices through the Python client (conftest's
server process, CPU backend): sparse="auto", global_keys= and target_error=
as keyword settings, and the stats' head_plans, error_bound and cost."""

import grpc
import numpy as np
import pytest

import scatterbrain_client as sb

B, H, N, D = 1, 2, 128, 16


def smooth_qkv(seed=0, n=N):
    """Neighbouring tokens alike (an AR(1) walk), as on real text: local
    windows hold much of the mass."""
    rng = np.random.default_rng(seed)
    x = np.zeros((B, H, n, D))
    for t in range(1, n):
        x[:, :, t] = 0.98 * x[:, :, t - 1] + 0.2 * rng.standard_normal((B, H, D))
    q = (1.5 * x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    k = (1.5 * x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    v = rng.standard_normal((B, H, n, D)).astype(np.float32)
    return q, k, v


def exact(q, k, v):
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def rel_error(out, ref):
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def test_auto_returns_one_plan_per_head(client):
    q, k, v = smooth_qkv(1)
    out, stats = client.attend(q, k, v, sparse="auto", global_keys=2,
                               num_features=16, bucket_size=16, window=16,
                               seed=4, return_stats=True)
    assert np.isfinite(out).all()
    plans = stats["head_plans"]
    assert sorted((p.batch, p.head) for p in plans) == [
        (b, h) for b in range(B) for h in range(H)]
    for p in plans:
        assert isinstance(p, sb.HeadPlan)
        assert not p.exact
        assert p.sparse in ("lsh", "local", "both")
        assert p.support_mass is not None and 0.0 <= p.support_mass <= 1.0
        assert p.error_bound is None  # no target
    assert stats["error_bound"] is None
    assert 0 < stats["score_evaluations"] < stats["exact_score_evaluations"]


def test_target_error_is_met_and_reported(client):
    # Long enough that the target is met below exact's cost (at a few
    # hundred tokens the planner's search costs more and it goes exact).
    q, k, v = smooth_qkv(2, n=1024)
    target = 0.3
    out, stats = client.attend(q, k, v, sparse="auto", target_error=target,
                               seed=4, return_stats=True)
    assert len(stats["head_plans"]) == B * H
    for p in stats["head_plans"]:
        assert p.exact or p.error_bound <= target
    assert stats["error_bound"] is not None
    assert stats["error_bound"] <= target
    assert rel_error(out, exact(q, k, v)) <= target
    assert any(not p.exact for p in stats["head_plans"])
    assert stats["score_evaluations"] < stats["exact_score_evaluations"]


def test_unreachable_target_is_exact(client):
    q, k, v = smooth_qkv(3)
    out, stats = client.attend(q, k, v, target_error=1e-6, return_stats=True)
    assert all(p.exact for p in stats["head_plans"])
    np.testing.assert_allclose(out, exact(q, k, v), atol=1e-5)


def test_other_methods_report_no_plans(client):
    q, k, v = smooth_qkv(4)
    _, stats = client.attend(q, k, v, method="exact", return_stats=True)
    assert stats["head_plans"] == [] and stats["error_bound"] is None


def test_bad_values_are_refused(client):
    q, k, v = smooth_qkv(5)
    with pytest.raises(ValueError, match="auto"):  # the choices listed
        client.attend(q, k, v, sparse="sometimes")
    with pytest.raises(ValueError):
        client.attend(q, k, v, global_keys=-1)
    with pytest.raises(sb.AttendError) as e:
        client.attend(q, k, v, target_error=1.5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "target_error" in e.value.details()
    with pytest.raises(sb.AttendError) as e:
        client.create_session(heads=H, dim=D, target_error=0.1)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one-shot" in e.value.details()
