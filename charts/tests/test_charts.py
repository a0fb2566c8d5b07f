"""Renders Passage's Helm charts with the real Helm template engine and checks what comes out.

* Every value set in values/ renders with Helm itself (helm-python-sdk embeds Helm v4's Go SDK
  as a shared library: no helm binary), its values pass values.schema.json (checked by Helm
  and again here with jsonschema), and every rendered manifest validates, strictly, against
  the Kubernetes OpenAPI schemas of KUBE_VERSION (kubernetes-validate).
* Every value set in values/invalid/ fails to render, with the message its "# expect:" lines
  name (a wrong type, an unknown key, a missing required Secret...).
* The TOML the charts write parses, and names only fields the services' config structs know
  (the services refuse unknown fields), and the charts cover every field those structs have.
* The init-container scripts run (POSIX sh) in a scratch directory laid out as the kubelet
  would, and, when the Passage binaries are built, a dispatcher, a gateway and an agent start
  from exactly what the charts render and the `helm test` command signs in through them.

Run from the repository root:  python -m pytest charts/tests -q
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

CHARTS = Path(__file__).resolve().parents[1]
REPO = CHARTS.parent
VALUES = CHARTS / "tests" / "values"
INVALID = VALUES / "invalid"
# A current Kubernetes; the grpcTLS probe set needs 1.37 (grpc.mode is new there).
KUBE_VERSION = os.environ.get("PASSAGE_KUBE_VERSION", "1.31.0")
RELEASE = "passage"
NAMESPACE = "passage"

# (chart, values file, Kubernetes version to validate against)
VALID_SETS = [
    ("passage", "passage-defaults.yaml", KUBE_VERSION),
    ("passage", "passage-ha.yaml", KUBE_VERSION),
    ("passage", "passage-external-postgres.yaml", KUBE_VERSION),
    ("passage", "passage-dev-plaintext.yaml", KUBE_VERSION),
    ("passage", "passage-grpc-tls-probes.yaml", "1.37.0"),
    ("passage-agent", "agent-ldap.yaml", KUBE_VERSION),
    ("passage-agent", "agent-ldap-failover.yaml", KUBE_VERSION),
    ("passage-agent", "agent-static-secret-state.yaml", KUBE_VERSION),
]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@functools.cache
def chart(name: str) -> helm.Chart:
    return helm.Chart.load(CHARTS / name)


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(chart_name: str, values: dict, release: str = RELEASE) -> list[dict]:
    """Renders like `helm template` and returns the manifests, each with its template name."""
    rendered = chart(chart_name).render(
        copy.deepcopy(values), name=release, namespace=NAMESPACE, is_install=True
    )
    manifests = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template__"] = template
                manifests.append(doc)
    return manifests


def notes(chart_name: str, values: dict, upgrade: bool = False) -> str:
    rendered = chart(chart_name).render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE,
                                        is_install=not upgrade, is_upgrade=upgrade)
    return next(text for name, text in rendered.items() if name.endswith("NOTES.txt"))


def by_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[dict], kind: str, name: str) -> dict:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)} among " + ", ".join(
        f"{m['kind']}/{m['metadata']['name']}" for m in manifests
    )
    return found[0]


def strip(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "__template__"}


def pod_spec(workload: dict) -> dict:
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def container(spec: dict, name: str) -> dict:
    for c in spec.get("initContainers", []) + spec["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def config_file(manifests: list[dict], configmap: str, key: str) -> dict:
    return tomllib.loads(one(manifests, "ConfigMap", configmap)["data"][key])


@functools.cache
def rendered_set(chart_name: str, values_file: str) -> list[dict]:
    return render(chart_name, load_values(VALUES / values_file))


# --------------------------------------------------------------------------------------------
# Every valid value set: renders, passes the schema, validates against Kubernetes' schemas
# --------------------------------------------------------------------------------------------


PROMETHEUS_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def validate_monitor(doc: dict) -> None:
    """ServiceMonitor and PodMonitor are Prometheus Operator CRDs that kubernetes-validate has
    no schema for: checked here against the fields the charts use (monitoring.coreos.com/v1)."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec", "__template__"}
    assert set(doc["metadata"]) <= {"name", "namespace", "labels", "annotations"}
    spec = doc["spec"]
    endpoints_key = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}[doc["kind"]]
    assert set(spec) <= {"selector", "namespaceSelector", endpoints_key, "jobLabel"}
    assert spec["selector"]["matchLabels"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec[endpoints_key]
    for endpoint in spec[endpoints_key]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] and endpoint["path"].startswith("/")
        for key in ("interval", "scrapeTimeout"):
            assert PROMETHEUS_DURATION.match(endpoint.get(key, "1s")), (key, endpoint)


MONITOR_KINDS = {"ServiceMonitor", "PodMonitor"}


@pytest.mark.parametrize("chart_name,values_file,kube", VALID_SETS)
def test_renders_and_validates(chart_name, values_file, kube):
    manifests = rendered_set(chart_name, values_file)
    assert manifests, "nothing rendered"
    for doc in manifests:
        where = f"{doc['__template__']}: {doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE, where
        if doc["kind"] in MONITOR_KINDS:
            validate_monitor(doc)
            continue
        try:
            kubernetes_validate.validate(strip(doc), kube, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{where} is not valid Kubernetes {kube}: {err.message} at {list(err.path)}")
        except kubernetes_validate.SchemaNotFoundError as err:
            pytest.fail(f"{where}: {err.message}")


@pytest.mark.parametrize("chart_name,values_file,kube", VALID_SETS)
def test_values_match_schema(chart_name, values_file, kube):
    """The values, merged with the chart's defaults as Helm does, satisfy values.schema.json
    (Helm checks this while rendering; checked here too with an independent validator)."""
    schema = json.loads((CHARTS / chart_name / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    merged = chart(chart_name).merge_values(load_values(VALUES / values_file))
    jsonschema.Draft7Validator(schema).validate(merged)
    chart(chart_name).validate_schema(load_values(VALUES / values_file))


@pytest.mark.parametrize("chart_name", ["passage", "passage-agent"])
def test_lint_strict(chart_name):
    values_file = "passage-defaults.yaml" if chart_name == "passage" else "agent-ldap.yaml"
    report = helm.lint(
        CHARTS / chart_name,
        load_values(VALUES / values_file),
        strict=True,
        kube_version="v" + KUBE_VERSION,
        namespace=NAMESPACE,
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


# --------------------------------------------------------------------------------------------
# Invalid value sets fail, with a message that says what to fix
# --------------------------------------------------------------------------------------------


def invalid_sets():
    for path in sorted(INVALID.glob("*.yaml")):
        header = [line[2:] for line in path.read_text().splitlines() if line.startswith("# ")]
        chart_name = next(line.split(":", 1)[1].strip() for line in header if line.startswith("chart:"))
        expected = [line.split(":", 1)[1].strip() for line in header if line.startswith("expect:")]
        assert expected, f"{path.name}: no '# expect:' line"
        yield pytest.param(chart_name, path, expected, id=path.stem)


@pytest.mark.parametrize("chart_name,path,expected", list(invalid_sets()))
def test_invalid_values_fail_clearly(chart_name, path, expected):
    with pytest.raises(helm.HelmError) as failure:
        render(chart_name, load_values(path))
    message = str(failure.value)
    for text in expected:
        assert text in message, f"{path.name}: {text!r} not in the error:\n{message}"


# --------------------------------------------------------------------------------------------
# What the cloud chart renders
# --------------------------------------------------------------------------------------------


def workloads(manifests):
    return [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet", "Pod")]


@pytest.mark.parametrize("chart_name,values_file,kube", VALID_SETS)
def test_every_container_is_locked_down(chart_name, values_file, kube):
    for workload in workloads(rendered_set(chart_name, values_file)):
        spec = pod_spec(workload)
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, (where, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (where, c["name"], kind)


def test_defaults_render_the_cloud_side():
    m = rendered_set("passage", "passage-defaults.yaml")
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in m)
    assert kinds == [
        "ConfigMap/passage-dispatcher",
        "ConfigMap/passage-gateway",
        "Deployment/passage-dispatcher",
        "Deployment/passage-gateway",
        "NetworkPolicy/passage-dispatcher",
        "NetworkPolicy/passage-gateway",
        "PodDisruptionBudget/passage-dispatcher",
        "PodDisruptionBudget/passage-gateway",
        "Service/passage-dispatcher",
        "Service/passage-dispatcher-headless",
        "Service/passage-dispatcher-metrics",
        "Service/passage-gateway",
        "Service/passage-gateway-metrics",
        "ServiceAccount/passage",
    ]
    headless = one(m, "Service", "passage-dispatcher-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert {p["name"] for p in headless["spec"]["ports"]} == {"agent", "api"}
    assert one(m, "Deployment", "passage-dispatcher")["spec"]["replicas"] == 2
    assert one(m, "Deployment", "passage-gateway")["spec"]["replicas"] == 2
    for component in ("gateway", "dispatcher"):
        spread = pod_spec(one(m, "Deployment", f"passage-{component}"))["topologySpreadConstraints"]
        assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]


def test_tls_probes_use_what_works_with_tls():
    """Kubernetes' gRPC probe dials in plaintext; with TLS the gateway is probed over HTTPS —
    readiness on /readyz (a dispatcher and the store answer), liveness and startup on /healthz
    (the process answers) — and the dispatcher with a TCP check."""
    m = rendered_set("passage", "passage-defaults.yaml")
    gateway = container(pod_spec(one(m, "Deployment", "passage-gateway")), "gateway")
    dispatcher = container(pod_spec(one(m, "Deployment", "passage-dispatcher")), "dispatcher")
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        assert gateway[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
        assert dispatcher[probe]["tcpSocket"] == {"port": 8443}


def test_plaintext_uses_native_grpc_probes():
    m = rendered_set("passage", "passage-dev-plaintext.yaml")
    gateway = container(pod_spec(one(m, "Deployment", "passage-gateway")), "gateway")
    dispatcher = container(pod_spec(one(m, "Deployment", "passage-dispatcher")), "dispatcher")
    assert gateway["readinessProbe"]["grpc"] == {"port": 9443}
    assert gateway["livenessProbe"]["grpc"] == {"port": 9443, "service": "liveness"}
    assert dispatcher["readinessProbe"]["grpc"] == {"port": 8443}
    # A store outage makes the dispatcher not ready, never restarts it.
    assert dispatcher["livenessProbe"]["grpc"] == {"port": 8443, "service": "liveness"}
    assert dispatcher["startupProbe"]["grpc"] == {"port": 8443, "service": "liveness"}
    gw = config_file(m, "passage-gateway", "gateway.toml")
    assert gw["insecure_plaintext"] is True and "tls" not in gw and "dispatcher_tls" not in gw
    # The headless Service: every replica's address, for the gateway to spread its calls.
    assert gw["dispatcher_url"] == "http://passage-dispatcher-headless.passage.svc:8444"
    # No shared key in development: each replica makes its own, in a writable emptyDir.
    assert gw["signing_key_file"] == "/var/lib/passage/signing-key.der"


def test_grpc_tls_probes():
    m = rendered_set("passage", "passage-grpc-tls-probes.yaml")
    gateway = container(pod_spec(one(m, "Deployment", "passage-gateway")), "gateway")
    # Liveness asks the health service that stays serving while readiness says not ready.
    assert gateway["livenessProbe"]["grpc"] == {"port": 9443, "mode": "TLS", "service": "liveness"}
    assert gateway["readinessProbe"]["grpc"] == {"port": 9443, "mode": "TLS"}


def test_ha_scales_and_guards():
    m = rendered_set("passage", "passage-ha.yaml")
    for component in ("gateway", "dispatcher"):
        deployment = one(m, "Deployment", f"passage-{component}")
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        hpa = one(m, "HorizontalPodAutoscaler", f"passage-{component}")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["minReplicas"] == 3
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"passage-{component}"}
        pdb = one(m, "PodDisruptionBudget", f"passage-{component}")
        assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    gw_hpa = one(m, "HorizontalPodAutoscaler", "passage-gateway")
    assert {x["resource"]["name"] for x in gw_hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert one(m, "Service", "passage-dispatcher-agents")["spec"]["type"] == "LoadBalancer"
    assert len(by_kind(m, "ServiceMonitor")) == 2
    text = notes("passage", load_values(VALUES / "passage-ha.yaml"))
    assert "(agents outside must dial a name with one address per replica)" in text
    assert "WARNING" not in text and "not built" not in text


def test_ha_gateway_config():
    m = rendered_set("passage", "passage-ha.yaml")
    gw = config_file(m, "passage-gateway", "gateway.toml")
    assert gw["connector_groups"] == [{"name": "corp.example.com", "domains": ["corp.example.com", "example.com"]}]
    assert [c["id"] for c in gw["clients"]] == ["intranet", "passage-helm-test"]
    assert gw["lockout"] == {"threshold": 5, "directory_threshold": 10, "window_s": 600}
    assert gw["require_post_quantum"] is True
    assert gw["policies_file"] == "/etc/passage/policies/policies.yaml"
    assert gw["store_encryption_key_file"] == "/run/passage/store-key/store.key"
    # Administrator hashes come from the Secret and the values, assembled by prepare.sh.
    assert "admin_token_sha256" not in gw
    script = one(m, "ConfigMap", "passage-gateway")["data"]["prepare.sh"]
    assert "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" in script
    policies = yaml.safe_load(one(m, "ConfigMap", "passage-gateway-policies")["data"]["policies.yaml"])
    assert policies["policies"][0]["grant"] == "require_mfa"


def test_ha_network_policies():
    m = rendered_set("passage", "passage-ha.yaml")
    gw = one(m, "NetworkPolicy", "passage-gateway")["spec"]
    peers = gw["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}} in peers
    # The helm test pod may still reach the gateway.
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "test" for p in peers)
    dispatcher = one(m, "NetworkPolicy", "passage-dispatcher")["spec"]
    api_rule = next(r for r in dispatcher["ingress"] if r["ports"][0]["port"] == 8444)
    assert api_rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert set(dispatcher["policyTypes"]) == {"Ingress", "Egress"}


def test_helm_test_pod_signs_in_through_the_gateway():
    m = rendered_set("passage", "passage-ha.yaml")
    pod = one(m, "Pod", "passage-test-signin")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    signin = pod["spec"]["containers"][0]
    script = signin["command"][2]
    assert "passage signin" in script and "--ca-file /run/passage-test/ca/ca.crt" in script
    assert "< /run/passage-test/user/password" in script, "the password is read from stdin"
    env = {e["name"]: e for e in signin["env"]}
    assert env["GATEWAY_URL"]["value"] == "https://passage-gateway.passage.svc:9443"
    assert env["TEST_USER"]["valueFrom"]["secretKeyRef"]["name"] == "passage-test-user"


def test_signing_key_is_shared_from_a_secret():
    m = rendered_set("passage", "passage-defaults.yaml")
    gw = config_file(m, "passage-gateway", "gateway.toml")
    assert gw["signing_key_file"] == "/run/passage/signing-key/signing-key.der"
    volumes = {v["name"]: v for v in pod_spec(one(m, "Deployment", "passage-gateway"))["volumes"]}
    assert volumes["src-signing-key"]["secret"]["secretName"] == "passage-signing-key"


def test_external_postgres_dsn_from_a_secret():
    m = rendered_set("passage", "passage-external-postgres.yaml")
    gw = config_file(m, "passage-gateway", "gateway.toml")
    dispatcher = config_file(m, "passage-dispatcher", "dispatcher.toml")
    assert "store_url" not in gw and "store_url" not in dispatcher, "the DSN never lands in a ConfigMap"
    assert dispatcher["agent_tls"]["client_ca_file"] == "/run/passage/agent-client-ca/ca.crt"
    d_env = {e["name"]: e for e in container(pod_spec(one(m, "Deployment", "passage-dispatcher")), "dispatcher")["env"]}
    assert d_env["PASSAGE_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "passage-db-app", "key": "uri"}
    assert d_env["PGSSLROOTCERT"]["value"] == "/run/passage/store-ca/ca.crt"
    prepare = container(pod_spec(one(m, "Deployment", "passage-gateway")), "prepare")
    p_env = {e["name"]: e for e in prepare["env"]}
    assert p_env["STORE_URL_FROM_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "passage-db-app", "key": "uri"}
    store_rule = one(m, "NetworkPolicy", "passage-dispatcher")["spec"]["egress"][0]
    assert store_rule["to"] == [{"ipBlock": {"cidr": "10.20.30.0/24"}}]
    volumes = {v["name"]: v for v in pod_spec(one(m, "Deployment", "passage-gateway"))["volumes"]}
    assert volumes["policies"]["configMap"]["name"] == "corp-passage-policies"


def test_external_postgres_password_from_a_secret():
    m = rendered_set("passage", "passage-defaults.yaml")
    for component in ("gateway", "dispatcher"):
        env = {e["name"]: e for e in container(pod_spec(one(m, "Deployment", f"passage-{component}")), component)["env"]}
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "passage-postgres", "key": "password"}
        conf = config_file(m, f"passage-{component}", f"{component}.toml")
        assert conf["store_url"] == "postgres://passage@postgres.databases.svc:5432/passage?sslmode=verify-full"


# --------------------------------------------------------------------------------------------
# Metrics: metrics_listen, the ports, the ServiceMonitors and who may scrape
# --------------------------------------------------------------------------------------------


def port_names(ports: list[dict]) -> set[str]:
    return {p["name"] for p in ports}


def ingress_rule_for(policy: dict, port: int) -> dict:
    rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == port for p in r.get("ports", []))]
    assert len(rules) == 1, f"{len(rules)} ingress rules for port {port}"
    return rules[0]


def test_metrics_are_on_by_default():
    """Both services listen for Prometheus on metrics_listen, with a container port named
    "metrics" and a ClusterIP Service of its own (the other Services have no metrics port)."""
    m = rendered_set("passage", "passage-defaults.yaml")
    for component in ("gateway", "dispatcher"):
        conf = config_file(m, f"passage-{component}", f"{component}.toml")
        assert conf["metrics_listen"] == "0.0.0.0:9090", component
        c = container(pod_spec(one(m, "Deployment", f"passage-{component}")), component)
        assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in c["ports"], component
        service = one(m, "Service", f"passage-{component}-metrics")
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
        assert service["spec"]["selector"] == one(m, "Service", f"passage-{component}")["spec"]["selector"]
        assert service["metadata"]["labels"]["passage.dev/metrics"] == "true"
        # Any pod in the cluster may scrape (networkPolicy.metricsFrom empty).
        assert "from" not in ingress_rule_for(one(m, "NetworkPolicy", f"passage-{component}"), 9090)
    for name in ("passage-gateway", "passage-dispatcher", "passage-dispatcher-headless"):
        service = one(m, "Service", name)
        assert "metrics" not in port_names(service["spec"]["ports"]), name
        assert "passage.dev/metrics" not in service["metadata"]["labels"], name
    assert not by_kind(m, "ServiceMonitor"), "the ServiceMonitors are optional"
    text = notes("passage", load_values(VALUES / "passage-defaults.yaml"))
    assert "port 9090 of the ClusterIP Services passage-gateway-metrics and passage-dispatcher-metrics" in text
    assert "Any pod in the cluster may scrape" in text


def test_metrics_port_and_listen_host():
    values = load_values(VALUES / "passage-defaults.yaml")
    values["metrics"] = {"enabled": True, "port": 9464}
    values["listenHost"] = "::"
    m = render("passage", values)
    for component in ("gateway", "dispatcher"):
        assert config_file(m, f"passage-{component}", f"{component}.toml")["metrics_listen"] == "[::]:9464"
        c = container(pod_spec(one(m, "Deployment", f"passage-{component}")), component)
        assert next(p for p in c["ports"] if p["name"] == "metrics")["containerPort"] == 9464
        assert one(m, "Service", f"passage-{component}-metrics")["spec"]["ports"][0]["port"] == 9464
        ingress_rule_for(one(m, "NetworkPolicy", f"passage-{component}"), 9464)


def test_metrics_disabled():
    values = load_values(VALUES / "passage-defaults.yaml")
    values["metrics"] = {"enabled": False}
    m = render("passage", values)
    for component in ("gateway", "dispatcher"):
        assert "metrics_listen" not in config_file(m, f"passage-{component}", f"{component}.toml")
        c = container(pod_spec(one(m, "Deployment", f"passage-{component}")), component)
        assert "metrics" not in port_names(c["ports"])
        assert "metrics" not in port_names(one(m, "Service", f"passage-{component}")["spec"]["ports"])
        assert not [s for s in by_kind(m, "Service") if s["metadata"]["name"].endswith("-metrics")]
        policy = one(m, "NetworkPolicy", f"passage-{component}")
        assert not any(p["port"] == 9090 for r in policy["spec"]["ingress"] for p in r["ports"])
    assert "Metrics (Prometheus" not in notes("passage", values)


def test_servicemonitors_scrape_the_metrics_port():
    m = rendered_set("passage", "passage-ha.yaml")
    monitors = by_kind(m, "ServiceMonitor")
    assert sorted(d["metadata"]["name"] for d in monitors) == ["passage-dispatcher", "passage-gateway"]
    for monitor in monitors:
        validate_monitor(monitor)
        component = monitor["metadata"]["labels"]["app.kubernetes.io/component"]
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
        # The selector picks exactly the component's metrics Service, of all the Services.
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector["passage.dev/metrics"] == "true"
        services = [s for s in by_kind(m, "Service") if selector.items() <= s["metadata"]["labels"].items()]
        assert [s["metadata"]["name"] for s in services] == [f"passage-{component}-metrics"]
        assert port_names(services[0]["spec"]["ports"]) == {"metrics"}
        # Only the monitoring namespace may scrape.
        rule = ingress_rule_for(one(m, "NetworkPolicy", f"passage-{component}"), 9090)
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert "Scraped by the ServiceMonitors" in notes("passage", load_values(VALUES / "passage-ha.yaml"))


def test_servicemonitor_needs_metrics():
    values = load_values(VALUES / "passage-defaults.yaml")
    values["metrics"] = {"enabled": False, "serviceMonitor": {"enabled": True}}
    with pytest.raises(helm.HelmError) as failure:
        render("passage", values)
    assert "metrics.serviceMonitor.enabled needs metrics.enabled" in str(failure.value)


def test_metrics_port_must_be_its_own():
    values = load_values(VALUES / "passage-defaults.yaml")
    values["metrics"] = {"port": 8444}
    with pytest.raises(helm.HelmError) as failure:
        render("passage", values)
    assert "metrics.port 8444 is also dispatcher.ports.api" in str(failure.value)


def exposure_variants():
    """Every valid value set, and the cloud chart's defaults with each Service made reachable
    from outside the cluster."""
    for chart_name, values_file, _ in VALID_SETS:
        yield pytest.param(chart_name, load_values(VALUES / values_file), id=values_file)
    base = load_values(VALUES / "passage-defaults.yaml")
    for kind in ("LoadBalancer", "NodePort"):
        values = copy.deepcopy(base)
        values["gateway"]["service"] = {"type": kind}
        values["dispatcher"] = {"replicaCount": 1, "service": {"type": kind},
                                "agentService": {"enabled": True, "type": kind}}
        values["metrics"] = {"enabled": True, "port": 9464, "serviceMonitor": {"enabled": True}}
        yield pytest.param("passage", values, id=f"every-service-{kind}")


@pytest.mark.parametrize("chart_name,values", list(exposure_variants()))
def test_metrics_never_on_an_exposed_service(chart_name, values):
    """The metrics port (sign-in counts by error code, agent names) is on ClusterIP Services
    only: never on a LoadBalancer or NodePort, whatever the other Services' types."""
    m = render(chart_name, values)
    port = (values.get("metrics") or {}).get("port", 9090)
    for service in by_kind(m, "Service"):
        name = service["metadata"]["name"]
        metrics_ports = [p for p in service["spec"].get("ports", [])
                         if p["port"] == port or p.get("targetPort") in ("metrics", port) or p["name"] == "metrics"]
        if service["spec"].get("type", "ClusterIP") != "ClusterIP":
            assert not metrics_ports, f"{name} ({service['spec']['type']}) exposes the metrics port"
        if metrics_ports:
            assert name.endswith("-metrics"), f"{name}: the metrics port belongs on the metrics Services only"


@pytest.mark.parametrize("replicas", [
    {"replicaCount": 2},
    {"replicaCount": 1, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}},
])
def test_agent_service_needs_an_address_per_replica(replicas):
    """Behind the agent Service's one address an agent reaches one replica: with more than one
    the render fails, saying what to do, unless perReplicaAddresses says the name has one
    address per replica."""
    values = load_values(VALUES / "passage-defaults.yaml")
    values["dispatcher"] = copy.deepcopy(replicas) | {"agentService": {"enabled": True}}
    with pytest.raises(helm.HelmError) as failure:
        render("passage", values)
    message = str(failure.value)
    most = replicas.get("autoscaling", {}).get("maxReplicas", replicas["replicaCount"])
    assert f"dispatcher.agentService.enabled with up to {most} dispatcher replicas" in message
    assert "dispatcher.replicaCount: 1" in message and "one A record per replica" in message
    values["dispatcher"]["agentService"]["perReplicaAddresses"] = True
    assert one(render("passage", values), "Service", "passage-dispatcher-agents")
    # One replica, no autoscaling: nothing to acknowledge.
    values["dispatcher"] = {"replicaCount": 1, "agentService": {"enabled": True}}
    assert one(render("passage", values), "Service", "passage-dispatcher-agents")
    # No agent Service (agents dial the headless Service, or a name of their own): any count.
    values["dispatcher"] = copy.deepcopy(replicas)
    render("passage", values)


def docs_block(heading_text: str, lang: str) -> str:
    """The first fenced block of the given language after the line holding heading_text in
    docs/kubernetes.md."""
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    rest = docs[docs.index(heading_text):]
    match = re.search(rf"```{lang}\n(.*?)```", rest, re.S)
    assert match, f"no {lang} block after {heading_text!r}"
    return match.group(1)


def test_walkthrough_renders_and_names_what_the_gateways_dial():
    """docs/kubernetes.md's values render (one dispatcher replica behind the agents'
    LoadBalancer), and its dispatcher certificate names the host of the gateways'
    dispatcher_url: the headless Service."""
    values = yaml.safe_load(docs_block("`passage-values.yaml`:", "yaml"))
    m = render("passage", values)
    assert one(m, "Deployment", "passage-dispatcher")["spec"]["replicas"] == 1
    assert one(m, "Service", "passage-dispatcher-agents")["spec"]["type"] == "LoadBalancer"
    host = config_file(m, "passage-gateway", "gateway.toml")["dispatcher_url"].split("://")[1].rsplit(":", 1)[0]
    assert host == "passage-dispatcher-headless.passage.svc"
    for text in ("## 1. The secrets", "## Upgrading"):
        command = re.search(r"passage pki server --dir pki --name dispatcher.*?(?=\n\S|\n\s*\n|\n\s*kubectl)",
                            docs_block(text, "sh"), re.S).group(0)
        assert f"--san {host}" in command, (text, command)


def test_upgrade_notes_say_which_san_to_add():
    values = load_values(VALUES / "passage-defaults.yaml")
    upgrade = notes("passage", values, upgrade=True)
    assert "--san passage-dispatcher-headless.passage.svc" in upgrade
    assert "replace the Secret passage-dispatcher-tls" in upgrade
    assert "UPGRADE" not in notes("passage", values)
    # No TLS, or a dispatcher URL of the operator's own: nothing to say.
    assert "UPGRADE" not in notes("passage", load_values(VALUES / "passage-dev-plaintext.yaml"), upgrade=True)
    values["gateway"]["dispatcherUrl"] = "https://dispatcher.example.com:8444"
    assert "UPGRADE" not in notes("passage", values, upgrade=True)


def test_notes_are_current():
    """What both charts print names the Services the clients dial today, and nothing that has
    since been built as not built."""
    cloud = notes("passage", load_values(VALUES / "passage-ha.yaml"))
    assert "Dispatcher, for agents:           passage-dispatcher-headless.passage.svc:8443" in cloud
    assert "dispatcher: passage-dispatcher-headless.passage.svc (gateways)" in cloud
    for text in (cloud, notes("passage-agent", load_values(VALUES / "agent-ldap.yaml")),
                 notes("passage-agent", load_values(VALUES / "agent-ldap-failover.yaml"))):
        assert "not built" not in text and "WARNING" not in text
    agent = notes("passage-agent", load_values(VALUES / "agent-ldap.yaml"))
    assert "keeps a stream to every address" in agent


# --------------------------------------------------------------------------------------------
# What the agent chart renders
# --------------------------------------------------------------------------------------------


def test_agent_statefulset_with_volumes_and_enrolment():
    m = rendered_set("passage-agent", "agent-ldap.yaml")
    sts = one(m, "StatefulSet", "passage-passage-agent")
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    spec = pod_spec(sts)
    assert [c["name"] for c in spec["initContainers"]] == ["prepare", "enrol"]
    agent = container(spec, "agent")
    assert agent["args"] == ["run", "--config", "/etc/passage-agent/agent.toml"]
    # The health endpoint: the kubelet's only way in. Readiness is the dispatcher stream
    # (/healthz); liveness only a TCP check, so that a dispatcher outage restarts no agent.
    assert agent["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"}]
    assert agent["readinessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3,
    }
    assert agent["livenessProbe"] == {
        "tcpSocket": {"port": "health"}, "initialDelaySeconds": 10, "periodSeconds": 20, "timeoutSeconds": 2,
        "failureThreshold": 6,
    }
    assert "startupProbe" not in agent
    tokens = next(v for v in spec["volumes"] if v["name"] == "enrolment")
    assert tokens["secret"] == {"secretName": "passage-enrolment-tokens", "defaultMode": 0o440, "optional": True}
    conf = config_file(m, "passage-passage-agent", "agent.toml")
    assert conf["state_dir"] == "/var/lib/passage-agent/state"
    assert conf["tls"] == {"ca_file": "/run/passage/dispatcher-ca/ca.crt"}
    assert conf["directory"]["bind_password_file"] == "/run/passage/ldap-bind-password/password"
    assert conf["directory"]["user_filter"] == "(&(objectClass=user)(!(objectClass=computer)))"
    # The directory's CA Secret becomes its ca_file (the agent trusts exactly those CAs).
    assert conf["directory"]["ca_file"] == "/run/passage/ldap-ca/ca.crt"
    env = {e["name"]: e for e in agent["env"]}
    assert "SSL_CERT_FILE" not in env
    assert conf["health_listen"] == "0.0.0.0:8081"
    pdb = one(m, "PodDisruptionBudget", "passage-passage-agent")["spec"]
    assert pdb["maxUnavailable"] == 1
    # An agent left unready by a dispatcher outage must not block node drains.
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_agent_health_port_and_disabled():
    values = load_values(VALUES / "agent-ldap.yaml")
    values["health"] = {"enabled": True, "port": 9100}
    m = render("passage-agent", values)
    agent = container(pod_spec(one(m, "StatefulSet", "passage-passage-agent")), "agent")
    assert agent["ports"][0]["containerPort"] == 9100
    assert config_file(m, "passage-passage-agent", "agent.toml")["health_listen"] == "0.0.0.0:9100"
    values["health"] = {"enabled": False, "port": 9100}
    m = render("passage-agent", values)
    agent = container(pod_spec(one(m, "StatefulSet", "passage-passage-agent")), "agent")
    # No endpoint: no probes, no port, no health_listen.
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(agent)
    assert "ports" not in agent
    assert "health_listen" not in config_file(m, "passage-passage-agent", "agent.toml")
    for manifest in m:
        kubernetes_validate.validate(strip(manifest), KUBE_VERSION, strict=True)


def test_agent_with_several_domain_controllers():
    m = rendered_set("passage-agent", "agent-ldap-failover.yaml")
    directory = config_file(m, "passage-passage-agent", "agent.toml")["directory"]
    assert directory["urls"] == ["ldaps://dc1.corp.example.com", "ldaps://dc2.corp.example.com"]
    assert "url" not in directory
    assert directory["probe_interval_ms"] == 2000
    assert len(directory["pinned_certificates_sha256"]) == 2
    # No CA Secret: no ca_file (the pins alone, or the system roots).
    assert "ca_file" not in directory
    assert (directory["group_claim"], directory["nested_groups"], directory["max_group_depth"]) == ("dn", "recursive", 4)


def test_agent_url_and_urls_together_fail_clearly():
    values = load_values(VALUES / "agent-ldap-failover.yaml")
    values["config"]["directory"]["url"] = "ldaps://dc1.corp.example.com"
    with pytest.raises(helm.HelmError) as failure:
        render("passage-agent", values)
    assert "set url (one server), urls (several, tried in order) or dns_srv (found in DNS): one of the three" in str(failure.value)
    # An empty url beside urls is no url at all.
    values["config"]["directory"]["url"] = ""
    directory = config_file(render("passage-agent", values), "passage-passage-agent", "agent.toml")["directory"]
    assert "url" not in directory and len(directory["urls"]) == 2


def test_agent_finds_domain_controllers_in_dns():
    values = load_values(VALUES / "agent-ldap-failover.yaml")
    del values["config"]["directory"]["urls"]
    values["config"]["directory"]["dns_srv"] = {"domain": "corp.example.com", "site": "Paris", "name_servers": ["10.0.0.10"]}
    directory = config_file(render("passage-agent", values), "passage-passage-agent", "agent.toml")["directory"]
    assert directory["dns_srv"] == {"domain": "corp.example.com", "site": "Paris", "name_servers": ["10.0.0.10"]}
    assert "url" not in directory and "urls" not in directory
    # With a server list as well: refused, naming the three ways.
    values["config"]["directory"]["url"] = "ldaps://dc1.corp.example.com"
    with pytest.raises(helm.HelmError) as failure:
        render("passage-agent", values)
    assert "one of the three" in str(failure.value)
    # A scheme the agent does not know fails the schema.
    del values["config"]["directory"]["url"]
    values["config"]["directory"]["dns_srv"]["scheme"] = "ldapi"
    with pytest.raises(helm.HelmError) as failure:
        render("passage-agent", values)
    assert "scheme" in str(failure.value)


def test_agent_network_policy_is_egress_only():
    m = rendered_set("passage-agent", "agent-ldap.yaml")
    spec = one(m, "NetworkPolicy", "passage-passage-agent")["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert spec["ingress"] == []
    ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    assert {53, 8443, 636} <= ports


def test_agent_podmonitor_scrapes_the_health_port():
    """The agent serves /metrics beside /healthz: a PodMonitor scrapes the health port, and
    the NetworkPolicy lets in only metricsFrom there (the kubelet's probes come from the node,
    which a NetworkPolicy never blocks; the probes are unchanged)."""
    m = rendered_set("passage-agent", "agent-ldap-failover.yaml")
    monitor = one(m, "PodMonitor", "passage-passage-agent")
    validate_monitor(monitor)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "health", "path": "/metrics", "interval": "1m", "scrapeTimeout": "10s"}]
    sts = one(m, "StatefulSet", "passage-passage-agent")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    agent = container(pod_spec(sts), "agent")
    assert agent["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"}]
    assert agent["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert agent["livenessProbe"]["tcpSocket"] == {"port": "health"}
    spec = one(m, "NetworkPolicy", "passage-passage-agent")["spec"]
    assert spec["ingress"] == [{
        "ports": [{"port": 8081, "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
    }]
    assert {53, 8443, 636} <= {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    assert "scraped by the PodMonitor passage-passage-agent" in notes("passage-agent", load_values(VALUES / "agent-ldap-failover.yaml"))
    # Off by default: no PodMonitor, no ingress.
    assert not by_kind(rendered_set("passage-agent", "agent-ldap.yaml"), "PodMonitor")


def test_agent_podmonitor_needs_health_and_peers():
    values = load_values(VALUES / "agent-ldap-failover.yaml")
    values["health"] = {"enabled": False, "port": 8081}
    with pytest.raises(helm.HelmError) as failure:
        render("passage-agent", values)
    assert "metrics.podMonitor.enabled needs health.enabled" in str(failure.value)
    values = load_values(VALUES / "agent-ldap-failover.yaml")
    values["networkPolicy"]["metricsFrom"] = []
    with pytest.raises(helm.HelmError) as failure:
        render("passage-agent", values)
    assert "networkPolicy.metricsFrom is required with metrics.podMonitor.enabled" in str(failure.value)
    # Without a NetworkPolicy there is nothing to open.
    values["networkPolicy"]["enabled"] = False
    m = render("passage-agent", values)
    assert by_kind(m, "PodMonitor") and not by_kind(m, "NetworkPolicy")


def test_agent_state_from_a_secret():
    m = rendered_set("passage-agent", "agent-static-secret-state.yaml")
    spec = pod_spec(one(m, "StatefulSet", "passage-passage-agent"))
    assert "volumeClaimTemplates" not in one(m, "StatefulSet", "passage-passage-agent")["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["prepare"], "a pre-enrolled state needs no enrolment"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["state"]["emptyDir"]["medium"] == "Memory"
    assert volumes["state-secret"]["secret"]["secretName"] == "passage-agent-state"
    conf = config_file(m, "passage-passage-agent", "agent.toml")
    assert conf["directory"] == {"kind": "static", "path": "/run/passage/static-users/users.toml"}


# --------------------------------------------------------------------------------------------
# The TOML names only fields the services know, and the charts cover every field
# --------------------------------------------------------------------------------------------


def struct_fields(relative: str, struct: str) -> set[str]:
    text = (REPO / relative).read_text()
    match = re.search(r"pub struct %s \{(.*?)\n\}" % struct, text, re.S)
    assert match, f"{struct} not found in {relative}"
    return set(re.findall(r"^\s*pub (\w+):", match.group(1), re.M))


needs_sources = pytest.mark.skipif(
    not (REPO / "services" / "gateway" / "src" / "lib.rs").exists(), reason="the Rust sources are not beside the charts"
)

# Fields the charts write themselves (from Secrets, ports, paths) rather than take from
# values, and fields deliberately left out.
GATEWAY_MANAGED = {
    "grpc_listen", "http_listen", "dispatcher_url", "dispatcher_tls", "tls", "signing_key_file", "store_url",
    "insecure_plaintext", "policies_file", "store_encryption_key_file", "admin_token_sha256", "metrics_listen",
}
DISPATCHER_MANAGED = {"agent_listen", "api_listen", "agent_tls", "api_tls", "insecure_plaintext", "store_url", "store_encryption_key_file",
                      "metrics_listen"}  # metrics_listen: metrics.*
DISPATCHER_LEFT_OUT = {"dispatcher_id"}  # the host name, i.e. the pod name: one value for all replicas would be wrong
AGENT_MANAGED = {"state_dir", "tls", "insecure_plaintext", "health_listen"}  # health_listen: health.*
LDAP_MANAGED = {"bind_password_file", "ca_file"}  # from secrets.ldapBindPassword and secrets.ldapCa
LDAP_LEFT_OUT = {"bind_password"}  # passwords stay out of values: secrets.ldapBindPassword


def schema_props(chart_name: str, *path: str) -> set[str]:
    node = json.loads((CHARTS / chart_name / "values.schema.json").read_text())
    for key in path:
        node = node["properties"][key] if "properties" in node and key in node["properties"] else node[key]
    return set(node["properties"])


@needs_sources
def test_charts_cover_every_config_field():
    gateway = struct_fields("services/gateway/src/lib.rs", "GatewayConfig")
    assert schema_props("passage", "gateway", "config") | GATEWAY_MANAGED == gateway
    dispatcher = struct_fields("services/dispatcher/src/lib.rs", "DispatcherConfig")
    assert schema_props("passage", "dispatcher", "config") | DISPATCHER_MANAGED | DISPATCHER_LEFT_OUT == dispatcher
    agent = struct_fields("agent/src/lib.rs", "AgentConfig")
    assert schema_props("passage-agent", "config") | AGENT_MANAGED == agent
    schema = json.loads((CHARTS / "passage-agent" / "values.schema.json").read_text())
    ldap_schema = schema["properties"]["config"]["properties"]["directory"]["allOf"][0]["then"]["properties"]
    ldap = struct_fields("crates/directory/src/ldap.rs", "LdapConfig")
    assert (set(ldap_schema) - {"kind"}) | LDAP_MANAGED | LDAP_LEFT_OUT == ldap
    assert set(ldap_schema["group_search"]["properties"]) == struct_fields("crates/directory/src/ldap.rs", "GroupSearch")
    nested = {
        "lockout": ("crates/lockout/src/lib.rs", "LockoutConfig"),
        "throttle": ("crates/lockout/src/throttle.rs", "ThrottleConfig"),
        "mfa": ("services/gateway/src/access.rs", "MfaConfig"),
    }
    for key, (path, struct) in nested.items():
        assert schema_props("passage", "gateway", "config", key) == struct_fields(path, struct), key
    assert schema_props("passage", "gateway", "config", "connector_groups", "items") == struct_fields(
        "services/gateway/src/lib.rs", "ConnectorGroupRoute"
    )
    assert schema_props("passage", "gateway", "config", "clients", "items") == struct_fields(
        "services/gateway/src/lib.rs", "ClientRegistration"
    )


@needs_sources
@pytest.mark.parametrize("chart_name,values_file,kube", VALID_SETS)
def test_rendered_toml_names_known_fields(chart_name, values_file, kube):
    server_tls = struct_fields("crates/transport/src/lib.rs", "ServerTls")
    client_tls = struct_fields("crates/transport/src/lib.rs", "ClientTls")
    m = rendered_set(chart_name, values_file)
    if chart_name == "passage":
        gw = config_file(m, "passage-gateway", "gateway.toml")
        assert set(gw) <= struct_fields("services/gateway/src/lib.rs", "GatewayConfig")
        assert set(gw.get("tls", {})) <= server_tls and set(gw.get("dispatcher_tls", {})) <= client_tls
        d = config_file(m, "passage-dispatcher", "dispatcher.toml")
        assert set(d) <= struct_fields("services/dispatcher/src/lib.rs", "DispatcherConfig")
        assert set(d.get("agent_tls", {})) <= server_tls and set(d.get("api_tls", {})) <= server_tls
    else:
        a = config_file(m, "passage-passage-agent", "agent.toml")
        assert set(a) <= struct_fields("agent/src/lib.rs", "AgentConfig")
        assert set(a.get("tls", {})) <= client_tls
        known = struct_fields("crates/directory/src/ldap.rs", "LdapConfig") | {"kind", "path"}
        assert set(a["directory"]) <= known


# --------------------------------------------------------------------------------------------
# The init-container scripts, run as the kubelet would lay out the pod
# --------------------------------------------------------------------------------------------


@functools.cache
def busybox_path() -> str | None:
    """A PATH of busybox applets only, as in the prepare container's image (busybox), when
    busybox is installed here; else None (the scripts then run with /bin/sh and the
    system's tools)."""
    busybox = shutil.which("busybox")
    if not busybox:
        return None
    applets = Path(os.environ.get("PYTEST_BUSYBOX_DIR", f"/tmp/passage-chart-busybox-{os.getuid()}"))
    applets.mkdir(parents=True, exist_ok=True)
    subprocess.run([busybox, "--install", "-s", str(applets)], check=True)
    return str(applets)


class FakePod:
    """Lays out a rendered pod's volumes under `root` as the kubelet would (Secret files with
    their defaultMode, ConfigMap files, empty dirs) and runs its containers' commands there."""

    def __init__(self, root: Path, manifests: list[dict], workload: dict, secrets: dict[str, dict[str, bytes]]):
        self.root = root
        self.spec = pod_spec(workload)
        self.configmaps = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "ConfigMap"}
        self.secrets = secrets
        self.volumes = {v["name"]: v for v in self.spec["volumes"]}
        for claim in workload["spec"].get("volumeClaimTemplates", []):  # a PersistentVolume: a directory
            self.volumes[claim["metadata"]["name"]] = {"persistentVolumeClaim": {}}

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def mount(self, container_name: str) -> dict:
        c = container(self.spec, container_name)
        for mount in c.get("volumeMounts", []):
            target = self.path(mount["mountPath"])
            volume = self.volumes[mount["name"]]
            target.mkdir(parents=True, exist_ok=True)
            if "secret" in volume:
                source = volume["secret"]
                data = self.secrets.get(source["secretName"])
                if data is None:
                    assert source.get("optional"), f"Secret {source['secretName']} is missing"
                    continue
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    file = target / item["path"]
                    file.write_bytes(data[item["key"]])
                    file.chmod(source.get("defaultMode", 0o644))
            elif "configMap" in volume:
                for key, text in self.configmaps[volume["configMap"]["name"]].items():
                    (target / key).write_text(text)
        return c

    def env(self, c: dict) -> dict[str, str]:
        env = {"POD_NAME": "passage-agent-0"}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "secretKeyRef" in e.get("valueFrom", {}):
                ref = e["valueFrom"]["secretKeyRef"]
                if ref["name"] in self.secrets:
                    env[e["name"]] = self.secrets[ref["name"]][ref["key"]].decode()
        return env

    def run(self, container_name: str, extra_env: dict[str, str], check=True) -> subprocess.CompletedProcess:
        c = self.mount(container_name)
        assert c["command"][0] == "/bin/sh"
        script = self.path(c["command"][1])
        env = {"PATH": os.environ["PATH"], **self.env(c), **extra_env}
        shell = "/bin/sh"
        if container_name == "prepare" and busybox_path():
            # The prepare image is busybox: its sh and nothing but its applets.
            env["PATH"] = busybox_path()
            shell = str(Path(busybox_path()) / "sh")
        result = subprocess.run([shell, str(script)], env=env, capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, f"{container_name}: {result.stderr}{result.stdout}"
        return result


def prepare_env(pod: FakePod, config_template: str) -> dict[str, str]:
    return {
        "PREPARE_SRC": str(pod.path("/run/passage-src")),
        "PREPARE_INPUT": str(pod.path("/run/passage-input")),
        "PREPARE_RUN": str(pod.path("/run/passage")),
        "PREPARE_TEMPLATE": str(pod.path(config_template)),
    }


def cloud_secrets(material: dict[str, bytes] | None = None) -> dict[str, dict[str, bytes]]:
    m = material or {}
    return {
        "passage-store-key": {"store.key": m.get("store.key", b"c3RvcmUta2V5\n")},
        "passage-services-ca": {"ca.crt": m.get("services-ca.pem", b"CA\n")},
        "passage-dispatcher-tls": {"tls.crt": m.get("dispatcher.pem", b"C\n"), "tls.key": m.get("dispatcher-key.pem", b"K\n")},
        "passage-gateway-tls": {"tls.crt": m.get("gateway.pem", b"C\n"), "tls.key": m.get("gateway-key.pem", b"K\n")},
        "passage-gateway-client": {"tls.crt": m.get("gw.pem", b"C\n"), "tls.key": m.get("gw-key.pem", b"K\n")},
        "passage-signing-key": {"signing-key.der": m.get("signing-key.der", b"\x30\x00")},
        "passage-postgres": {"password": b"pw"},
        "passage-db-app": {"uri": m.get("uri", b"postgres://passage:s3cr%27t@db.example:5432/passage")},
        "passage-admin-tokens": {"admin-token-sha256": m.get("admin", ("# ops\n" + "a" * 64 + "\r\n\n" + "B" * 64 + "\n").encode())},
        "passage-test-user": {"username": b"alice@demo.passage.dev", "password": b"pw\n"},
    }


def test_prepare_copies_secrets_private_and_assembles_the_gateway_config(tmp_path):
    values = load_values(VALUES / "passage-ha.yaml")
    values["store"] = {"urlSecret": {"name": "passage-db-app", "key": "uri"}, "url": ""}
    m = render("passage", values)
    pod = FakePod(tmp_path, m, one(m, "Deployment", "passage-gateway"), cloud_secrets())
    pod.run("prepare", prepare_env(pod, "/etc/passage/template"))
    run = pod.path("/run/passage")
    for file in ["tls/tls.key", "tls/tls.crt", "dispatcher-client/tls.key", "signing-key/signing-key.der",
                 "store-key/store.key", "services-ca/ca.crt", "gateway.toml"]:
        mode = stat.S_IMODE((run / file).stat().st_mode)
        assert mode == 0o400, f"{file}: mode {oct(mode)}"
        assert (run / file).stat().st_uid == os.getuid()
    assert not (run / "admin-tokens").exists(), "the admin hashes are read, not copied"
    conf = tomllib.loads((run / "gateway.toml").read_text())
    assert conf["store_url"] == "postgres://passage:s3cr%27t@db.example:5432/passage"
    assert conf["admin_token_sha256"] == ["a" * 64, "B" * 64, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    assert conf["issuer"] == "https://login.example.com" and conf["lockout"]["threshold"] == 5


@pytest.mark.parametrize("bad,message", [
    ({"uri": b"postgres://p:it's@db/passage"}, "single quote"),
    ({"admin": b"not-a-hash\n"}, "each line must be a SHA-256"),
])
def test_prepare_refuses_bad_secret_contents(tmp_path, bad, message):
    values = load_values(VALUES / "passage-ha.yaml")
    values["store"] = {"urlSecret": {"name": "passage-db-app", "key": "uri"}, "url": ""}
    m = render("passage", values)
    pod = FakePod(tmp_path, m, one(m, "Deployment", "passage-gateway"), cloud_secrets(bad))
    result = pod.run("prepare", prepare_env(pod, "/etc/passage/template"), check=False)
    assert result.returncode != 0 and message in result.stderr


def test_agent_prepare_lays_out_a_pre_enrolled_state(tmp_path):
    m = rendered_set("passage-agent", "agent-static-secret-state.yaml")
    state = {f"0.{name}": f"{name}\n".encode() for name in ["agent-id", "agent-key.der", "sealing-key.bin", "agent-cert.pem", "tenant-ca.pem"]}
    secrets = {
        "passage-services-ca": {"ca.crt": b"CA\n"},
        "passage-demo-users": {"users.toml": b"[[users]]\n"},
        "passage-agent-state": state,
    }
    pod = FakePod(tmp_path, m, one(m, "StatefulSet", "passage-passage-agent"), secrets)
    env = prepare_env(pod, "/etc/passage-agent") | {"STATE_DIR": str(pod.path("/var/lib/passage-agent/state"))}
    pod.run("prepare", env)
    key = pod.path("/var/lib/passage-agent/state/agent-key.der")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.read_text() == "agent-key.der\n"
    assert stat.S_IMODE(pod.path("/run/passage/static-users/users.toml").stat().st_mode) == 0o400
    # Another replica's ordinal has no state in the Secret: refused, naming the key.
    shutil.rmtree(pod.path("/var/lib/passage-agent/state"))
    result = pod.run("prepare", env | {"POD_NAME": "passage-agent-1"}, check=False)
    assert result.returncode != 0 and '"1.agent-id"' in result.stderr


def test_agent_enrol_script_enrols_once(tmp_path):
    """enrol.sh runs `passage-agent register` (here a stand-in that records its call) only
    while the state holds no certificate, with the replica's own token in the environment."""
    m = rendered_set("passage-agent", "agent-ldap.yaml")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "passage-agent"
    fake.write_text('#!/bin/sh\necho "$@ token=$PASSAGE_ENROLMENT_TOKEN" >> "$CALLS"\nmkdir -p "$STATE_DIR"\necho cert > "$STATE_DIR/agent-cert.pem"\n')
    fake.chmod(0o755)
    secrets = {
        "passage-services-ca": {"ca.crt": b"CA\n"},
        "passage-ldap-bind": {"password": b"pw"},
        "corp-ldap-ca": {"ca.crt": b"CA\n"},
        "passage-enrolment-tokens": {"token-0": b"pet_zero\n", "token-1": b"pet_one"},
    }
    pod = FakePod(tmp_path / "pod", m, one(m, "StatefulSet", "passage-passage-agent"), secrets)
    calls = tmp_path / "calls"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STATE_DIR": str(pod.path("/var/lib/passage-agent/state")),
        "ENROLMENT_DIR": str(pod.path("/run/passage-input/enrolment")),
        "AGENT_CONFIG": str(pod.path("/etc/passage-agent/agent.toml")),
        "CALLS": str(calls),
        "POD_NAME": "passage-passage-agent-1",
    }
    first = pod.run("enrol", env)
    assert calls.read_text() == f"register --config {env['AGENT_CONFIG']} token=pet_one\n"
    again = pod.run("enrol", env)
    assert "nothing to do" in again.stdout and calls.read_text().count("register") == 1, first.stdout
    # A replica without a token (and no state) says which key is missing.
    result = pod.run("enrol", env | {"POD_NAME": "passage-passage-agent-2", "STATE_DIR": str(tmp_path / "other")}, check=False)
    assert result.returncode != 0 and '"token-2"' in result.stderr


# --------------------------------------------------------------------------------------------
# With the binaries built: start what the charts render, and run the helm test's sign-in
# --------------------------------------------------------------------------------------------

BINARIES = ["passage", "passage-gateway", "passage-dispatcher", "passage-agent"]


def binary_dir() -> Path | None:
    candidates = [os.environ.get("PASSAGE_BIN_DIR"), REPO / "target" / "release"]
    for candidate in candidates:
        if candidate and all((Path(candidate) / b).is_file() for b in BINARIES):
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, args, env, log: Path, ready: str, timeout=60) -> subprocess.Popen:
        out = log.open("w")
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready in log.read_text():
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{args[0]} did not print {ready!r}:\n{log.read_text()[-4000:]}")

    def stop(self):
        for proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def localise(text: str, pod: FakePod, replacements: dict[str, str]) -> str:
    """The rendered configuration, with the pod's absolute paths under the scratch root and
    the listeners on loopback (what differs between a pod and this machine)."""
    for mount in ["/run/passage/", "/var/lib/passage-agent/", "/etc/passage/", "/run/passage-test/"]:
        text = text.replace(mount, str(pod.path(mount)) + "/")
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


@pytest.fixture
def processes():
    running = Processes()
    yield running
    running.stop()


@pytest.mark.skipif(binary_dir() is None, reason="Passage binaries not built (cargo build --release, or set PASSAGE_BIN_DIR)")
def test_rendered_deployment_signs_in_end_to_end(tmp_path, processes):
    """Dispatcher, gateway and agent start from the ConfigMaps and init-container scripts the
    charts render (only paths and listen addresses moved to this machine; a SQLite store in
    place of PostgreSQL), and the `helm test` pod's command signs in through them."""
    src = binary_dir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in BINARIES:  # hard links: a rebuild meanwhile cannot change what runs
        try:
            os.link(src / name, bin_dir / name)
        except OSError:
            shutil.copy2(src / name, bin_dir / name)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RUST_LOG": "info", "HOME": str(tmp_path)}

    def cli(*args, stdin=None):
        result = subprocess.run([str(bin_dir / "passage"), *args], env=env, input=stdin, capture_output=True, timeout=120)
        assert result.returncode == 0, f"passage {' '.join(args)}: {result.stderr.decode()}"
        return result.stdout.decode()

    # The Secrets, made as docs/kubernetes.md makes them.
    pki = tmp_path / "pki"
    cli("pki", "init", "--dir", str(pki))
    cli("pki", "server", "--dir", str(pki), "--name", "dispatcher", "--san", "localhost")
    cli("pki", "server", "--dir", str(pki), "--name", "gateway", "--san", "localhost")
    cli("gateway", "certificate", "issue", "--dir", str(pki), "--name", "gw", "--tenant", "default")
    cli("store", "key", "create", "--out", str(tmp_path / "store.key"))
    signing_key = tmp_path / "signing-key.der"
    # The recipe in docs/kubernetes.md: PKCS#8 DER (genpkey's own DER output is SEC1, refused).
    subprocess.run(f"openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"
                   f" | openssl pkcs8 -topk8 -nocrypt -outform DER -out {signing_key}",
                   shell=True, check=True, capture_output=True)
    admin = cli("admin", "token")
    admin_token = admin.split("\n")[1].strip()
    admin_hash = re.search(r'admin_token_sha256 = \["([0-9a-f]{64})"\]', admin).group(1)
    store = f"sqlite://{tmp_path}/passage.db"
    material = {name: (pki / name).read_bytes() for name in
                ["services-ca.pem", "dispatcher.pem", "dispatcher-key.pem", "gateway.pem", "gateway-key.pem", "gw.pem", "gw-key.pem"]}
    material |= {"store.key": (tmp_path / "store.key").read_bytes(), "signing-key.der": signing_key.read_bytes(),
                 "uri": store.encode(), "admin": f"{admin_hash}\n".encode()}
    secrets = cloud_secrets(material)
    secrets["passage-test-user"] = {"username": b"alice@demo.passage.dev", "password": b"correct horse\n"}

    ports = {name: free_port() for name in ["agent", "api", "grpc", "http", "gateway-metrics", "dispatcher-metrics"]}
    values = load_values(VALUES / "passage-defaults.yaml")
    values["store"] = {"url": "", "urlSecret": {"name": "passage-db-app", "key": "uri"}}
    values["secrets"]["adminTokens"] = {"name": "passage-admin-tokens"}
    values["tests"] = {"signin": {"enabled": True, "existingSecret": "passage-test-user"}}
    m = render("passage", values)
    listen = {
        '"0.0.0.0:8443"': f'"127.0.0.1:{ports["agent"]}"', '"0.0.0.0:8444"': f'"127.0.0.1:{ports["api"]}"',
        '"0.0.0.0:9443"': f'"127.0.0.1:{ports["grpc"]}"', '"0.0.0.0:8080"': f'"127.0.0.1:{ports["http"]}"',
        "passage-dispatcher-headless.passage.svc:8444": f"localhost:{ports['api']}",
    }

    def start_service(component: str, ready: str):
        pod = FakePod(tmp_path / component, m, one(m, "Deployment", f"passage-{component}"), secrets)
        pod.run("prepare", prepare_env(pod, "/etc/passage/template"))
        config = tmp_path / f"{component}.toml"
        metrics = {'"0.0.0.0:9090"': f'"127.0.0.1:{ports[component + "-metrics"]}"'}
        config.write_text(localise(pod.path(f"/run/passage/{component}.toml").read_text(), pod, listen | metrics))
        c = container(pod.spec, component)
        assert c["args"] == ["--config", f"/run/passage/{component}.toml"]
        return processes.start([c["command"][0], "--config", str(config)], env | pod.env(c),
                               tmp_path / f"{component}.log", ready)

    start_service("dispatcher", "passage-dispatcher listening")
    start_service("gateway", "passage-gateway listening")

    # An enrolment token, the users file, then the agent chart's pod.
    token = cli("agent", "--store", store, "--store-encryption-key-file", str(tmp_path / "store.key"),
                "token", "create", "--connector-group", "demo.passage.dev", "--ttl", "10m").strip()
    hashed = cli("hash-password", stdin=b"correct horse\n").strip()
    users = f'[[users]]\nusername = "alice@demo.passage.dev"\npassword_hash = "{hashed}"\ndisplay_name = "Alice"\n'
    agent_values = {
        "replicaCount": 1,
        "config": {"dispatchers": [f"https://localhost:{ports['agent']}"], "connector_group": "demo.passage.dev",
                   "directory": {"kind": "static"}},
        "secrets": {"dispatcherCa": {"name": "passage-services-ca"}, "staticUsers": {"name": "passage-demo-users"}},
        "enrolment": {"tokenSecret": {"name": "passage-enrolment-tokens"}},
    }
    am = render("passage-agent", agent_values)
    agent_secrets = {
        "passage-services-ca": {"ca.crt": material["services-ca.pem"]},
        "passage-demo-users": {"users.toml": users.encode()},
        "passage-enrolment-tokens": {"token-0": f"{token}\n".encode()},
    }
    pod = FakePod(tmp_path / "agent", am, one(am, "StatefulSet", "passage-passage-agent"), agent_secrets)
    state = str(pod.path("/var/lib/passage-agent/state"))
    pod.run("prepare", prepare_env(pod, "/etc/passage-agent") | {"STATE_DIR": state})
    agent_config = tmp_path / "agent.toml"
    health_port = free_port()
    agent_config.write_text(localise(pod.path("/etc/passage-agent/agent.toml").read_text(), pod,
                                     {'"0.0.0.0:8081"': f'"127.0.0.1:{health_port}"'}))
    enrol_env = env | {"STATE_DIR": state, "ENROLMENT_DIR": str(pod.path("/run/passage-input/enrolment")),
                       "AGENT_CONFIG": str(agent_config), "POD_NAME": "passage-passage-agent-0"}
    enrolled = pod.run("enrol", enrol_env)
    assert "enrolled agent_id=" in enrolled.stdout, enrolled.stderr
    assert "nothing to do" in pod.run("enrol", enrol_env).stdout, "a restarted pod must not enrol again"
    agent = container(pod.spec, "agent")
    processes.start([agent["command"][0], *agent["args"][:-1], str(agent_config)], env | pod.env(agent),
                    tmp_path / "agent.log", "passage-agent started")

    # The helm test pod's own command, with its Secret files and the gateway on loopback.
    test_pod_manifest = one(m, "Pod", "passage-test-signin")
    test_pod = FakePod(tmp_path / "test", m, test_pod_manifest, secrets)
    signin = test_pod.mount("signin")
    script = localise(signin["command"][2], test_pod, {})
    test_env = env | test_pod.env(signin)
    test_env["GATEWAY_URL"] = f"https://localhost:{ports['grpc']}"
    deadline = time.monotonic() + 60
    while True:  # until the agent's stream is up and the gateway's key cache has seen it
        result = subprocess.run(["/bin/sh", "-ec", script], env=test_env, capture_output=True, text=True, timeout=60)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.returncode == 0, f"helm test sign-in failed: {result.stderr}\n" + (tmp_path / "gateway.log").read_text()[-3000:]
    assert "signed in as alice@demo.passage.dev" in result.stdout

    # The agent's readiness probe, as the kubelet would make it: 200 with a stream connected.
    probe = agent["readinessProbe"]["httpGet"]
    assert probe["port"] == "health" and agent["ports"][0]["name"] == "health"
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}{probe['path']}", timeout=10) as answer:
        assert answer.status == 200
        assert json.load(answer)["streams_connected"] >= 1

    # Prometheus scrapes what the charts expose: the gateway's and the dispatcher's
    # metrics_listen, the agent's health port.
    scraped = {}
    for service, port in (("gateway", ports["gateway-metrics"]), ("dispatcher", ports["dispatcher-metrics"]),
                          ("agent", health_port)):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            scraped[service] = answer.read().decode()
    assert re.search(r'^passage_gateway_sign_ins_total\{[^}]*outcome="success"[^}]*\} [1-9]', scraped["gateway"], re.M), scraped["gateway"]
    assert re.search(r"^passage_dispatcher_connected_agents\{[^}]*\} 1$", scraped["dispatcher"], re.M), scraped["dispatcher"]
    assert re.search(r'^passage_agent_validations_total\{outcome="success"\} [1-9]', scraped["agent"], re.M), scraped["agent"]

    # A wrong password is refused, and the administrator token from the Secret works.
    (test_pod.path("/run/passage-test/user/password")).chmod(0o600)
    (test_pod.path("/run/passage-test/user/password")).write_text("wrong\n")
    refused = subprocess.run(["/bin/sh", "-ec", script], env=test_env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "PSG" in refused.stderr
    token_file = tmp_path / "admin-token"
    token_file.write_text(admin_token)
    token_file.chmod(0o600)
    log = cli("admin", "signins", "--gateway", f"https://localhost:{ports['grpc']}", "--token-file", str(token_file),
              "--ca-file", str(pki / "services-ca.pem"))
    assert "alice@demo.passage.dev" in log
