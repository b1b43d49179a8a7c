"""Every metric the deployment files query is one the server exports
(server/metrics.h), used the way its type allows: the alert rules, the
Grafana dashboard, the prometheus-adapter rule and the HPA. Also: the
dashboard parses and has the panels the service needs.
"""

import json
import re

import pytest
import yaml

from deploy_common import (
    BUILTIN_SERIES, DEPLOY, K8S, METRICS, ROOT, TARGET_LABELS, base_metric_name,
    missing_tool)

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "tests" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "scatterbrain-dashboard.json"
NAME_RE = re.compile(r"\bscatterbrain_[A-Za-z0-9_]+")

# Grafana's variables, replaced by what they expand to for parsing.
GRAFANA_VARS = {
    "$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
    "$job": ".*", "$instance": ".*", "$method": ".*",
}


def grafana_to_promql(expr):
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def alert_exprs():
    doc = yaml.safe_load(ALERTS.read_text())
    return [(f"alerts.yml {r.get('alert') or r.get('record')}", r["expr"])
            for g in doc["groups"] for r in g["rules"]]


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_panels():
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs():
    out = []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            out.append((f"dashboard '{panel['title']}' {target['refId']}",
                        grafana_to_promql(target["expr"])))
    return out


def template_queries():
    out = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"dashboard variable {var['name']}", query))
    return out


def all_names():
    """(where, metric name as written) for every scatterbrain_* name in the
    deployment files."""
    found = []
    sources = alert_exprs() + dashboard_exprs() + template_queries()
    for where, text in sources:
        found += [(where, n) for n in NAME_RE.findall(text)]
    for doc_path in (K8S / "prometheus-adapter" / "values.yaml",
                     K8S / "prometheus-adapter" / "config.yaml",
                     K8S / "base" / "hpa.yaml"):
        text = "\n".join(line for line in doc_path.read_text().splitlines()
                         if not line.lstrip().startswith("#"))
        found += [(doc_path.name, n) for n in NAME_RE.findall(text)]
    # The alert unit tests' input series (their annotations are prose).
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in case.get("input_series", []):
            found += [(ALERT_TESTS.name, n) for n in NAME_RE.findall(series["series"])]
    return found


def test_metric_list_matches_server_source():
    """The list in deploy_common.py is the one server/metrics.cc registers."""
    source = ROOT / "server" / "metrics.cc"
    if not source.exists():
        pytest.skip("server/metrics.cc not present")
    text = source.read_text()
    registered = {}
    for kind, name in re.findall(
            r"Build(Counter|Histogram|Gauge)\(\)\s*\.Name\(\"(\w+)\"\)", text):
        registered[name] = kind.lower()
    assert registered == {n: t for n, (t, _) in METRICS.items()}
    header = (ROOT / "server" / "metrics.h").read_text()
    for name in METRICS:
        assert name in header, name


def test_every_name_used_is_exported():
    used = all_names()
    assert len(used) > 40
    unknown = sorted({(w, n) for w, n in used if base_metric_name(n) not in METRICS})
    assert not unknown, unknown


def test_suffixes_match_metric_types():
    for where, name in all_names():
        base = base_metric_name(name)
        kind = METRICS[base][0]
        if kind == "histogram":
            assert name != base, f"{where}: histogram {name} used without a suffix"
        else:
            assert name == base, f"{where}: {name}"


def test_every_exported_metric_is_on_the_dashboard():
    used = {base_metric_name(n) for _, expr in dashboard_exprs()
            for n in NAME_RE.findall(expr)}
    assert used == set(METRICS), set(METRICS) - used


# --------------------------------------------------------------------------
# PromQL structure (promql-parser): selectors, labels, rate() on counters
# --------------------------------------------------------------------------
RANGE_FUNCS = {"rate", "irate", "increase"}
OVER_TIME = {"avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
             "count_over_time", "last_over_time", "quantile_over_time"}


def _promql():
    try:
        import promql_parser
    except ImportError:
        missing_tool("promql-parser (pip)")
    return promql_parser


def _selectors(promql, expr):
    """[(metric name, matcher label names, enclosing function names)]."""
    out = []

    def visit(node, funcs):
        kind = type(node).__name__
        if kind == "VectorSelector":
            labels = {m.name for m in node.matchers.matchers} if node.matchers else set()
            out.append((node.name, labels, funcs))
            return
        if kind == "MatrixSelector":
            visit(node.vector_selector, funcs)
            return
        if kind == "Call":
            for arg in node.args:
                visit(arg, funcs + (node.func.name,))
            return
        if kind == "AggregateExpr":
            visit(node.expr, funcs)
            if node.param is not None:
                visit(node.param, funcs)
            return
        if kind == "BinaryExpr":
            visit(node.lhs, funcs)
            visit(node.rhs, funcs)
            return
        if kind in ("ParenExpr", "UnaryExpr"):
            visit(node.expr, funcs)
            return
        if kind == "SubqueryExpr":
            visit(node.expr, funcs)
            return
        assert kind in ("NumberLiteral", "StringLiteral"), kind

    visit(promql.parse(expr), ())
    return out


def _grouping_labels(promql, expr):
    labels = set()

    def visit(node):
        kind = type(node).__name__
        if kind == "AggregateExpr":
            if node.modifier is not None:
                labels.update(node.modifier.labels)
            visit(node.expr)
        elif kind == "BinaryExpr":
            visit(node.lhs)
            visit(node.rhs)
        elif kind == "Call":
            for arg in node.args:
                visit(arg)
        elif kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
            visit(node.expr)

    visit(promql.parse(expr))
    return labels


@pytest.mark.parametrize("where,expr", alert_exprs() + dashboard_exprs(),
                         ids=lambda v: v if len(str(v)) < 60 else None)
def test_promql_selectors(where, expr):
    promql = _promql()
    selectors = _selectors(promql, expr)
    assert selectors, f"{where}: no series selected"
    for name, labels, funcs in selectors:
        if name in BUILTIN_SERIES:
            assert labels <= TARGET_LABELS, (where, name, labels)
            continue
        base = base_metric_name(name)
        assert base in METRICS, f"{where}: {name}"
        kind, metric_labels = METRICS[base]
        allowed = TARGET_LABELS | metric_labels | ({"le"} if name.endswith("_bucket") else set())
        assert labels - {"__name__"} <= allowed, f"{where}: {name} has no {labels - allowed}"
        if kind == "counter" or name.endswith(("_bucket", "_sum", "_count")):
            # Counters only make sense as rates (or increases).
            assert set(funcs) & RANGE_FUNCS, f"{where}: {name} outside rate()"
        if kind == "gauge":
            assert not set(funcs) & RANGE_FUNCS, f"{where}: rate() of gauge {name}"
        if "histogram_quantile" in funcs:
            assert name.endswith("_bucket"), f"{where}: {name}"


@pytest.mark.parametrize("where,expr", alert_exprs() + dashboard_exprs(),
                         ids=lambda v: v if len(str(v)) < 60 else None)
def test_promql_grouping_labels_exist(where, expr):
    """`sum by (x)` over a label the series do not have silently merges
    everything into one series: every grouping label must exist."""
    promql = _promql()
    labels = _grouping_labels(promql, expr)
    names = {base_metric_name(n) for n, _, _ in _selectors(promql, expr)} - BUILTIN_SERIES
    available = set(TARGET_LABELS) | {"le"}
    for name in names:
        available |= METRICS[name][1]
    assert labels <= available, f"{where}: {labels - available}"
    if "histogram_quantile" in expr:
        assert "le" in labels, f"{where}: histogram_quantile without `le`"


# --------------------------------------------------------------------------
# The dashboard
# --------------------------------------------------------------------------
REQUIRED_PANELS = {
    # topic: (metric that must be queried, a word in the panel title)
    "latency percentiles": ("scatterbrain_request_duration_seconds", "latency"),
    "throughput": ("scatterbrain_requests_total", "throughput"),
    "error rate": ("scatterbrain_requests_total", "error"),
    "batch size": ("scatterbrain_batch_size", "batch size"),
    "memory saved": ("scatterbrain_attention_memory_saved_bytes_total", "memory saved"),
    "approximation error": ("scatterbrain_approx_relative_error", "approximation error"),
    "device memory": ("scatterbrain_device_memory_used_bytes", "device memory"),
    "queue depth": ("scatterbrain_queue_depth", "queue depth"),
}


def test_dashboard_has_required_panels():
    panels = dashboard_panels()
    for topic, (metric, word) in REQUIRED_PANELS.items():
        hits = [p for p in panels if word in p["title"].lower()
                and any(base_metric_name(n) == metric
                        for t in p["targets"] for n in NAME_RE.findall(t["expr"]))]
        assert hits, topic
    latency = next(p for p in panels if p["title"].startswith("Request latency"))
    quantiles = {re.search(r"histogram_quantile\(([\d.]+)", t["expr"]).group(1)
                 for t in latency["targets"]}
    assert {"0.5", "0.9", "0.99"} <= quantiles


def test_dashboard_structure():
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    occupied = set()
    for panel in d["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"panel '{panel['title']}' overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["refId"]


@pytest.mark.parametrize("expr,problem", [
    ("rate(scatterbrain_queue_depth[5m])", "rate() of gauge"),
    ("sum(scatterbrain_requests_total)", "outside rate()"),
    ('rate(scatterbrain_batch_size_bucket{method="exact"}[5m])', "has no"),
    ("histogram_quantile(0.9, rate(scatterbrain_request_duration_seconds_sum[5m]))", "scatterbrain_request_duration_seconds_sum"),
    ("rate(scatterbrain_requests_totl[5m])", "scatterbrain_requests_totl"),
])
def test_promql_checker_catches_mistakes(expr, problem):
    """The checks above are not vacuous."""
    with pytest.raises(AssertionError, match=re.escape(problem)):
        test_promql_selectors("self-test", expr)


def test_grouping_checker_catches_mistakes():
    with pytest.raises(AssertionError, match="device"):
        test_promql_grouping_labels_exist(
            "self-test", "sum by (device) (rate(scatterbrain_requests_total[5m]))")
