"""Kubernetes manifests (deploy/kubernetes): schema validation of every
rendered variant against the Kubernetes OpenAPI schemas (kubernetes-validate,
offline, strict: unknown fields are errors) and the checks a schema cannot
make: GPU requests, gRPC probes on the health port, drain vs. grace period,
scrape annotations, Services, HPA, PDB, and label/selector consistency.
"""

import copy
import re

import pytest
import yaml

from deploy_common import (
    K8S, METRICS, NAMESPACE, ROOT, VARIANTS, container_args, find, kubectl,
    missing_tool, render_kubectl)
import kustomize_lite

ALL = list(VARIANTS)
# The oldest Kubernetes these manifests are for (native gRPC probes are GA
# from 1.27) and the newest schemas kubernetes-validate bundles.
SCHEMA_VERSIONS = ["1.27.0", "latest"]


def server_container(resources):
    dep = find(resources, "Deployment", "scatterbrain")
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["server"]
    return containers[0]


def pod_labels(resources):
    return find(resources, "Deployment", "scatterbrain")["spec"]["template"][
        "metadata"]["labels"]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def quantity_cores(value):
    value = str(value)
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def prestop_sleep_seconds(container):
    command = container.get("lifecycle", {}).get("preStop", {}).get(
        "exec", {}).get("command", [])
    if command[:1] == ["sleep"]:
        return int(command[1])
    return 0


# --------------------------------------------------------------------------
# Schema validation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("variant", ALL)
def test_schema_valid(rendered, variant, version):
    try:
        from kubernetes_validate import utils as kv
    except ImportError:
        missing_tool("kubernetes-validate (pip)")
    if version == "latest":
        version = kv.latest_version()
    validated = 0
    for res in rendered[variant]:
        if res["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no bundled schema; checked below
        try:
            kv.validate(res, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{variant}: {res['kind']}/{res['metadata']['name']} "
                        f"@ {version}: {path}: {e.message}")
        validated += 1
    assert validated >= 6


def test_schema_validator_rejects_mistakes(rendered):
    """The validator is strict: a misspelt field and a wrong type both fail
    (so a passing run means something)."""
    try:
        from kubernetes_validate import utils as kv
    except ImportError:
        missing_tool("kubernetes-validate (pip)")
    dep = copy.deepcopy(find(rendered["gpu"], "Deployment", "scatterbrain"))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, kv.latest_version(), strict=True)
    dep = copy.deepcopy(find(rendered["gpu"], "Deployment", "scatterbrain"))
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"][
        "port"] = "grpc"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, kv.latest_version(), strict=True)


# --------------------------------------------------------------------------
# Rendering: kustomize_lite (used where kubectl is missing) == kubectl
# --------------------------------------------------------------------------
def _by_key(resources):
    return {(r["kind"], r["metadata"]["name"]): r for r in resources}


@pytest.mark.parametrize("variant", ALL)
def test_lite_renderer_matches_kubectl(variant_dirs, variant):
    if not kubectl():
        missing_tool("kubectl")
    lite = _by_key(kustomize_lite.build(variant_dirs[variant]))
    real = _by_key(render_kubectl(variant_dirs[variant]))
    assert lite.keys() == real.keys()
    for key in real:
        assert lite[key] == real[key], key


def test_every_manifest_file_parses():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 12
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict), path


def test_every_directory_is_a_kustomization_or_component():
    for directory in [K8S / "base", *sorted((K8S / "overlays").iterdir()),
                      *sorted((K8S / "components").iterdir())]:
        k = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed = set(k.get("resources", [])) | {
            p["path"] for p in k.get("patches", [])}
        for path in directory.glob("*.yaml"):
            if path.name != "kustomization.yaml":
                assert path.name in listed, f"{path} is not used by its kustomization"


# --------------------------------------------------------------------------
# Deployment
# --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ALL)
def test_probes_are_grpc_on_the_serving_port(rendered, variant):
    container = server_container(rendered[variant])
    port = int(container_args(container)["port"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["grpc"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        assert set(spec) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert spec["grpc"]["port"] == port, probe
        # The server's overall health (service ""), which drain flips.
        assert spec["grpc"].get("service", "") == "", probe
    # Liveness must not kill a pod that is merely slow to start.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


@pytest.mark.parametrize("variant", ALL)
def test_grace_period_covers_prestop_and_drain(rendered, variant):
    dep = find(rendered[variant], "Deployment", "scatterbrain")
    container = server_container(rendered[variant])
    drain = int(container_args(container)["drain_timeout_s"])
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain + prestop_sleep_seconds(container), (grace, drain)


@pytest.mark.parametrize("variant", ALL)
def test_metrics_port_and_scrape_annotations(rendered, variant):
    dep = find(rendered[variant], "Deployment", "scatterbrain")
    container = server_container(rendered[variant])
    metrics_port = int(container_args(container)["metrics_port"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["metrics"] == metrics_port
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == metrics_port
    assert ann["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("variant", ALL)
def test_resources_set(rendered, variant):
    resources = server_container(rendered[variant])["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    # Guaranteed QoS: requests == limits for every resource.
    assert resources["requests"] == resources["limits"]


@pytest.mark.parametrize("variant", ["gpu", "gpu+components"])
def test_gpu_overlay(rendered, variant):
    container = server_container(rendered[variant])
    spec = find(rendered[variant], "Deployment", "scatterbrain")["spec"][
        "template"]["spec"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container_args(container)["backend"] in ("cuda", "auto")
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule"
               for t in spec["tolerations"])
    assert spec["nodeSelector"]


def test_cpu_overlay(rendered):
    container = server_container(rendered["cpu"])
    spec = find(rendered["cpu"], "Deployment", "scatterbrain")["spec"][
        "template"]["spec"]
    for kind in ("requests", "limits"):
        assert not any("gpu" in k for k in container["resources"][kind]), kind
    assert container_args(container)["backend"] == "cpu"
    assert "nodeSelector" not in spec and "tolerations" not in spec
    gpu_cores = quantity_cores(
        server_container(rendered["gpu"])["resources"]["requests"]["cpu"])
    assert quantity_cores(container["resources"]["requests"]["cpu"]) > gpu_cores


@pytest.mark.parametrize("variant", ALL)
def test_args_are_server_flags(rendered, variant):
    main = ROOT / "server" / "main.cc"
    if main.exists():  # the server's own flag definitions
        known = set(re.findall(r"ABSL_FLAG\([^,]+,\s*(\w+),", main.read_text()))
    else:
        known = {
            "port", "metrics_port", "backend", "max_batch_requests",
            "max_batch_tokens", "max_queue_delay_us", "max_queue_requests",
            "max_request_bytes", "chunk_bytes", "error_sample_rows",
            "drain_timeout_s",
        }
    assert {"port", "metrics_port", "backend", "drain_timeout_s"} <= known
    args = container_args(server_container(rendered[variant]))
    assert set(args) <= known, set(args) - known
    assert args["backend"] in ("auto", "cpu", "cuda")
    for key, value in args.items():
        if key != "backend":
            assert re.fullmatch(r"\d+", value), (key, value)


@pytest.mark.parametrize("variant", ALL)
def test_runs_as_non_root(rendered, variant):
    spec = find(rendered[variant], "Deployment", "scatterbrain")["spec"][
        "template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    sc = server_container(rendered[variant])["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False


# --------------------------------------------------------------------------
# Services, selectors, PDB, HPA
# --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ALL)
def test_selectors_consistent(rendered, variant):
    res = rendered[variant]
    labels = pod_labels(res)
    dep = find(res, "Deployment", "scatterbrain")
    assert selects(dep["spec"]["selector"]["matchLabels"], labels)
    for name in ("scatterbrain", "scatterbrain-headless"):
        svc = find(res, "Service", name)
        assert svc["spec"]["selector"], name
        assert selects(svc["spec"]["selector"], labels), name
    pdb = find(res, "PodDisruptionBudget", "scatterbrain")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"][
        "matchLabels"]
    spread = dep["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
    for constraint in spread:
        assert selects(constraint["labelSelector"]["matchLabels"], labels)


@pytest.mark.parametrize("variant", ALL)
def test_services(rendered, variant):
    res = rendered[variant]
    container = server_container(res)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container_args(container)

    headless = find(res, "Service", "scatterbrain-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)
    assert [(p["name"], p["port"]) for p in headless["spec"]["ports"]] == [
        ("grpc", int(args["port"]))]

    svc = find(res, "Service", "scatterbrain")
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert svc["spec"].get("clusterIP") != "None"
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grpc"]["port"] == int(args["port"])
    assert ports["metrics"]["port"] == int(args["metrics_port"])
    for service in (headless, svc):
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in named or target in named.values(), port


@pytest.mark.parametrize("variant", ALL)
def test_everything_in_one_namespace(rendered, variant):
    for res in rendered[variant]:
        if res["kind"] == "Namespace":
            assert res["metadata"]["name"] == NAMESPACE
        else:
            assert res["metadata"].get("namespace") == NAMESPACE, res["kind"]


@pytest.mark.parametrize("variant", ALL)
def test_pdb_leaves_replicas_up(rendered, variant):
    pdb = find(rendered[variant], "PodDisruptionBudget", "scatterbrain")
    hpa = find(rendered[variant], "HorizontalPodAutoscaler", "scatterbrain")
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]
    max_unavailable = pdb["spec"].get("maxUnavailable", 0)
    assert isinstance(max_unavailable, int)
    assert hpa["spec"]["minReplicas"] > max_unavailable


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_hpa_scales_on_queue_depth(rendered, variant):
    res = rendered[variant]
    hpa = find(res, "HorizontalPodAutoscaler", "scatterbrain")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1", "Deployment", "scatterbrain")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "scatterbrain_queue_depth"
    assert METRICS["scatterbrain_queue_depth"][0] == "gauge"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    target = float(metric["pods"]["target"]["averageValue"])
    limit = int(container_args(server_container(res))["max_queue_requests"])
    assert 0 < target < limit
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_hpa_cpu_fallback_component(rendered):
    hpa = find(rendered["gpu+components"], "HorizontalPodAutoscaler", "scatterbrain")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100


def test_servicemonitor_selects_the_metrics_service_once(rendered):
    res = rendered["gpu+components"]
    sm = find(res, "ServiceMonitor", "scatterbrain")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    selector = sm["spec"]["selector"]["matchLabels"]
    services = [s for s in res if s["kind"] == "Service"
                and selects(selector, s["metadata"].get("labels", {}))]
    assert [s["metadata"]["name"] for s in services] == ["scatterbrain"]
    port_names = {p["name"] for p in services[0]["spec"]["ports"]}
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    # The headless Service has no metrics port: no double scrape through it.
    headless = find(res, "Service", "scatterbrain-headless")
    assert "metrics" not in {p["name"] for p in headless["spec"]["ports"]}


# --------------------------------------------------------------------------
# prometheus-adapter rule for the HPA
# --------------------------------------------------------------------------
def _adapter_rules():
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    config = yaml.safe_load((K8S / "prometheus-adapter" / "config.yaml").read_text())
    assert values["rules"]["default"] is False
    return values["rules"]["custom"], config["rules"]


def test_adapter_rule_serves_the_hpa_metric(rendered):
    helm_rules, config_rules = _adapter_rules()
    assert helm_rules == config_rules
    hpa = find(rendered["gpu"], "HorizontalPodAutoscaler", "scatterbrain")
    wanted = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    served = []
    for rule in helm_rules:
        series = re.match(r"(\w+)", rule["seriesQuery"]).group(1)
        assert series in METRICS, series
        name = rule.get("name", {})
        exposed = re.sub(name.get("matches", "^$"), name.get("as", series), series) \
            if name else series
        served.append(exposed)
        overrides = rule["resources"]["overrides"]
        assert overrides["namespace"]["resource"] == "namespace"
        assert overrides["pod"]["resource"] == "pod"
        assert "<<.Series>>" in rule["metricsQuery"]
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]
    assert wanted in served
