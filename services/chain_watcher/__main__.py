"""`python -m services.chain_watcher`: publish the chain's blocks, plans and version to NATS.

Configured from the environment (`CHAIN_WATCHER_RPC_URL`, `CHAIN_WATCHER_GRPC_ADDRESS`,
`CHAIN_WATCHER_NATS__URL`, ...; see `settings.py`). SIGTERM/SIGINT stop it cleanly; a SIGKILL at
any moment loses nothing, because the cursor only moves after JetStream acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from services.chain_watcher.service import SERVICE, ChainWatcher
from services.chain_watcher.settings import ChainWatcherSettings
from shared.logging import configure_logging, get_logger
from shared.settings import SettingsError, load_settings

log = get_logger("services.chain_watcher")


async def _run(settings: ChainWatcherSettings) -> None:
    task = asyncio.create_task(ChainWatcher(settings).run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    log.info("chain-watcher stopped")


def main() -> int:
    try:
        settings = load_settings(ChainWatcherSettings)
    except SettingsError as exc:
        print(f"chain-watcher: {exc}", file=sys.stderr)
        return 2
    configure_logging(SERVICE, settings.log_level)
    # httpx logs every request at INFO; the watcher polls /status every few seconds.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log.info(
        "chain-watcher starting",
        extra={
            "rpc_url": settings.rpc_url,
            "grpc_address": settings.grpc_address,
            "nats": settings.nats.url,
            "bucket": settings.bucket,
        },
    )
    asyncio.run(_run(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
