"""Shared helpers for the deployment tests (tests/deploy): paths, rendering
the Kubernetes variants, the server's metric names, and the rule for
optional tools.

Optional tools (kubernetes-validate, promtool, hadolint, promql-parser,
kubectl): a test that needs one skips when it is missing, unless
SB_REQUIRE_DEPLOY_TOOLS=1, where it fails instead (set in CI, where
scripts/test installs them).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import kustomize_lite

ROOT = Path(__file__).resolve().parents[2]
# Built binaries (scatterbrain_server, scatterbrain_cli): ctest passes its
# build tree's bin/; by hand, build/bin.
BIN_DIR = Path(os.environ.get("SB_BIN_DIR") or ROOT / "build" / "bin")
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
NAMESPACE = "scatterbrain"

# The server's metrics (server/metrics.h): name -> (type, labels).
# Histograms are exposed as <name>_bucket (+ le), <name>_sum, <name>_count.
METRICS = {
    "scatterbrain_requests_total": ("counter", {"method", "code"}),
    "scatterbrain_request_duration_seconds": ("histogram", {"method"}),
    "scatterbrain_queue_duration_seconds": ("histogram", {"method"}),
    "scatterbrain_compute_duration_seconds": ("histogram", {"method"}),
    "scatterbrain_batch_size": ("histogram", set()),
    "scatterbrain_attention_memory_saved_bytes_total": ("counter", set()),
    "scatterbrain_approx_relative_error": ("histogram", {"method"}),
    "scatterbrain_denominator_guard_total": ("counter", set()),
    "scatterbrain_head_plans_total": ("counter", {"sparse"}),
    "scatterbrain_inflight_requests": ("gauge", set()),
    "scatterbrain_queue_depth": ("gauge", set()),
    "scatterbrain_received_bytes_total": ("counter", set()),
    "scatterbrain_sent_bytes_total": ("counter", set()),
    "scatterbrain_device_memory_used_bytes": ("gauge", {"device"}),
    "scatterbrain_protocol_errors_total": ("counter", {"kind"}),
    "scatterbrain_memory_budget_bytes": ("gauge", set()),
    "scatterbrain_memory_reserved_bytes": ("gauge", set()),
    "scatterbrain_auth_refused_total": ("counter", {"reason"}),
    "scatterbrain_requests_stopped_total": ("counter", {"reason", "stage"}),
    "scatterbrain_sessions_open": ("gauge", set()),
    "scatterbrain_session_kv_bytes": ("gauge", set()),
    "scatterbrain_session_state_bytes": ("gauge", set()),
    "scatterbrain_session_evictions_total": ("counter", {"reason"}),
    "scatterbrain_session_appends_total": ("counter", set()),
    "scatterbrain_session_step_seconds": ("histogram", {"incremental"}),
    "scatterbrain_session_refits_total": ("counter", set()),
}
# Labels Prometheus attaches to every scraped series (target labels from
# deploy/prometheus/prometheus.yml and the ServiceMonitor).
TARGET_LABELS = {
    "job", "instance", "namespace", "pod", "node", "service", "container",
    "endpoint", "deployment",
}
# Series Prometheus itself makes, allowed in rules next to METRICS.
BUILTIN_SERIES = {"up"}

# The variants deployed: the overlays as shipped, and the GPU overlay with
# both optional components (what uncommenting `components:` gives).
VARIANTS = {
    "gpu": {"resources": ["overlays/gpu"], "components": []},
    "cpu": {"resources": ["overlays/cpu"], "components": []},
    "gpu+components": {
        "resources": ["overlays/gpu"],
        "components": ["components/servicemonitor", "components/hpa-cpu"],
    },
}


def require_tools():
    return os.environ.get("SB_REQUIRE_DEPLOY_TOOLS", "") == "1"


def missing_tool(what):
    """Skips the calling test, or fails it under SB_REQUIRE_DEPLOY_TOOLS=1."""
    message = f"{what} is not installed"
    if require_tools():
        pytest.fail(message + " (SB_REQUIRE_DEPLOY_TOOLS=1)")
    pytest.skip(message)


def kubectl():
    return shutil.which("kubectl")


def variant_dir(name, tmp_root):
    """A directory whose kustomization.yaml renders `name`: the overlay itself
    or a kustomization (in tmp_root) adding the components to it."""
    spec = VARIANTS[name]
    if not spec["components"]:
        return K8S / spec["resources"][0]
    out = Path(tmp_root) / name.replace("+", "_")
    out.mkdir(parents=True, exist_ok=True)
    rel = lambda p: os.path.relpath(K8S / p, out)  # noqa: E731
    (out / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": [rel(p) for p in spec["resources"]],
        "components": [rel(p) for p in spec["components"]],
    }))
    return out


def render_kubectl(directory):
    out = subprocess.run([kubectl(), "kustomize", str(directory)],
                         check=True, capture_output=True, text=True, timeout=120)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render(directory):
    """kubectl kustomize where kubectl is installed, else kustomize_lite."""
    if kubectl():
        return render_kubectl(directory)
    return kustomize_lite.build(directory)


def find(resources, kind, name=None):
    hits = [r for r in resources if r["kind"] == kind
            and (name is None or r["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def container_args(container):
    """The container's --flag=value args as a dict, with $(VAR) references
    expanded from its literal env values (as the kubelet does)."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    args = {}
    for arg in container.get("args", []):
        arg = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
        assert arg.startswith("--") and "=" in arg, f"arg not --flag=value: {arg}"
        key, value = arg[2:].split("=", 1)
        args[key] = value
    return args


def base_metric_name(name):
    """scatterbrain_x_bucket -> scatterbrain_x for histograms; else unchanged."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if METRICS.get(base, ("",))[0] == "histogram":
                return base
    return name
