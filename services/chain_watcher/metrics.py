"""The chain-watcher's own series, on the service's registry (names are a public contract)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from shared.metrics import PREFIX, ServiceMetrics

__all__ = ["WatcherMetrics"]


class WatcherMetrics:
    """The chain-watcher's own series, on the service's registry."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        r = metrics.registry
        self.blocks_seen = Counter(
            f"{PREFIX}_chain_blocks_seen_total", "Blocks published to chain.block", registry=r
        )
        self.blocks_backfilled = Counter(
            f"{PREFIX}_chain_blocks_backfilled_total",
            "Blocks no websocket event announced, found from /status and fetched with /block",
            registry=r,
        )
        self.height_waits = Counter(
            f"{PREFIX}_chain_height_waits_total",
            "Times a height was asked for before the query node served it (frame ahead, node lagging)",
            registry=r,
        )
        self.frames_contradicted = Counter(
            f"{PREFIX}_chain_frames_contradicted_total",
            "Websocket frames whose hash differs from the block the query node serves",
            registry=r,
        )
        self.chain_replaced = Counter(
            f"{PREFIX}_chain_replaced_total",
            "Times the node served another chain than the cursor's (a reset chain); the cursor started over",
            registry=r,
        )
        self.blocks_skipped = Counter(
            f"{PREFIX}_chain_blocks_skipped_total",
            "Blocks beyond max_backfill_blocks, never published",
            registry=r,
        )
        self.plans_published = Counter(
            f"{PREFIX}_chain_plans_published_total", "Partial upgrades announced (new or changed)", registry=r
        )
        self.plans_refused = Counter(
            f"{PREFIX}_chain_plans_refused_total", "Partial upgrades that cannot be announced", registry=r
        )
        self.versions_published = Counter(
            f"{PREFIX}_chain_versions_published_total", "Chain MLNodeVersion snapshots published", registry=r
        )
        self.reconnects = Counter(
            f"{PREFIX}_chain_websocket_reconnects_total", "Websocket reconnect attempts", registry=r
        )
        self.malformed_frames = Counter(
            f"{PREFIX}_chain_malformed_frames_total", "Websocket frames logged and skipped", registry=r
        )
        self.errors = Counter(
            f"{PREFIX}_chain_watcher_errors_total", "Failed steps, by cause", ["kind"], registry=r
        )
        self.websocket_connected = Gauge(
            f"{PREFIX}_chain_websocket_connected", "1 while subscribed to NewBlock", registry=r
        )
        self.chain_height = Gauge(
            f"{PREFIX}_chain_height", "Newest height the query node serves (/status, /block)", registry=r
        )
        self.websocket_height = Gauge(
            f"{PREFIX}_chain_websocket_height", "Newest height a websocket frame claimed", registry=r
        )
        self.cursor_height = Gauge(
            f"{PREFIX}_chain_watcher_cursor_height", "Last height published and persisted", registry=r
        )
        self.lag = Gauge(f"{PREFIX}_chain_lag_blocks", "Chain height minus the cursor", registry=r)
