"""Generates Passage's Grafana dashboards with the Grafana Foundation SDK (grafana-foundation-sdk,
pinned in charts/tests/requirements.txt) and writes them where the passage chart ships them:

    charts/passage/dashboards/sign-ins.json       "Passage — sign-ins"
    charts/passage/dashboards/agent-fleet.json    "Passage — agent fleet"
    charts/passage/dashboards/traces.json         "Passage — traces" (Tempo)
    charts/passage/dashboards/metrics-used.txt    every metric name the panels query, sorted

Never edit the JSON by hand: change this file and run it again (from the repository root,
with the chart tests' environment):

    .tools/chartenv/bin/python charts/dashboards/generate.py

charts/tests/test_dashboards.py checks that the committed files are exactly what this writes,
and that every metric named in a query is in docs/observability.md's table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

try:
    from grafana_foundation_sdk.builders import common as cb
except ImportError:  # pragma: no cover
    sys.exit("generate.py needs grafana-foundation-sdk: pip install -r charts/tests/requirements.txt "
             "(or run it with .tools/chartenv/bin/python)")

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, tempo, text, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models import text as tm

OUT = Path(__file__).resolve().parents[1] / "passage" / "dashboards"
TAGS = ["passage"]
RATE = "$__rate_interval"

PROMETHEUS = dm.DataSourceRef(type_val="prometheus", uid="${prometheus}")
TEMPO = dm.DataSourceRef(type_val="tempo", uid="${tempo}")


# --------------------------------------------------------------------------------------------
# Small helpers over the SDK's builders
# --------------------------------------------------------------------------------------------


def prometheus_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("prometheus").label("Prometheus").type("prometheus")


def tempo_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("tempo").label("Tempo").type("tempo")


def query(expr: str, legend: str = "__auto", ref: str = "A", exemplar: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(PROMETHEUS)
    q = q.editor_mode(pm.QueryEditorMode.CODE).range()
    if exemplar:
        q = q.exemplar(True)
    return q


def instant_table(expr: str, ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery().expr(expr).ref_id(ref).datasource(PROMETHEUS)
        .editor_mode(pm.QueryEditorMode.CODE)
        .format(pm.PromQueryFormat.TABLE).instant()
    )


def legend_table() -> cb.VizLegendOptions:
    return (
        cb.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM).show_legend(True).calcs(["mean", "max", "lastNotNull"])
    )


def graph(panel_id: int, title: str, description: str, unit: str, *targets: prometheus.Dataquery,
          width: int = 12, height: int = 8, stacked: bool = False) -> timeseries.Panel:
    panel = (
        timeseries.Panel().id(panel_id).title(title).description(description).datasource(PROMETHEUS)
        .unit(unit).span(width).height(height).fill_opacity(10).line_width(1).show_points(common.VisibilityMode.NEVER)
        .legend(legend_table()).tooltip(cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
    )
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(35)
    for target in targets:
        panel = panel.with_target(target)
    return panel


def steps(*pairs: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([dm.Threshold(value=v, color=c) for v, c in pairs])


def single(panel_id: int, title: str, description: str, unit: str, target: prometheus.Dataquery,
           thresholds: db.ThresholdsConfig, width: int = 6, height: int = 4) -> stat.Panel:
    return (
        stat.Panel().id(panel_id).title(title).description(description).datasource(PROMETHEUS).unit(unit)
        .span(width).height(height).thresholds(thresholds).color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(target)
    )


def organize(exclude: list[str], rename: dict[str, str] | None = None, order: list[str] | None = None) -> dm.DataTransformerConfig:
    options: dict[str, object] = {"excludeByName": {name: True for name in exclude}}
    if rename:
        options["renameByName"] = rename
    if order:
        options["indexByName"] = {name: i for i, name in enumerate(order)}
    return dm.DataTransformerConfig(id_val="organize", options=options)


def merge() -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val="merge", options={})


def colored_cells() -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background", "mode": "basic"})


def dashboard_links() -> db.DashboardLink:
    return (
        db.DashboardLink("Passage").type(dm.DashboardLinkType.DASHBOARDS).tags(TAGS)
        .as_dropdown(True).include_vars(True).keep_time(True)
    )


def base(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title).uid(uid).description(description).tags(TAGS).editable()
        .time("now-3h", "now").refresh("1m").timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR).link(dashboard_links())
    )


def histogram_quantile(q: float, metric: str, by: str = "le", matchers: str = "") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{matchers}[{RATE}])))"


def rate_by(metric: str, by: str, matchers: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{matchers}[{RATE}]))"


# --------------------------------------------------------------------------------------------
# 1. Sign-ins
# --------------------------------------------------------------------------------------------


def sign_ins() -> db.Dashboard:
    d = base(
        "passage-sign-ins",
        "Passage — sign-ins",
        "Sign-ins through the gateway, the dispatcher's relays and the agents' work "
        "(docs/observability.md, \"Metrics (Prometheus)\"). Latency panels show exemplars: "
        "a point opens its trace in Tempo when the Prometheus data source links exemplars to it.",
    ).with_variable(prometheus_variable())

    signins = "passage_gateway_sign_ins_total"
    d = d.with_row(db.Row("Gateway").id(100))
    d = d.with_panel(graph(
        1, "Sign-ins by outcome", "Every attempt (SignIn, ChangePassword, CompleteMfa, the sign-in page), per second.",
        "reqps", query(rate_by(signins, "outcome"), "{{outcome}}"), width=12, stacked=True,
    ))
    success = (
        f'sum(increase({signins}{{outcome="success"}}[$__range])) / sum(increase({signins}[$__range]))'
    )
    d = d.with_panel(single(
        2, "Success ratio", "Successful sign-ins of all attempts over the dashboard's time range.",
        "percentunit", query(success, "success").instant(),
        steps((None, "red"), (0.5, "orange"), (0.8, "green")), width=4, height=8,
    ))
    latency = "passage_gateway_sign_in_duration_seconds"
    d = d.with_panel(graph(
        3, "Sign-in latency", "From the call's arrival to its answer: p50, p95 and p99 of every outcome. "
        "Exemplars (diamonds) carry the trace id of a recent sign-in in that bucket.",
        "s",
        query(histogram_quantile(0.5, latency), "p50", "A", exemplar=True),
        query(histogram_quantile(0.95, latency), "p95", "B"),
        query(histogram_quantile(0.99, latency), "p99", "C"),
        width=8,
    ))
    d = d.with_panel(graph(
        4, "Error codes (top 10)", "The Passage error codes of failed and interrupted sign-ins, per second "
        "(docs/errors: PSG...).", "reqps",
        query("topk(10, " + rate_by(signins, "code", '{code!=""}') + ")", "{{code}}"), width=12,
    ))
    d = d.with_panel(graph(
        5, "Latency by outcome (p95)", "p95 per outcome: slow failures are usually directory timeouts.", "s",
        query(histogram_quantile(0.95, latency, "le, outcome"), "{{outcome}}", exemplar=True), width=12,
    ))

    d = d.with_row(db.Row("Smart lockout, conditional access, MFA").id(101))
    d = d.with_panel(graph(
        6, "Lockout", "What smart lockout did with each attempt: counted, repeat (the same wrong password "
        "again, not counted), locked, refused.", "reqps",
        query(rate_by("passage_gateway_lockout_attempts_total", "state"), "{{state}}"), width=8, stacked=True,
    ))
    d = d.with_panel(graph(
        7, "Policy decisions", "Conditional access after a right password, and what report-only policies "
        "would have done.", "reqps",
        query(rate_by("passage_gateway_policy_decisions_total", "grant"), "{{grant}}", "A"),
        query(rate_by("passage_gateway_policy_report_only_total", "grant"), "report-only {{grant}}", "B"),
        width=8,
    ))
    d = d.with_panel(graph(
        8, "MFA results", "Second factors, as the sign-in log's mfa field.", "reqps",
        query(rate_by("passage_gateway_mfa_results_total", "result"), "{{result}}"), width=8, stacked=True,
    ))
    d = d.with_panel(graph(
        9, "Validation retries", "Validations sent again with a fresh key set after no agent, a rejected "
        "envelope or a lost agent.", "reqps",
        query(f"sum(rate(passage_gateway_validation_retries_total[{RATE}]))", "retries"), width=12,
    ))
    d = d.with_panel(graph(
        10, "Store latency (p95)", "The store on the sign-in path, per operation.", "s",
        query(histogram_quantile(0.95, "passage_gateway_store_operation_duration_seconds", "le, operation"), "{{operation}}"),
        width=12,
    ))

    d = d.with_row(db.Row("Dispatcher").id(102))
    d = d.with_panel(graph(
        11, "Relays by outcome", "Validations relayed to agents: answered, or the error code.", "reqps",
        query(rate_by("passage_dispatcher_relays_total", "outcome"), "{{outcome}}"), width=8, stacked=True,
    ))
    d = d.with_panel(graph(
        12, "Relay latency (p95)", "From the gateway's call to the agent's answer, per outcome.", "s",
        query(histogram_quantile(0.95, "passage_dispatcher_relay_duration_seconds", "le, outcome"), "{{outcome}}", exemplar=True),
        width=8,
    ))
    d = d.with_panel(graph(
        13, "Relay failovers", "Validations moved to the other candidate agent, by reason.", "reqps",
        query(rate_by("passage_dispatcher_relay_failovers_total", "reason"), "{{reason}}"), width=8, stacked=True,
    ))

    d = d.with_row(db.Row("Agents").id(103))
    d = d.with_panel(graph(
        14, "Decrypt latency (p95)", "Opening a sealed password (RSA-OAEP or ML-KEM, then AES-GCM).", "s",
        query(histogram_quantile(0.95, "passage_agent_decrypt_duration_seconds"), "p95", exemplar=True), width=8,
    ))
    d = d.with_panel(graph(
        15, "Directory latency (p95)", "The directory's part of a validation (search, bind, groups), per "
        "operation and outcome.", "s",
        query(histogram_quantile(0.95, "passage_agent_directory_duration_seconds", "le, operation, outcome"),
              "{{operation}} {{outcome}}", exemplar=True),
        width=8,
    ))
    d = d.with_panel(graph(
        16, "Agent validations by outcome", "The directory's verdicts and the agents' own refusals.", "reqps",
        query(rate_by("passage_agent_validations_total", "outcome"), "{{outcome}}"), width=8, stacked=True,
    ))
    return d


# --------------------------------------------------------------------------------------------
# 2. Agent fleet
# --------------------------------------------------------------------------------------------


def agent_fleet() -> db.Dashboard:
    d = base(
        "passage-agent-fleet",
        "Passage — agent fleet",
        "The agents as the dispatchers see them (their streams and heartbeats), per connector group "
        "and per dispatcher replica.",
    ).with_variable(prometheus_variable())

    connected = "passage_dispatcher_connected_agents"
    info = "passage_dispatcher_agent_info"
    d = d.with_row(db.Row("Connections").id(104))
    d = d.with_panel(single(
        1, "Agents", "Distinct agents connected to at least one dispatcher replica.", "short",
        query(f"count(count by (agent_id) ({info}))", "agents").instant(),
        steps((None, "red"), (1, "orange"), (2, "green")), width=4, height=8,
    ))
    d = d.with_panel(graph(
        2, "Connected agents per connector group", "Live agent streams, summed over the dispatcher "
        "replicas (an agent with a stream to two replicas counts twice).", "short",
        query(f"sum by (tenant, connector_group) ({connected})", "{{tenant}} / {{connector_group}}"), width=10,
    ))
    d = d.with_panel(graph(
        3, "Connected agents per dispatcher replica", "Live agent streams on each replica (its pod, or "
        "its scrape address).", "short",
        query(f"sum by (pod, instance, connector_group) ({connected})", "{{connector_group}} on {{pod}} {{instance}}"),
        width=10,
    ))

    d = d.with_row(db.Row("Load").id(105))
    capacity_dash = dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})
    load = graph(
        4, "In flight vs capacity per agent", "Validations outstanding on an agent (summed over the "
        "replicas relaying to it) against what it accepts at once (dashed).", "short",
        query(f"sum by (agent_id, connector_group) (passage_dispatcher_agent_in_flight)", "{{agent_id}} in flight", "A"),
        query(f"max by (agent_id, connector_group) (passage_dispatcher_agent_capacity)", "{{agent_id}} capacity", "B"),
        width=14,
    ).override_by_query("B", [capacity_dash])
    d = d.with_panel(load)
    d = d.with_panel(graph(
        5, "Agent validations by outcome", "Validations the agents answered, per second (the agents' own "
        "metrics: needs the passage-agent chart's PodMonitor).", "reqps",
        query(rate_by("passage_agent_validations_total", "outcome"), "{{outcome}}"), width=10, stacked=True,
    ))

    d = d.with_row(db.Row("Versions, certificates, directory servers").id(106))
    d = d.with_panel(
        table.Panel().show_header(True).id(6).title("Agent versions").description("One row per connected agent.")
        .datasource(PROMETHEUS).span(8).height(9)
        .with_target(instant_table(f"max by (agent_id, connector_group, version) ({info})"))
        .with_transformation(organize(["Time", "Value"], order=["connector_group", "agent_id", "version"]))
        .sort_by([cb.TableSortByFieldState().display_name("connector_group")])
    )
    days_left = (
        "min by (agent_id, connector_group) "
        "(passage_dispatcher_agent_certificate_expiry_timestamp_seconds - time()) / 86400"
    )
    d = d.with_panel(
        table.Panel().show_header(True).id(7).title("Certificate expiry (days left)")
        .description("Days until each agent's certificate expires. Agents renew at two-thirds of the "
                     "lifetime: under 14 days means renewals are failing (alert on it).")
        .datasource(PROMETHEUS).span(8).height(9).decimals(1)
        .thresholds(steps((None, "red"), (14, "orange"), (30, "green")))
        .with_target(instant_table(days_left))
        .with_transformation(organize(["Time"], rename={"Value": "days left"}))
        .override_by_name("days left", [colored_cells()])
        .sort_by([cb.TableSortByFieldState().display_name("days left")])
    )
    d = d.with_panel(
        table.Panel().show_header(True).id(8).title("Directory servers up per agent")
        .description("Directory servers each agent reaches, of those it knows (its last heartbeat).")
        .datasource(PROMETHEUS).span(8).height(9)
        .with_target(instant_table("max by (agent_id, connector_group) (passage_dispatcher_agent_directory_servers_up)", "A"))
        .with_target(instant_table("max by (agent_id, connector_group) (passage_dispatcher_agent_directory_servers)", "B"))
        .with_transformation(merge())
        .with_transformation(organize(["Time"], rename={"Value #A": "up", "Value #B": "known"}))
    )
    d = d.with_panel(
        table.Panel().show_header(True).id(9).title("Cloud versions")
        .description("The gateway and dispatcher builds running, per pod.")
        .datasource(PROMETHEUS).span(24).height(6)
        .with_target(instant_table(
            'max by (service, pod, instance, version) ('
            'label_replace(passage_gateway_build_info, "service", "gateway", "", "") or '
            'label_replace(passage_dispatcher_build_info, "service", "dispatcher", "", ""))'
        ))
        .with_transformation(organize(["Time", "Value"], order=["service", "pod", "instance", "version"]))
        .sort_by([cb.TableSortByFieldState().display_name("service")])
    )
    return d


# --------------------------------------------------------------------------------------------
# 3. Traces (Tempo)
# --------------------------------------------------------------------------------------------

SLOW_SIGN_INS = '{ resource.service.name = "passage-gateway" && name = "sign_in" && duration > 500ms }'
FAILED_SIGN_INS = '{ resource.service.name = "passage-gateway" && status = error }'

SPAN_TREE = """\
One sign-in is one trace across the three services (docs/observability.md, "What one sign-in looks like"):

```
passage-gateway     sign_in          username, client_id, connector_group, error_code on failure
└ passage-dispatcher  dispatch       username, connector_group
  └ relay            (one per agent tried: a retry after a lost agent is a second relay)
    └ passage-agent   validate       request_id, username
      ├ decrypt      RSA-OAEP + AES-GCM open, on the blocking pool
      └ authenticate directory search and bind
```

* A failed sign-in's `sign_in` span has status **error** and the Passage error code (`error_code`).
* A slow `sign_in` is usually a slow `authenticate` (the directory) or several `relay` spans (an agent lost on the way).
* A request refused before routing (`PSG90001`: empty password, over-long field) has no span, only a log line.
* The latency panels of *Passage — sign-ins* show exemplars: a point there opens its trace here.
"""


def trace_search(panel_id: int, title: str, description: str, traceql: str) -> table.Panel:
    return (
        table.Panel().show_header(True).id(panel_id).title(title).description(description).datasource(TEMPO).span(24).height(10)
        .with_target(tempo.TempoQuery().ref_id("A").datasource(TEMPO).query_type("traceql").query(traceql).limit(20))
    )


def traces() -> db.Dashboard:
    d = base(
        "passage-traces",
        "Passage — traces",
        "Sign-in traces in Tempo: the slow ones and the failed ones, and how a trace is laid out.",
    ).with_variable(tempo_variable())
    d = d.with_panel(trace_search(
        1, "Slow sign-ins (over 500 ms)", "The gateway's sign_in spans that took longer than 500 ms.", SLOW_SIGN_INS,
    ))
    d = d.with_panel(trace_search(
        2, "Failed sign-ins", "The gateway's spans marked as errors (a failed sign-in, with its error code).",
        FAILED_SIGN_INS,
    ))
    d = d.with_panel(
        text.Panel().id(3).title("The spans of a sign-in").span(24).height(11)
        .mode(tm.TextMode.MARKDOWN).content(SPAN_TREE)
    )
    return d


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

DASHBOARDS = {
    "sign-ins.json": sign_ins,
    "agent-fleet.json": agent_fleet,
    "traces.json": traces,
}

METRIC = re.compile(r"passage_[a-z0-9_]+")


def render() -> dict[str, str]:
    """Every file this writes: name -> text."""
    files: dict[str, str] = {}
    used: set[str] = set()
    for name, build in DASHBOARDS.items():
        model = json.loads(json.dumps(build().build(), cls=JSONEncoder))
        for expr in prometheus_exprs(model):
            used.update(METRIC.findall(expr))
        files[name] = json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    files["metrics-used.txt"] = "".join(f"{m}\n" for m in sorted(used))
    return files


def prometheus_exprs(model: dict) -> list[str]:
    """The PromQL of every panel's Prometheus queries (rows included)."""
    exprs = []
    stack = list(model.get("panels", []))
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if "expr" in target:
                exprs.append(target["expr"])
    return exprs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory to write to (default {OUT})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in render().items():
        (args.out / name).write_text(content, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
