"""The series the dashboard and the alerts need beyond the counters: the broker's switch (read at
scrape time from its record) and the registry's next plans and last-used version."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.samples import Sample

from services.broker.metrics import BrokerMetrics
from services.broker.pool import NodePool
from services.broker.transition import TransitionRecord
from shared.events import BlockCommitted, BrokerRefreshed, ChainVersionObserved, NodeOutcome, UpgradeScheduled
from shared.metrics import ServiceMetrics
from shared.versions import MLNodeVersion
from tests.unit.broker_fakes import running_on_v6, switch
from tests.unit.registry_fakes import registry_rig

V6, V8, V9 = MLNodeVersion("v3.0.6"), MLNodeVersion("v3.0.8"), MLNodeVersion("v3.0.9")
B = "mlnode_upgrade_broker_switch"
R = "mlnode_upgrade_registry"


@dataclass
class FakeSwitch:
    record: TransitionRecord | None = None
    running: bool = False

    def switch_running(self) -> bool:
        return self.running


def switch_series(metrics: ServiceMetrics) -> dict[str, float | None]:
    names = ("running", "height", "nodes", "remaining_nodes", "started_timestamp_seconds")
    series = {name: metrics.registry.get_sample_value(f"{B}_{name}") for name in names}
    series["finished"] = metrics.registry.get_sample_value(f"{B}_finished_timestamp_seconds")
    return series


def test_the_switch_series_follow_the_record_at_scrape_time() -> None:
    metrics = ServiceMetrics("broker")
    broker = BrokerMetrics(metrics, NodePool())
    assert metrics.registry.get_sample_value(f"{B}_running") is None  # nothing to read yet
    view = FakeSwitch()
    broker.follow_switch(view)
    assert switch_series(metrics) == {
        "running": 0,
        "height": 0,
        "nodes": 0,
        "remaining_nodes": 0,
        "started_timestamp_seconds": 0,
        "finished": 0,
    }
    record = TransitionRecord(
        transition_id="100-v3.0.8",
        target=V8,
        previous=V6,
        stop=(V6,),
        height=100,
        nodes=("a", "b", "c"),
        started_at=1_700_000_000.0,
    )
    record = record.with_outcome(NodeOutcome(node_id="a", outcome="ready"), 1_700_000_001.0)
    view.record, view.running = record, True
    assert switch_series(metrics) == {
        "running": 1,
        "height": 100,
        "nodes": 3,
        "remaining_nodes": 2,
        "started_timestamp_seconds": 1_700_000_000.0,
        "finished": 0,
    }
    for node in ("b", "c"):
        record = record.with_outcome(NodeOutcome(node_id=node, outcome="ready"), 1_700_000_042.0)
    view.record, view.running = record, False
    assert switch_series(metrics)["remaining_nodes"] == 0
    assert switch_series(metrics)["finished"] == 1_700_000_042.0
    assert switch_series(metrics)["running"] == 0


async def test_a_brokers_switch_shows_in_its_series_as_the_service_wires_them() -> None:
    h = await running_on_v6("a", "b")
    h.coordinator.metrics.follow_switch(h.coordinator.status)  # as build_broker does
    assert h.metrics.sample(f"{B}_height") == 0
    await switch(h)
    series = switch_series(h.metrics)
    assert series["running"] == 0 and series["remaining_nodes"] == 0 and series["nodes"] == 2
    assert series["height"] == 100
    started, finished = series["started_timestamp_seconds"], series["finished"]
    assert started is not None and finished is not None and 0 < started <= finished


async def test_the_registry_shows_each_versions_next_plan_and_the_last_used_version() -> None:
    rig = await registry_rig()
    metrics, service = rig.metrics, rig.service
    await service.submit(ChainVersionObserved(current_version=V6, height=90), seq=1)
    await service.submit(BlockCommitted(height=95), seq=2)
    await service.submit(UpgradeScheduled(height=100, node_version=V8), seq=3)
    await service.submit(UpgradeScheduled(height=130, node_version=V9), seq=4)
    assert metrics.sample(f"{R}_next_plan_height", version="v3.0.8") == 100
    assert metrics.sample(f"{R}_blocks_to_next_plan", version="v3.0.8") == 5
    assert metrics.sample(f"{R}_blocks_to_next_plan", version="v3.0.9") == 35
    assert metrics.registry.get_sample_value(f"{R}_pending_plans") == 2

    await service.submit(BlockCommitted(height=100), seq=5)  # v3.0.8 applies: its series go
    assert metrics.registry.get_sample_value(f"{R}_next_plan_height", {"version": "v3.0.8"}) is None
    assert metrics.sample(f"{R}_blocks_to_next_plan", version="v3.0.9") == 30
    assert metrics.sample(f"{R}_current_version", version="v3.0.8") == 1
    assert _last_used(metrics) == []  # until the broker reports a handover
    transition_id = service.latest.state.core.current_transition
    assert transition_id is not None
    await service.submit(BrokerRefreshed(transition_id=transition_id, version=V8))
    assert [(s.labels, s.value) for s in _last_used(metrics)] == [({"version": "v3.0.8"}, 1)]


def _last_used(metrics: ServiceMetrics) -> list[Sample]:
    return [
        sample
        for family in metrics.registry.collect()
        if family.name == f"{R}_last_used_version"
        for sample in family.samples
    ]
