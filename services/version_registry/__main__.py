"""`python -m services.version_registry`: the single writer of version state.

Settings come from `VERSION_REGISTRY_*` (NATS under `VERSION_REGISTRY_NATS__*`); SIGTERM stops it
cleanly, SIGKILL loses nothing.
"""

from __future__ import annotations

import asyncio

from services.version_registry.service import build_registry
from services.version_registry.settings import RegistrySettings
from shared.service_main import run_service, until_signalled


async def _serve(settings: RegistrySettings) -> None:
    async with build_registry(settings):
        await asyncio.Event().wait()  # until cancelled


async def run(settings: RegistrySettings) -> None:
    """Run until SIGTERM or SIGINT (also while still connecting)."""
    await until_signalled(_serve(settings))


def main() -> int:
    return run_service("version-registry", RegistrySettings, run, quiet=())


if __name__ == "__main__":
    raise SystemExit(main())
