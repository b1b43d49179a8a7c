"""deploy/prometheus: the rules and scrape configuration checked by Prometheus'
own promtool (check rules, unit tests of every alert, check config), the
dashboard's queries parsed by the same PromQL parser, and the links between
the files: scrape labels the HPA adapter needs, thresholds in step with the
Deployment's flags.
"""

import json
import re
import shutil
import subprocess

import yaml

from deploy_common import DEPLOY, K8S, container_args, find, missing_tool
import kustomize_lite
from test_metrics_used import dashboard_exprs

PROM = DEPLOY / "prometheus"


def promtool():
    path = shutil.which("promtool")
    if not path:
        missing_tool("promtool (Debian package prometheus)")
    return path


def run(args, cwd=PROM):
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout + out.stderr


def test_promtool_check_rules():
    rc, out = run([promtool(), "check", "rules", "alerts.yml"])
    assert rc == 0, out


def test_promtool_alert_unit_tests():
    """Each alert fires on the series it is for, with its labels and
    rendered annotations, and stays quiet on healthy traffic."""
    rc, out = run([promtool(), "test", "rules", "tests/alerts_test.yml"])
    assert rc == 0, out


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())
    fired = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", [])
             if c.get("exp_alerts")}
    quiet = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", [])
             if not c.get("exp_alerts")}
    assert alerts == fired, alerts ^ fired
    assert alerts == quiet, alerts ^ quiet


def test_promtool_check_config(tmp_path):
    tool = promtool()
    rc, out = run([tool, "check", "config", "prometheus.yml"])
    if rc != 0 and "kubernetes_sd_configs not found" in out:
        # Debian's Prometheus is built without Kubernetes discovery: check the
        # rest of the file (relabelling, rule files) with static targets.
        config = yaml.safe_load((PROM / "prometheus.yml").read_text())
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
        config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        rc, out = run([tool, "check", "config", "prometheus.yml"], cwd=tmp_path)
    assert rc == 0, out


def test_dashboard_queries_parse_with_promtool(tmp_path):
    """Every dashboard query, as a recording rule, through Prometheus' own
    parser."""
    tool = promtool()
    rules = [{"record": f"dashboard:query_{i}", "expr": expr}
             for i, (_, expr) in enumerate(dashboard_exprs())]
    (tmp_path / "dashboard_rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    rc, out = run([tool, "check", "rules", "dashboard_rules.yml"], cwd=tmp_path)
    assert rc == 0, out


def test_rules_file_shape():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] not in names
            names.add(rule["alert"])
            assert rule["alert"].startswith("Scatterbrain")
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    # The four the service needs.
    assert 'code!="OK"' in exprs["ScatterbrainHighErrorRate"]
    assert re.search(r"histogram_quantile\(0\.99,\s*sum by \(method, le\) \(rate\("
                     r"scatterbrain_request_duration_seconds_bucket",
                     exprs["ScatterbrainHighLatencyP99"])
    assert "scatterbrain_queue_depth" in exprs["ScatterbrainQueueSaturated"]
    assert re.search(r"histogram_quantile\([\d.]+,\s*sum by \(method, le\) \(rate\("
                     r"scatterbrain_approx_relative_error_bucket",
                     exprs["ScatterbrainApproximationErrorHigh"])


def test_queue_alert_tracks_the_deployment_limit():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    [expr] = [r["expr"] for g in rules["groups"] for r in g["rules"]
              if r["alert"] == "ScatterbrainQueueSaturated"]
    m = re.search(r">\s*([\d.]+)\s*\*\s*(\d+)", expr)
    assert m, expr
    fraction, limit = float(m.group(1)), int(m.group(2))
    assert 0.5 <= fraction < 1
    dep = find(kustomize_lite.build(K8S / "base"), "Deployment", "scatterbrain")
    args = container_args(dep["spec"]["template"]["spec"]["containers"][0])
    assert limit == int(args["max_queue_requests"])


def test_scrape_config():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    pods = jobs["scatterbrain"]
    assert pods["kubernetes_sd_configs"] == [{"role": "pod"}]
    relabels = pods["relabel_configs"]
    keep = [r for r in relabels if r.get("action") == "keep"]
    assert any(r["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
               and r["regex"] == "true" for r in keep)
    targets = {r.get("target_label"): r for r in relabels if r.get("target_label")}
    assert "__meta_kubernetes_pod_annotation_prometheus_io_port" in \
        targets["__address__"]["source_labels"]
    assert targets["__metrics_path__"]["source_labels"] == [
        "__meta_kubernetes_pod_annotation_prometheus_io_path"]
    # prometheus-adapter maps these two labels onto the HPA's pods.
    assert targets["namespace"]["source_labels"] == ["__meta_kubernetes_namespace"]
    assert targets["pod"]["source_labels"] == ["__meta_kubernetes_pod_name"]
    # The port regex turns "ip:anything" + "9464" into "ip:9464".
    rule = targets["__address__"]
    joined = ";".join(["10.1.2.3:50051", "9464"])
    assert re.sub("^(?:" + rule["regex"] + ")$", rule["replacement"].replace("$", "\\"),
                  joined) == "10.1.2.3:9464"
    static = jobs["scatterbrain-static"]
    assert static["static_configs"][0]["targets"]
    assert config["rule_files"] == ["alerts.yml"]


def test_dashboard_is_valid_json_and_importable():
    d = json.loads((DEPLOY / "grafana" / "scatterbrain-dashboard.json").read_text())
    assert d.get("id") is None  # a dashboard to import carries no instance id
