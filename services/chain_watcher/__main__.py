"""`python -m services.chain_watcher`: publish the chain's blocks, plans and version to NATS.

Configured from the environment (`CHAIN_WATCHER_RPC_URL`, `CHAIN_WATCHER_GRPC_ADDRESS`,
`CHAIN_WATCHER_NATS__URL`, ...; see `settings.py`). SIGTERM/SIGINT stop it cleanly; a SIGKILL at
any moment loses nothing, because the cursor only moves after JetStream acknowledged.
"""

from __future__ import annotations

from services.chain_watcher.service import SERVICE, ChainWatcher
from services.chain_watcher.settings import ChainWatcherSettings
from shared.logging import get_logger
from shared.service_main import run_service, until_signalled

log = get_logger("services.chain_watcher")


async def _run(settings: ChainWatcherSettings) -> None:
    await until_signalled(ChainWatcher(settings).run())
    log.info("chain-watcher stopped")


def _starting(settings: ChainWatcherSettings) -> None:
    log.info(
        "chain-watcher starting",
        extra={
            "rpc_url": settings.rpc_url,
            "grpc_address": settings.grpc_address,
            "nats": settings.nats.url,
            "bucket": settings.bucket,
        },
    )


def main() -> int:
    return run_service(SERVICE, ChainWatcherSettings, _run, on_start=_starting)


if __name__ == "__main__":
    raise SystemExit(main())
