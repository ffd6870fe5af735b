"""`python -m mock_mlnode --version v3.0.8 --port 8080`: one mock MLNode process.

Command-line options override `MOCK_MLNODE_*` settings; `--version` may repeat to serve several
versions from one process, `--fleet N` serves N virtual nodes addressed by their path segment.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from starlette.types import ASGIApp

from mock_mlnode.app import create_app
from mock_mlnode.settings import MockMLNodeSettings
from shared.http_serving import HttpServer
from shared.logging import configure_logging, get_logger
from shared.service_main import until_signalled
from shared.settings import SettingsError, load_settings

log = get_logger("mock_mlnode")


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m mock_mlnode", description=__doc__.splitlines()[0])
    parser.add_argument("--version", dest="versions", action="append", help="a version to serve (repeatable)")
    parser.add_argument("--node", dest="nodes", action="append", help="a node name (repeatable)")
    parser.add_argument("--fleet", dest="fleet_size", type=int, help="serve node-0..node-N-1")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--gpu-lock-path", help="lock file shared by the node's versions; {node} is replaced")
    parser.add_argument("--model-load-s", type=float, help="how long inference/up takes")
    parser.add_argument("--stream-chunk-delay-s", type=float)
    parser.add_argument("--completion-delay-s", type=float)
    parser.add_argument(
        "--gpu-busy-status",
        type=int,
        choices=(409, 500),
        help="answer to an up on a GPU another version holds",
    )
    parser.add_argument("--log-level")
    opts = vars(parser.parse_args(argv))
    return {k: v for k, v in opts.items() if v is not None}


async def _serve(app: ASGIApp, settings: MockMLNodeSettings) -> None:
    async with HttpServer(app, settings.host, settings.port, grace_s=5.0):
        await asyncio.Event().wait()  # until SIGTERM/SIGINT cancels it


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)
    try:
        env = load_settings(MockMLNodeSettings)
        settings = MockMLNodeSettings.model_validate({**env.model_dump(), **overrides})
    except (SettingsError, ValueError) as exc:
        print(f"mock_mlnode: {exc}", file=sys.stderr)
        return 2
    configure_logging("mock-mlnode", settings.log_level)
    log.info(
        "serving",
        extra={"versions": settings.versions, "nodes": len(settings.nodes), "port": settings.port},
    )
    try:
        asyncio.run(until_signalled(_serve(create_app(settings), settings)))
    except OSError as exc:  # the port is taken, the address is not this host's
        print(f"mock_mlnode: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
