"""How each service's `__main__` runs: settings, logging, then the service until a signal.

One entry-point shape for the three services: settings that do not validate exit 2 with the
reason, the service then runs in the event loop, and SIGTERM or SIGINT end it cleanly (also while
it is still connecting). A start-up failure that is the environment's (a port taken, a bad
address) exits 1 with one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from shared.logging import configure_logging
from shared.settings import ServiceSettings, SettingsError, load_settings

__all__ = ["run_service", "until_signalled"]

S = TypeVar("S", bound=ServiceSettings)


async def until_signalled(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until it returns or SIGTERM/SIGINT cancels it."""
    task = asyncio.create_task(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _main(run: Callable[[S], Awaitable[None]], settings: S) -> None:
    await run(settings)


def run_service(
    name: str,
    settings_type: type[S],
    run: Callable[[S], Awaitable[None]],
    *,
    quiet: tuple[str, ...] = ("httpx",),
    on_start: Callable[[S], None] | None = None,
) -> int:
    """The whole `main()` of a service; returns the process's exit code."""
    try:
        settings = load_settings(settings_type)
    except SettingsError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    configure_logging(name, settings.log_level)
    for logger in quiet:  # httpx logs every request at INFO: polls and MLNode calls would drown the rest
        logging.getLogger(logger).setLevel(logging.WARNING)
    if on_start is not None:
        on_start(settings)
    try:
        asyncio.run(_main(run, settings))
    except (OSError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0
