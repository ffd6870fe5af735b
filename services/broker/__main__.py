"""`python -m services.broker`: hands every MLNode over at each version switch and forwards inference.

Settings come from `BROKER_*` (NATS under `BROKER_NATS__*`, nodes from `BROKER_NODES_FILE`);
SIGTERM stops it cleanly, SIGKILL loses nothing that a restart does not finish.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from services.broker.service import BrokerService
from services.broker.settings import BrokerSettings
from shared.logging import configure_logging
from shared.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings(BrokerSettings)
    except SettingsError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 2
    configure_logging("broker", settings.log_level)
    # One line per MLNode call at INFO would drown the switch's own lines (and lacks their fields).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        asyncio.run(BrokerService(settings).run())
    except (OSError, ValueError) as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
