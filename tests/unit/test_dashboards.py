"""deploy/grafana and deploy/prometheus: every metric they name is one the services export, the
alerting rules are well formed with their thresholds in one place, the dashboard is a valid model.

There is no promtool here: PromQL is read by a small tokenizer (metric names only), the rule
file's structure is checked in Python.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.broker.metrics import BrokerMetrics
from services.broker.pool import NodePool
from services.broker.transition import TransitionRecord
from services.chain_watcher.metrics import WatcherMetrics
from services.chain_watcher.service import SERVICE as CHAIN_WATCHER
from services.version_registry.metrics import RegistryMetrics
from shared.metrics import ServiceMetrics
from shared.versions import MLNodeVersion

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "mlnode-upgrade.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
MONITORING_COMPOSE = DEPLOY / "grafana" / "docker-compose.monitoring.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"

JOBS = {"chain-watcher": "chain-watcher", "version-registry": "version-registry", "broker": "broker"}
PROMETHEUS_OWN = {"up"}  # series Prometheus writes itself for every target
SEVERITIES = {"critical", "warning", "info"}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")

# -- PromQL: the metric names an expression reads ---------------------------------------------------

KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")  # [5m], [$__rate_interval], subqueries [1h:1m]
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")  # Grafana's $__range, ${var}
_LABEL_VALUES = re.compile(r"label_values\(\s*([^,()]*?(?:\{[^{}]*\})?)\s*(?:,\s*\w+\s*)?\)")
_TOKEN = re.compile(r"(?P<number>\.?\d[\w.]*)|(?P<ident>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Identifiers that are not functions, aggregations, keywords, labels or literals."""
    text = _LABEL_VALUES.sub(r" \1 ", expr)  # Grafana's label_values(metric, label)
    text = _STRING.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    names: set[str] = set()
    for token in _TOKEN.finditer(text):
        ident = token.group("ident")
        if ident is None or token.group("call") or ident.lower() in KEYWORDS:
            continue
        names.add(ident)
    return names


def numbers(expr: str) -> set[str]:
    """The numeric literals and range windows of an expression (not inside label matchers)."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    windows = {w.strip("[]") for w in _RANGE.findall(text) if not w.startswith("[$")}
    text = _RANGE.sub(" ", text)
    literals = {t.group("number") for t in _TOKEN.finditer(text) if t.group("number")}
    return windows | literals


# -- What the services export ----------------------------------------------------------------------

_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


class _Switch:
    """A switch under way: what the broker's scrape-time collector reads of `BrokerStatus`."""

    def __init__(self) -> None:
        self.record: TransitionRecord | None = TransitionRecord(
            transition_id="100-v3.0.8",
            target=MLNodeVersion("v3.0.8"),
            previous=MLNodeVersion("v3.0.6"),
            stop=(MLNodeVersion("v3.0.6"),),
            height=100,
            nodes=("node-1", "node-2"),
            started_at=1_700_000_000.0,
        )

    def switch_running(self) -> bool:
        return True


def exposed(registry: CollectorRegistry) -> set[str]:
    """Every sample name `registry` exposes, or would once a labelled series is set."""
    names: set[str] = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


def broker_registry() -> CollectorRegistry:
    metrics = ServiceMetrics("broker")  # as services.broker.service.build_broker builds them
    BrokerMetrics(metrics, NodePool()).follow_switch(_Switch())
    return metrics.registry


def chain_watcher_registry() -> CollectorRegistry:
    metrics = ServiceMetrics(CHAIN_WATCHER)  # as services.chain_watcher.service builds them
    WatcherMetrics(metrics)
    return metrics.registry


def registry_registry() -> CollectorRegistry:
    return RegistryMetrics("version-registry").registry


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exposed(broker_registry()) | exposed(chain_watcher_registry()) | exposed(registry_registry())


def missing(exprs: dict[str, list[str]], known: set[str]) -> dict[str, list[str]]:
    """Where -> the names its expressions read that no service exports."""
    found = {
        where: sorted(name for expr in group for name in metric_names(expr) if name not in known)
        for where, group in exprs.items()
    }
    return {where: names for where, names in found.items() if names}


# -- The files -------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs(model: dict[str, Any]) -> dict[str, list[str]]:
    exprs: dict[str, list[str]] = {}
    for panel in all_panels(model["panels"]):
        for target in panel.get("targets", []):
            exprs.setdefault(f"panel {panel['id']} {panel['title']!r}", []).append(target["expr"])
    for annotation in model.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            exprs.setdefault(f"annotation {annotation['name']!r}", []).append(annotation["expr"])
    for variable in model.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            expr = query.get("query", "") if isinstance(query, dict) else str(query)
            exprs.setdefault(f"variable {variable['name']!r}", []).append(expr)
    return exprs


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


_THRESHOLD_LINE = re.compile(r"^#\s+(MLNodeUpgrade\w+)\s+(expr|for)\s+(\S+)(?:\s.*)?$")


def threshold_table() -> dict[tuple[str, str], set[str]]:
    """(alert, "expr" | "for") -> the values alerts.yml's header lists for it."""
    table: dict[tuple[str, str], set[str]] = {}
    for line in ALERTS.read_text().splitlines():
        if (match := _THRESHOLD_LINE.match(line)) is not None:
            alert, where, value = match.groups()
            table.setdefault((alert, where), set()).add(value)
    return table


def threshold_problems(rule: dict[str, Any], table: dict[tuple[str, str], set[str]]) -> list[str]:
    """How `rule` disagrees with the threshold table (0 and 1 are not thresholds)."""
    name = rule["alert"]
    listed_expr = table.get((name, "expr"), set())
    listed_for = table.get((name, "for"), set())
    used = {n for n in numbers(rule["expr"]) if n not in {"0", "1"}}
    problems = [f"{name}: {n} in expr is not in the threshold table" for n in sorted(used - listed_expr)]
    problems += [f"{name}: table lists {n} but expr does not use it" for n in sorted(listed_expr - used)]
    if listed_for != {rule.get("for")}:
        problems.append(f"{name}: for is {rule.get('for')!r}, the table lists {sorted(listed_for)}")
    return problems


# -- The extractor itself (so the checks below can fail) ---------------------------------------------


def test_the_extractor_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'sum by (job, le) (rate(mlnode_upgrade_x_bucket{job=~"$jobs", result!="ok"}[$__rate_interval]))'
        " / on (instance) group_left (version) mlnode_upgrade_y > bool 0.5"
        " and scalar(max(mlnode_upgrade_z)) - mlnode_upgrade_w offset 5m unless vector(1) or time() > 1e3"
    )
    assert metric_names(expr) == {
        "mlnode_upgrade_x_bucket",
        "mlnode_upgrade_y",
        "mlnode_upgrade_z",
        "mlnode_upgrade_w",
    }
    assert metric_names("histogram_quantile(0.99, sum(rate(a_bucket[5m:1m])) by (le))") == {"a_bucket"}
    assert metric_names('label_values(mlnode_upgrade_broker_nodes{job="broker"}, instance)') == {
        "mlnode_upgrade_broker_nodes"
    }
    assert numbers('rate(x{result=~"http_5.."}[15m]) > 0.05 and y <= 100') == {"15m", "0.05", "100"}


def test_an_unknown_name_is_reported_missing(exported: set[str]) -> None:
    bad = {
        "sample": [
            "sum(rate(mlnode_upgrade_broker_forwarded_total[5m]))"
            " / sum(rate(mlnode_upgrade_no_such_thing_total[5m]))",
            "mlnode_upgrade_broker_forward_wait_seconds > 1",  # a histogram has no bare sample
            "mlnode_upgrade_broker_pending_stops_total",  # a gauge has no _total
        ]
    }
    assert missing(bad, exported) == {
        "sample": [
            "mlnode_upgrade_broker_forward_wait_seconds",
            "mlnode_upgrade_broker_pending_stops_total",
            "mlnode_upgrade_no_such_thing_total",
        ]
    }


def test_a_threshold_missing_from_the_table_is_reported() -> None:
    rule = {"alert": "MLNodeUpgradeX", "expr": "rate(x[5m]) > 7", "for": "2m"}
    table = {("MLNodeUpgradeX", "expr"): {"5m", "8"}, ("MLNodeUpgradeX", "for"): {"2m"}}
    assert threshold_problems(rule, table) == [
        "MLNodeUpgradeX: 7 in expr is not in the threshold table",
        "MLNodeUpgradeX: table lists 8 but expr does not use it",
    ]


def test_the_services_export_the_new_upgrade_series(exported: set[str]) -> None:
    assert {
        "mlnode_upgrade_broker_switch_running",
        "mlnode_upgrade_broker_switch_remaining_nodes",
        "mlnode_upgrade_broker_switch_started_timestamp_seconds",
        "mlnode_upgrade_broker_switch_height",
        "mlnode_upgrade_registry_next_plan_height",
        "mlnode_upgrade_registry_blocks_to_next_plan",
        "mlnode_upgrade_registry_last_used_version",
        "process_start_time_seconds",
    } <= exported


# -- The dashboard ---------------------------------------------------------------------------------


def test_every_metric_the_dashboard_reads_is_exported(exported: set[str]) -> None:
    exprs = dashboard_exprs(dashboard())
    assert sum(len(group) for group in exprs.values()) > 40
    assert missing(exprs, exported | PROMETHEUS_OWN) == {}


def test_the_dashboard_is_a_grafana_model_on_the_prometheus_variable() -> None:
    model = dashboard()
    assert 36 <= model["schemaVersion"] <= 41 and model["uid"] and model["title"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = list(all_panels(model["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    no_source = [p["title"] for p in panels if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}"]
    assert no_source == [], f"panels without the ${{DS_PROMETHEUS}} datasource: {no_source}"
    for panel in panels:
        if panel["type"] == "row":
            continue
        targets = panel["targets"]
        assert targets and all(t["expr"].strip() for t in targets), panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in targets), panel["title"]


def test_the_dashboard_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard()["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[x, y]!r}"
                cells[x, y] = panel["title"]


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    names = {
        name
        for group in dashboard_exprs(dashboard()).values()
        for expr in group
        for name in metric_names(expr)
    }
    assert {
        "mlnode_upgrade_registry_current_version",
        "mlnode_upgrade_registry_last_used_version",
        "mlnode_upgrade_chain_height",
        "mlnode_upgrade_registry_last_height",
        "mlnode_upgrade_chain_watcher_cursor_height",
        "mlnode_upgrade_registry_pending_plans",
        "mlnode_upgrade_registry_blocks_to_next_plan",
        "mlnode_upgrade_broker_nodes_ready",
        "mlnode_upgrade_broker_nodes",
        "mlnode_upgrade_broker_target_ready",
        "mlnode_upgrade_broker_in_flight",
        "mlnode_upgrade_broker_forwarded_total",
        "mlnode_upgrade_broker_forward_wait_seconds_bucket",
        "mlnode_upgrade_broker_transition_seconds_bucket",
        "mlnode_upgrade_broker_node_handoff_seconds_bucket",
        "mlnode_upgrade_broker_pending_stops",
        "mlnode_upgrade_broker_stop_failures_total",
        "mlnode_upgrade_broker_stops_confirmed_total",
        "mlnode_upgrade_events_received_total",
        "mlnode_upgrade_events_invalid_total",
        "mlnode_upgrade_events_handled_total",
        "mlnode_upgrade_handler_errors_total",
    } <= names


# -- The alerting rules ----------------------------------------------------------------------------


def test_every_metric_the_alerts_read_is_exported(exported: set[str]) -> None:
    exprs = {f"alert {rule['alert']}": [rule["expr"]] for rule in rules()}
    assert missing(exprs, exported | PROMETHEUS_OWN) == {}


def test_the_rule_file_has_the_prometheus_structure() -> None:
    loaded = load_yaml(ALERTS)
    assert set(loaded) == {"groups"}
    group_names = [group["name"] for group in loaded["groups"]]
    assert len(group_names) == len(set(group_names))
    for group in loaded["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["rules"], group["name"]
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)), names
    for rule in rules():
        name = rule["alert"]
        assert set(rule) <= RULE_KEYS, f"{name}: unknown keys {set(rule) - RULE_KEYS}"
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        assert DURATION.match(str(rule.get("for", ""))), f"{name}: no `for` duration"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: no severity"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name}: no summary"
        assert annotations.get("description", "").strip(), f"{name}: no description"
        for text in (rule["expr"], *annotations.values()):
            assert text.count("{{") == text.count("}}"), f"{name}: unbalanced template in {text!r}"
        expr = _STRING.sub('""', rule["expr"])
        for opening, closing in ("()", "[]", "{}"):
            assert expr.count(opening) == expr.count(closing), f"{name}: unbalanced {opening}{closing}"


def test_every_threshold_is_in_the_table_at_the_top_of_the_rule_file() -> None:
    table = threshold_table()
    listed = {alert for alert, _ in table}
    names = {rule["alert"] for rule in rules()}
    assert listed - names == set(), f"the table lists alerts that do not exist: {listed - names}"
    assert [p for rule in rules() for p in threshold_problems(rule, table)] == []


def test_the_alerts_cover_the_upgrade_and_the_services() -> None:
    exprs = " ".join(rule["expr"] for rule in rules())
    for needed in (
        "mlnode_upgrade_broker_switch_remaining_nodes",
        "mlnode_upgrade_broker_switch_started_timestamp_seconds",
        "mlnode_upgrade_broker_pending_stops",
        "mlnode_upgrade_broker_target_ready",
        "mlnode_upgrade_registry_blocks_to_next_plan",
        "mlnode_upgrade_registry_last_height",
        "mlnode_upgrade_events_invalid_total",
        "mlnode_upgrade_handler_errors_total",
        "mlnode_upgrade_chain_websocket_connected",
        "up{",
    ):
        assert needed in exprs, needed


# -- Prometheus and Grafana wiring -----------------------------------------------------------------


def compose_http_ports() -> dict[str, str]:
    """Compose service -> the HTTP port it listens on (its `*_HTTP_PORT`)."""
    services = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    return {
        name: port
        for name, service in services.items()
        for key, port in (service.get("environment") or {}).items()
        if key.endswith("_HTTP_PORT") and name in JOBS
    }


def test_prometheus_scrapes_the_three_services_at_their_compose_ports_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS)
    assert config["rule_files"] == ["alerts.yml"]
    assert (PROMETHEUS.parent / config["rule_files"][0]).is_file()
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    ports = compose_http_ports()
    assert set(ports) == set(JOBS)
    for service, job in JOBS.items():
        assert targets[job] == [f"{service}:{ports[service]}"], job
    # The alerts and the dashboard select the services by these job names.
    job_regex = "|".join(JOBS.values())
    assert all(f'job=~"{job_regex}"' in rule["expr"] for rule in rules() if rule["expr"].startswith("up"))
    jobs_variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "jobs")
    assert set(jobs_variable["query"].split("|")) == set(JOBS.values())


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    sources = load_yaml(PROVISIONING / "datasources.yml")
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(PROVISIONING / "dashboards.yml")["providers"]
    compose = load_yaml(MONITORING_COMPOSE)["services"]
    mounts = dict(volume.split(":")[:2] for volume in compose["grafana"]["volumes"])
    assert mounts["./grafana/mlnode-upgrade.json"].startswith(provider["options"]["path"] + "/")
    for host in mounts:
        if host.startswith("./"):
            assert (DEPLOY / host).exists(), host
    for host in (v.split(":")[0] for v in compose["prometheus"]["volumes"]):
        if host.startswith("./"):
            assert (DEPLOY / host / "prometheus.yml").is_file(), host
