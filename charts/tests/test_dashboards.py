"""The Grafana dashboards the passage chart ships (charts/passage/dashboards/).

* They are generated: charts/dashboards/generate.py (the Grafana Foundation SDK) writes exactly
  the committed files, metrics-used.txt included, so nobody edits the JSON by hand.
* Every query is valid PromQL (promql-parser: parsed and type-checked), and every metric it
  selects is one docs/observability.md documents (its table under "Metrics (Prometheus)"), in
  the form Prometheus stores it (a histogram's _bucket/_sum/_count, a counter's _total).
* With dashboards.enabled the chart renders one ConfigMap per dashboard, labelled for Grafana's
  dashboard sidecar, holding the JSON unchanged; the ConfigMaps validate against Kubernetes.

Run from the repository root:  python -m pytest charts/tests -q
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import promql_parser
import pytest

from test_charts import KUBE_VERSION, NAMESPACE, VALUES, by_kind, load_values, notes, one, render, strip

CHARTS = Path(__file__).resolve().parents[1]
REPO = CHARTS.parent
GENERATOR = CHARTS / "dashboards" / "generate.py"
SHIPPED = CHARTS / "passage" / "dashboards"
DASHBOARDS = ["agent-fleet.json", "sign-ins.json", "traces.json"]
OBSERVABILITY = REPO / "docs" / "observability.md"

METRIC = re.compile(r"passage_[a-z0-9_]+")
SERIES_SUFFIX = re.compile(r"_(bucket|sum|count|total)$")


def dashboard(name: str) -> dict:
    return json.loads((SHIPPED / name).read_text(encoding="utf-8"))


def all_panels(model: dict) -> list[dict]:
    panels, stack = [], list(model["panels"])
    while stack:
        panel = stack.pop(0)
        panels.append(panel)
        stack.extend(panel.get("panels", []))
    return panels


def prometheus_queries(model: dict) -> list[str]:
    return [t["expr"] for p in all_panels(model) for t in p.get("targets", []) if "expr" in t]


# --------------------------------------------------------------------------------------------
# (a) The committed files are the generator's output
# --------------------------------------------------------------------------------------------


def test_generator_reproduces_the_committed_files(tmp_path):
    result = subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(DASHBOARDS + ["metrics-used.txt"])
    assert sorted(p.name for p in SHIPPED.iterdir()) == generated, "files in charts/passage/dashboards the generator does not write"
    for name in generated:
        assert (SHIPPED / name).read_text(encoding="utf-8") == (tmp_path / name).read_text(encoding="utf-8"), (
            f"charts/passage/dashboards/{name} differs from what charts/dashboards/generate.py writes: "
            "edit the generator and run it again (.tools/chartenv/bin/python charts/dashboards/generate.py)"
        )


def test_metrics_used_lists_every_queried_metric():
    used = {m for name in DASHBOARDS for expr in prometheus_queries(dashboard(name)) for m in METRIC.findall(expr)}
    listed = (SHIPPED / "metrics-used.txt").read_text().splitlines()
    assert listed == sorted(used)


# --------------------------------------------------------------------------------------------
# (b) Every queried metric is documented
# --------------------------------------------------------------------------------------------


def documented_metrics() -> dict[str, str]:
    """The metric names of docs/observability.md's table, with their type: `passage_x_y`,
    `…_z` (the same service's prefix, passage_<service>_), `passage_<service>_build_info`
    (each service)."""
    text = OBSERVABILITY.read_text(encoding="utf-8")
    section = text[text.index("## Metrics (Prometheus)"):]
    if "\n## " in section:
        section = section[: section.index("\n## ")]
    names: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = line.split("|")
        kind = cells[2].strip()
        prefix = None
        for name in re.findall(r"`([^`]+)`", cells[1]):
            if name.startswith(("…_", "..._")):
                assert prefix, f"{name} without a full name before it: {line}"
                names[prefix + name.split("_", 1)[1]] = kind
            elif "<service>" in name:
                names.update({name.replace("<service>", s): kind for s in ("gateway", "dispatcher", "agent")})
            else:
                assert METRIC.fullmatch(name), name
                names[name] = kind
                prefix = "_".join(name.split("_")[:2]) + "_"
    return names


def exposed_series() -> dict[str, str]:
    """Each series name Prometheus stores for the documented metrics -> its documented family:
    a histogram's _bucket, _sum and _count; a counter as documented (with _total); a gauge."""
    series = {}
    for name, kind in documented_metrics().items():
        if kind.startswith("histogram"):
            series.update({f"{name}_{s}": name for s in ("bucket", "sum", "count")})
        else:
            series[name] = name
    return series


def family(series: str) -> str:
    return SERIES_SUFFIX.sub("", series)


def test_the_documented_table_is_read():
    names = documented_metrics()
    assert {"passage_gateway_sign_ins_total", "passage_dispatcher_agent_capacity", "passage_agent_streams_expected",
            "passage_dispatcher_agent_directory_servers", "passage_agent_directory_servers",
            "passage_gateway_build_info", "passage_agent_build_info"} <= set(names)
    assert names["passage_gateway_sign_in_duration_seconds"].startswith("histogram")
    assert names["passage_gateway_sign_ins_total"] == "counter"
    assert len(names) >= 28


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_queried_metric_is_documented(name):
    """Every passage_* name in a query, stripped of _bucket/_sum/_count/_total, is a documented
    family (counters are documented with _total, histograms without a suffix), in the form
    Prometheus stores it (a histogram only through _bucket/_sum/_count, a counter with _total)."""
    documented_families = {family(n) for n in documented_metrics()}
    series = exposed_series()
    for expr in prometheus_queries(dashboard(name)):
        for used in METRIC.findall(expr):
            assert family(used) in documented_families, (
                f"{name}: {used} (in {expr!r}) is not in docs/observability.md's metrics table"
            )
            assert used in series, f"{name}: {used} (in {expr!r}) is not a series of a documented metric"


def test_metrics_used_are_series_of_documented_metrics():
    series = exposed_series()
    for used in (SHIPPED / "metrics-used.txt").read_text().splitlines():
        assert used in series, used


GRAFANA_VARIABLES = re.compile(r"\$__(rate_interval|range|interval)\b")


def selected_metrics(expr: str) -> set[str]:
    """Parses the PromQL (Grafana's interval variables made durations) and returns the metric
    names of its selectors; a syntax or type error fails."""
    ast = promql_parser.parse(GRAFANA_VARIABLES.sub("5m", expr))
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
        return True

    promql_parser.walk(ast, visit)
    return names


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_query_parses(name):
    """Each query is valid PromQL (parsed and type-checked), and the names the regex finds are
    exactly the metrics it selects (none hidden in a {__name__=~...} matcher)."""
    for expr in prometheus_queries(dashboard(name)):
        try:
            assert selected_metrics(expr) == set(METRIC.findall(expr)), expr
        except ValueError as err:
            pytest.fail(f"{name}: {expr!r} is not valid PromQL: {err}")


def test_dashboards_are_well_formed():
    uids = set()
    for name in DASHBOARDS:
        model = dashboard(name)
        assert model["title"].startswith("Passage — ")
        assert model["tags"] == ["passage"]
        assert model["uid"].startswith("passage-") and model["uid"] not in uids
        uids.add(model["uid"])
        panels = all_panels(model)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        variables = {v["name"]: v for v in model["templating"]["list"]}
        for v in variables.values():
            assert v["type"] == "datasource"
        for panel in panels:
            for ds in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
                if ds:  # every data source is a variable, never a uid of one Grafana
                    assert ds["uid"] == "${%s}" % ds["type"] and ds["type"] in variables, (name, panel["title"])
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_sign_ins_dashboard():
    model = dashboard("sign-ins.json")
    exprs = prometheus_queries(model)
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(passage_gateway_sign_in_duration_seconds_bucket[$__rate_interval])))" in exprs
    latency = [p for p in all_panels(model) if "latency" in p["title"].lower() and "Store" not in p["title"]]
    assert len(latency) >= 5
    for panel in latency:
        assert any(t.get("exemplar") for t in panel["targets"]), f"{panel['title']}: exemplars off"
    assert any(e.startswith("topk(10, sum by (code)") for e in exprs)


def test_agent_fleet_dashboard():
    exprs = prometheus_queries(dashboard("agent-fleet.json"))
    assert "sum by (tenant, connector_group) (passage_dispatcher_connected_agents)" in exprs
    assert any("by (pod, instance" in e and "passage_dispatcher_connected_agents" in e for e in exprs)
    assert any("passage_dispatcher_agent_certificate_expiry_timestamp_seconds - time()" in e for e in exprs)


def test_traces_dashboard():
    model = dashboard("traces.json")
    queries = [t["query"] for p in all_panels(model) for t in p.get("targets", []) if "query" in t]
    assert queries == [
        '{ resource.service.name = "passage-gateway" && name = "sign_in" && duration > 500ms }',
        '{ resource.service.name = "passage-gateway" && status = error }',
    ]
    explained = next(p for p in all_panels(model) if p["type"] == "text")["options"]["content"]
    for span in ("sign_in", "dispatch", "relay", "validate", "decrypt", "authenticate"):
        assert span in explained


# --------------------------------------------------------------------------------------------
# (c) The chart ships them as ConfigMaps for Grafana's sidecar
# --------------------------------------------------------------------------------------------


def dashboard_configmaps(manifests: list[dict]) -> list[dict]:
    return [m for m in by_kind(manifests, "ConfigMap") if m["__template__"].endswith("dashboards.yaml")]


def test_no_dashboards_by_default():
    assert not dashboard_configmaps(render("passage", load_values(VALUES / "passage-defaults.yaml")))


def test_dashboards_render_as_sidecar_configmaps():
    values = load_values(VALUES / "passage-defaults.yaml")
    values["dashboards"] = {"enabled": True}
    m = render("passage", values)
    maps = dashboard_configmaps(m)
    assert sorted(c["metadata"]["name"] for c in maps) == [
        "passage-dashboard-agent-fleet", "passage-dashboard-sign-ins", "passage-dashboard-traces",
    ]
    for configmap in maps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["namespace"] == NAMESPACE
        [(key, text)] = configmap["data"].items()
        assert json.loads(text) == dashboard(key), f"{key}: the ConfigMap does not hold the file as is"
        kubernetes_validate.validate(strip(configmap), KUBE_VERSION, strict=True)
    assert "Grafana dashboards: ConfigMaps labelled grafana_dashboard=\"1\"" in notes("passage", values)


def test_dashboards_label_namespace_and_annotations():
    values = load_values(VALUES / "passage-defaults.yaml")
    values["dashboards"] = {"enabled": True, "label": "grafana.example.com/dashboard", "labelValue": "passage",
                            "namespace": "monitoring", "annotations": {"grafana_folder": "Passage"}, "labels": {"team": "iam"}}
    for configmap in dashboard_configmaps(render("passage", values)):
        labels = configmap["metadata"]["labels"]
        assert labels["grafana.example.com/dashboard"] == "passage" and labels["team"] == "iam"
        assert "grafana_dashboard" not in labels
        assert configmap["metadata"]["namespace"] == "monitoring"
        assert configmap["metadata"]["annotations"] == {"grafana_folder": "Passage"}
        kubernetes_validate.validate(strip(configmap), KUBE_VERSION, strict=True)


def test_ha_set_ships_the_dashboards():
    m = render("passage", load_values(VALUES / "passage-ha.yaml"))
    maps = dashboard_configmaps(m)
    assert len(maps) == 3
    assert one(m, "ConfigMap", "passage-dashboard-sign-ins")["metadata"]["annotations"] == {"grafana_folder": "Passage"}
