"""`python -m mock_chain --rpc-port 26657 --grpc-port 9090`: a chain that speaks the real protocols.

Command-line options override `MOCK_CHAIN_*` settings. `--block-time-s 0` makes blocks come only
from `POST /advance` (deterministic tests).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from mock_chain.server import MockChainServer
from mock_chain.settings import MockChainSettings
from shared.logging import configure_logging, get_logger
from shared.settings import SettingsError, load_settings

log = get_logger("mock_chain")


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m mock_chain", description=__doc__.splitlines()[0])
    parser.add_argument("--host")
    parser.add_argument("--rpc-port", type=int, help="CometBFT RPC and websocket (0: a free port)")
    parser.add_argument("--grpc-port", type=int, help="Cosmos gRPC queries (0: a free port)")
    parser.add_argument("--block-time-s", type=float, help="seconds between blocks; 0: only POST /advance")
    parser.add_argument("--voting-period-blocks", type=int, help="blocks from proposal to execution")
    parser.add_argument("--chain-id")
    parser.add_argument("--genesis-version", help="MLNodeVersion at genesis (default v3.0.8)")
    parser.add_argument("--block-retention-blocks", type=int, help="/block serves only the newest N (0: all)")
    parser.add_argument(
        "--query-lag-blocks", type=int, help="queries answer N blocks behind the websocket (a lagging node)"
    )
    parser.add_argument("--log-level")
    opts = vars(parser.parse_args(argv))
    return {k: v for k, v in opts.items() if v is not None}


async def serve(settings: MockChainSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await MockChainServer(settings).start()
    try:
        await stop.wait()
    finally:
        log.info("mock chain stopping", extra={"height": server.node.chain.height})
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)
    try:
        env = load_settings(MockChainSettings)
        settings = MockChainSettings.model_validate({**env.model_dump(), **overrides})
    except (SettingsError, ValueError) as exc:
        print(f"mock_chain: {exc}", file=sys.stderr)
        return 2
    configure_logging("mock-chain", settings.log_level)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
