"""Chaos: every service killed at every phase of an upgrade, NATS restarted, a cluster server lost,
an MLNode partitioned. After recovery the versions are right, the old version is stopped on every
node, the new one never is, and no request through the broker failed except those in flight on a
broker at the moment it was killed.

Run alone with `pytest -m chaos`. Each scenario prints one line of the outcome table.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from integration_tests.chaos_support import NEW, ChaosStack, Load, Outcome, health_url, until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

SERVICES = ("version-registry", "chain-watcher", "broker")
PHASES = ("before-height", "after-version-changed", "during-bring-up")


@pytest.fixture
async def chaos(tmp_path: Path) -> AsyncIterator[ChaosStack]:
    stack = ChaosStack(tmp_path / "stack")
    try:
        await stack.start()
        yield stack
    finally:
        await stack.close()


def report(outcome: Outcome) -> None:
    row = {"scenario": outcome.scenario, "converged": outcome.converged, **outcome.details}
    print(f"\n[chaos] {json.dumps(row)}")


async def upgrade_with(
    chaos: ChaosStack,
    phase: str,
    fault: Callable[[], Awaitable[None]],
    load: Load | None = None,
    *,
    stop_delay_s: float = 2.0,
) -> Load:
    """Drive one upgrade under load and call `fault` in `phase`."""
    load = load or Load(chaos.info.broker_url)
    load.start()
    target = await chaos.propose(blocks_ahead=3)
    if phase == "before-height":
        await chaos.advance_to(target - 1)
        await fault()
        await chaos.advance_to(target)
    elif phase == "after-version-changed":
        await chaos.slow_stops(stop_delay_s)  # the stops are in progress for a while after the switch
        await chaos.advance_to(target)

        async def switched() -> bool:
            return (await chaos.registry_state()).get("current_version") == NEW

        await until(switched, 30, "version.changed")
        await fault()
    elif phase == "during-bring-up":
        await chaos.advance_to(target)
        await until(chaos.new_version_loading, 30, "the new version loading its model")
        await fault()
    else:
        raise ValueError(phase)
    return load


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("service", SERVICES)
async def test_sigkill_a_service(chaos: ChaosStack, service: str, phase: str) -> None:
    load_box: list[Load] = []

    async def fault() -> None:
        if service == "broker":
            load_box[0].broker_going_down()
        chaos.kill(service)
        await chaos.wait_back(service, health_url(chaos.info, service))
        if service == "broker":
            load_box[0].broker_back()

    load = Load(chaos.info.broker_url)
    load_box.append(load)
    await upgrade_with(chaos, phase, fault, load)
    outcome = await chaos.verdict(f"SIGKILL {service} / {phase}", load)
    report(outcome)
    assert outcome.converged, outcome.details


async def test_a_request_issued_just_before_a_broker_kill_counts_as_in_flight_on_it() -> None:
    """The harness's own bookkeeping, without a stack: the load issues a request (creates its task)
    and `broker_going_down` runs before that task's first step. The request still goes to the
    broker being killed (under load, on a pooled keep-alive connection to the dying process: a
    `ReadError`), so it is one of the requests in flight at the kill."""
    with socket.socket() as bound:  # a port nobody listens on: the request breaks off at once
        bound.bind(("127.0.0.1", 0))
        load = Load(f"http://127.0.0.1:{bound.getsockname()[1]}")
        load.start()
        await asyncio.sleep(0)  # the load's loop runs once: issues request #0, which has not run yet
        load.broker_going_down()
        await load.stop()
    assert load.allowed == {0}
    assert [rid for rid, _ in load.failures] == [0] and load.unexpected_failures == []


async def test_nats_server_restart_mid_upgrade(chaos: ChaosStack) -> None:
    async def fault() -> None:
        chaos.kill("nats")
        await chaos.wait_back("nats", health_url(chaos.info, "nats") + "?js-enabled-only=true")

    load = await upgrade_with(chaos, "after-version-changed", fault)
    outcome = await chaos.verdict("SIGKILL nats (single server) / after-version-changed", load)
    report(outcome)
    assert outcome.converged, outcome.details


async def test_partitioned_mlnode_is_stopped_once_it_comes_back(chaos: ChaosStack) -> None:
    frozen = f"mlnode-node-1-{chaos.info.old_version}"

    async def fault() -> None:
        chaos.freeze(frozen)  # connections hang: a network partition as the broker sees it

    load = await upgrade_with(chaos, "before-height", fault)

    async def other_node_switched() -> bool:
        status = await chaos._json(f"{chaos.info.broker_url}/upgrade/status")
        return any(
            n["id"] == "node-2" and n["ready"] and n["version"] == NEW
            for n in (status or {}).get("nodes", [])
        )

    await until(other_node_switched, 30, "node-2 on the new version while node-1 is unreachable")
    chaos.thaw(frozen)
    outcome = await chaos.verdict("partition node-1's old MLNode / across the height", load)
    report(outcome)
    assert outcome.converged, outcome.details


async def test_full_upgrade_on_a_three_server_cluster_with_one_killed(tmp_path: Path) -> None:
    chaos = ChaosStack(tmp_path / "cluster", nats_servers=3)
    try:
        await chaos.start()

        async def fault() -> None:
            chaos.hold("nats-1")
            chaos.kill("nats-1")  # stays down for the rest of the upgrade

        load = await upgrade_with(chaos, "after-version-changed", fault)
        scenario = "SIGKILL 1 of 3 NATS servers (kept down) / after-version-changed"
        outcome = await chaos.verdict(scenario, load)
        report(outcome)
        assert outcome.converged, outcome.details
        assert "nats-1" not in chaos.stack.supervisor.pids()
    finally:
        await chaos.close()
