"""`python -m services.broker`: hands every MLNode over at each version switch and forwards inference.

Settings come from `BROKER_*` (NATS under `BROKER_NATS__*`, nodes from `BROKER_NODES_FILE`);
SIGTERM stops it cleanly, SIGKILL loses nothing that a restart does not finish.
"""

from __future__ import annotations

from services.broker.service import run_broker
from services.broker.settings import BrokerSettings
from shared.service_main import run_service


def main() -> int:
    # `run_broker` handles the signals itself: a signal lets the switch in progress stop cleanly.
    return run_service("broker", BrokerSettings, run_broker)


if __name__ == "__main__":
    raise SystemExit(main())
