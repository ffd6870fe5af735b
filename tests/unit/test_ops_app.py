from __future__ import annotations

import httpx

from shared.metrics import ServiceMetrics
from shared.ops_app import ReadinessCheck, make_ops_app


def _client(*checks: ReadinessCheck, metrics: ServiceMetrics | None = None) -> httpx.AsyncClient:
    app = make_ops_app(metrics or ServiceMetrics("broker"), checks)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops")


async def test_healthz_is_always_ok() -> None:
    async with _client(ReadinessCheck("nats", lambda: False)) as client:
        resp = await client.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok", "service": "broker"}


async def test_readyz_reports_each_check() -> None:
    async def streams() -> bool:
        return True

    def broken() -> bool:
        raise ConnectionError("nats down")

    async with _client(ReadinessCheck("streams", streams)) as client:
        ok = await client.get("/readyz")
    async with _client(ReadinessCheck("streams", streams), ReadinessCheck("nats", broken)) as client:
        bad = await client.get("/readyz")
    assert ok.status_code == 200 and ok.json()["status"] == "ready"
    assert bad.status_code == 503
    assert bad.json()["checks"] == {
        "streams": {"ok": True},
        "nats": {"ok": False, "error": "ConnectionError: nats down"},
    }


async def test_metrics_exposes_the_service_counters() -> None:
    metrics = ServiceMetrics("broker")
    metrics.events_invalid_total.labels(subject="chain.block", reason="json").inc()
    async with _client(metrics=metrics) as client:
        resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert 'mlnode_upgrade_events_invalid_total{reason="json",subject="chain.block"} 1.0' in resp.text
    assert metrics.sample("mlnode_upgrade_events_invalid_total", subject="chain.block", reason="json") == 1
    assert metrics.sample("mlnode_upgrade_events_handled_total", subject="chain.block") == 0


def test_two_services_in_one_process_do_not_collide() -> None:
    a, b = ServiceMetrics("a"), ServiceMetrics("b")
    a.events_handled_total.labels(subject="s").inc()
    assert b.sample("mlnode_upgrade_events_handled_total", subject="s") == 0
