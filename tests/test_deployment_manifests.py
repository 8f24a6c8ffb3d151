"""The multi-node deployment files agree with the code (issue 11). There is no docker engine or
cluster here, so this checks what can be checked without one:

- docker/compose.yaml: two AVA nodes of one image with distinct node ids, a balancer, PostgreSQL
  and Redis; every AVA_* variable is a real setting; readiness on /readyz; the stop grace period
  outlasts the drain.
- docker/nginx.conf: websocket-aware, long timeouts, the headers AVA rebuilds Twilio's signed URL
  from, and `nginx -t` passes (Debian's nginx; upstream host names swapped for 127.0.0.1).
- docker/k8s/*.yaml: each validates against the Kubernetes OpenAPI schemas bundled by
  `kubernetes-validate` (offline, strict: unknown fields fail), and the pieces fit together
  (selectors, probes on real routes, grace period = preStop + drain + margin, the HPA's metric
  is AVA's live-call gauge).
- docker/grafana/ava-dashboard.json: every metric a panel queries is one AVA exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from control.app import create_app
from control.metrics import Metrics
from control.settings import Settings
from tests.conftest import AssistantFactory, ScriptedEngines, settings_for
from tests.test_deploy import _env_names

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
# The oldest Kubernetes still commonly run, and the newest the bundled schemas know.
K8S_VERSIONS = ("1.27", kubernetes_validate.latest_version())
# Labels Prometheus adds when it scrapes (not AVA's own).
SCRAPE_LABELS = {"instance", "job", "pod", "namespace", "le"}


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return compose


def _ava_nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command") == ["ava", "serve"]
    }


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


# --- docker compose ------------------------------------------------------------------------------


def test_compose_runs_two_nodes_of_one_image_behind_a_balancer() -> None:
    compose = _compose()
    services = compose["services"]
    nodes = _ava_nodes(compose)
    assert len(nodes) == 2
    assert {"lb", "postgres", "redis", "migrate"} <= set(services)
    node_ids = {node["environment"]["AVA_NODE_ID"] for node in nodes.values()}
    assert len(node_ids) == 2  # distinct: each node's live calls are its own
    assert len({node["image"] for node in nodes.values()}) == 1
    assert len({yaml.safe_dump(node["build"]) for node in nodes.values()}) == 1
    for node in nodes.values():
        env = node["environment"]
        # Shared state: one database, one Redis, both services of this file.
        assert env["AVA_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert "@postgres:" in env["AVA_DATABASE_URL"]
        assert env["AVA_REDIS_URL"].startswith("redis://redis:")
        assert "ports" not in node  # reached through the balancer only
        # Ready means serving calls: the balancer waits for it.
        assert any("/readyz" in part for part in node["healthcheck"]["test"])
        # The drain runs to its end before docker's SIGKILL, with time to flush records.
        drain = float(env["AVA_DRAIN_SECONDS"])
        assert _seconds(node["stop_grace_period"]) >= drain + 10
        # Migrations run once, before either node, so two nodes never race on the schema.
        assert node["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        for name in ("postgres", "redis"):
            assert node["depends_on"][name]["condition"] == "service_healthy"
            assert "healthcheck" in services[name]
    assert services["migrate"]["command"] == ["ava", "db", "upgrade"]
    lb = services["lb"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert set(lb["depends_on"]) == set(nodes)
    assert all(dep["condition"] == "service_healthy" for dep in lb["depends_on"].values())


def test_every_ava_variable_in_the_deployment_is_a_setting() -> None:
    known = set(_env_names())
    used: set[str] = set()
    for service in _compose()["services"].values():
        used |= set(service.get("environment") or {})
    configmap = next(d for d in _k8s_documents() if d["kind"] == "ConfigMap")
    used |= set(configmap["data"])
    for document in _k8s_documents():
        for container in _containers(document):
            used |= {env["name"] for env in container.get("env", [])}
    # Names written in comments (how to create the Secret, what to set) count too.
    text = "".join(path.read_text() for path in _deployment_files())
    used |= set(re.findall(r"\b(AVA_[A-Z0-9_]+)\b", text))
    ours = {name for name in used if name.startswith("AVA_")}
    assert ours - known == set(), f"not AVA settings: {sorted(ours - known)}"
    assert {"AVA_NODE_ID", "AVA_REDIS_URL", "AVA_DRAIN_SECONDS", "AVA_PUBLIC_URL"} <= ours


def _deployment_files() -> list[Path]:
    return [
        DOCKER / "compose.yaml",
        DOCKER / "nginx.conf",
        *sorted((DOCKER / "k8s").glob("*.yaml")),
    ]


# --- nginx -------------------------------------------------------------------------------------


def _nginx_conf() -> str:
    return (DOCKER / "nginx.conf").read_text()


def test_nginx_balances_the_compose_nodes_with_websockets_and_signed_urls() -> None:
    conf = _nginx_conf()
    nodes = _ava_nodes(_compose())
    upstreams = set(re.findall(r"^\s*server\s+([\w.-]+:\d+)", conf, re.M))
    assert upstreams == {
        f"{name}:{node['environment']['AVA_PORT']}" for name, node in nodes.items()
    }
    for directive in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        # Twilio's signature covers the URL it requested, port included.
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-Host $http_host;",
        "proxy_set_header X-Forwarded-Proto $forwarded_proto;",
        "proxy_buffering off;",
    ):
        assert directive in conf, directive
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        seconds = re.search(rf"{timeout}\s+(\d+)s;", conf)
        assert seconds and int(seconds.group(1)) >= 3600, timeout  # as long as a call
    # A POST a node answered is never replayed on the other (it may have placed a call).
    assert "non_idempotent" not in conf
    assert "listen 80;" in conf and "8000:80" in _compose()["services"]["lb"]["ports"]


def local_nginx_conf(upstreams: list[str], listen: str, prefix: Path) -> Path:
    """docker/nginx.conf for this machine: the nodes at `upstreams`, listening on `listen`,
    its pid file under `prefix`. Everything else is the file as shipped."""
    conf = _nginx_conf()
    pattern = re.compile(r"^(\s*server\s+)[\w.-]+:\d+", re.M)
    assert len(pattern.findall(conf)) == len(upstreams)
    given = iter(upstreams)
    conf = pattern.sub(lambda match: match.group(1) + next(given), conf)
    conf = conf.replace("listen 80;", f"listen {listen};")
    conf = conf.replace("pid /tmp/nginx.pid;", f"pid {prefix / 'nginx.pid'};")
    conf = conf.replace("access_log /dev/stdout ", f"access_log {prefix / 'access.log'} ")
    # Debian's compiled-in temp paths are root's: a CI user without root keeps them in `prefix`.
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = conf.replace("http {\n", "http {\n" + temp_paths, 1)
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_binary() -> str:
    """Debian's nginx (installed by .ci/run); missing: skipped, or failed when CI=true."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (CI=true: .ci/run installs Debian's nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    nginx = nginx_binary()
    conf = local_nginx_conf(["127.0.0.1:8001", "127.0.0.1:8002"], "127.0.0.1:18080", tmp_path)
    result = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    # And a broken file is refused: the check can fail.
    conf.write_text(conf.read_text().replace("proxy_http_version 1.1;", "proxy_http_version;"))
    result = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0


# --- Kubernetes ----------------------------------------------------------------------------------


def _k8s_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return documents


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", []))


def _one(kind: str) -> dict[str, Any]:
    [document] = [d for d in _k8s_documents() if d["kind"] == kind]
    return document


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    documents = _k8s_documents()
    kinds = {d["kind"] for d in documents}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "Job",
    } <= kinds
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)
    # The validation is real: a misspelt field fails it.
    deployment = _one("Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 50
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


def _config() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap")["data"]
    return data


def test_k8s_pods_drain_within_their_grace_period_and_probe_real_routes(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    # Stopping: preStop (the endpoints drop the pod), then the drain, then the flush.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(_config()["AVA_DRAIN_SECONDS"])
    margin = pod["terminationGracePeriodSeconds"] - float(pre_stop[1]) - drain
    assert 10 <= margin <= 30, margin
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # Probes: readiness on /readyz (503 while draining), liveness on a route that exists.
    routes = {
        getattr(route, "path", None)
        for route in create_app(
            settings_for(assistant_file(), tmp_path), engines=ScriptedEngines([], [])
        ).routes
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes, probe
        assert container[probe]["httpGet"]["port"] == container["ports"][0]["name"]
    assert container["ports"][0]["containerPort"] == int(_config()["AVA_PORT"])
    # Each pod is its own node, named after the pod.
    [node_id] = [e for e in container["env"] if e["name"] == "AVA_NODE_ID"]
    assert node_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert _one("ConfigMap")["metadata"]["name"] in sources
    # The migration Job runs what the pods skip.
    [job] = _containers(_one("Job"))
    assert job["command"] == ["ava", "db", "upgrade"] and container["command"] == ["ava", "serve"]
    assert job["image"] == container["image"]


def test_k8s_service_pdb_and_hpa_select_the_deployment() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert "sessionAffinity" not in service["spec"]  # any pod may take any request
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    ingress = _one("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] == service["spec"]["ports"][0]["name"]


def _exported() -> dict[str, tuple[str, set[str]]]:
    """Every sample name AVA's /metrics renders → (its family's type, its labels)."""
    metrics = Metrics(live_calls=lambda: 0)
    # Children with labels appear only once used: touch one of each labelled metric.
    metrics.calls_started.labels(transport="twilio")
    metrics.calls_ended.labels(reason="customer-ended-call")
    metrics.turns.labels(interrupted="false")
    metrics.provider_errors.labels(provider="p", stage="stt", retryable="true")
    metrics.provider_reconnects.labels(provider="p", stage="stt")
    metrics.analysis_parts.labels(part="summary", outcome="ok")
    exported: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            labels = exported.setdefault(sample.name, (family.type, set()))[1]
            labels |= set(sample.labels)
    return exported


def test_the_hpa_scales_on_live_calls_per_pod_within_capacity() -> None:
    hpa = _one("HorizontalPodAutoscaler")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    kind, _labels = _exported()[name]
    assert (name, kind) == ("ava_active_calls", "gauge")
    target = float(metric["pods"]["target"]["averageValue"])
    [container] = _containers(_one("Deployment"))
    cores = float(container["resources"]["requests"]["cpu"])
    # README's capacity benchmark: ~100 calls per core without an outbound gap. The target
    # leaves headroom under it, and under the pod's hard ceiling.
    assert 0.5 * 100 * cores <= target <= 0.8 * 100 * cores
    assert target < int(_config()["AVA_MAX_CALLS"]) <= 100 * cores
    assert hpa["spec"]["minReplicas"] >= 2  # a rolling restart always has another node
    # Scale-down drains a pod's calls: never faster than one pod per grace period.
    policies = hpa["spec"]["behavior"]["scaleDown"]["policies"]
    assert all(p["value"] == 1 and p["type"] == "Pods" for p in policies)


def test_settings_default_drain_matches_the_deployments() -> None:
    default = Settings.model_fields["drain_seconds"].default
    assert float(_config()["AVA_DRAIN_SECONDS"]) == default
    for node in _ava_nodes(_compose()).values():
        assert float(node["environment"]["AVA_DRAIN_SECONDS"]) == default


# --- Grafana -------------------------------------------------------------------------------------


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana" / "ava-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"])
    return queries


def test_the_grafana_dashboard_queries_only_metrics_ava_exports() -> None:
    exported = _exported()
    queries = _dashboard_queries()
    assert len(queries) >= 10
    referenced: set[str] = set()
    for query in queries:
        names = set(re.findall(r"\bava_[a-z0-9_]+\b", query))
        referenced |= names
        unknown = names - set(exported)
        assert not unknown, f"{query}: not exported by control/metrics.py: {unknown}"
        labels = set().union(*(exported[name][1] for name in names)) | SCRAPE_LABELS
        used = set(re.findall(r"\bby \(([^)]*)\)", query))
        used_labels = {label.strip() for group in used for label in group.split(",")}
        used_labels |= set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", query))
        assert used_labels <= labels, f"{query}: no such labels {used_labels - labels}"
    # Every family AVA exports has a panel (a new metric without one fails here).
    families = {name.removesuffix("_total").removesuffix("_bucket") for name in exported}
    families = {name for name in families if not name.endswith(("_sum", "_count", "_created"))}
    shown = {name.removesuffix("_total").removesuffix("_bucket") for name in referenced}
    assert families - shown == set(), f"metrics without a panel: {sorted(families - shown)}"
