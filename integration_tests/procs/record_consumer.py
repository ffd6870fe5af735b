"""A consumer process for crash tests: records every block it handles to a file, one per line.

    python -m integration_tests.procs.record_consumer NATS_URL OUT_FILE [HOLD_AT_HEIGHT]

With HOLD_AT_HEIGHT, the handler never returns for that block, leaving it in flight (unacked)
so that a test can kill the process at a known point.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from shared.bus import Bus
from shared.consumer import ConsumerSpec, Delivery, DurableConsumer, ensure_consumer
from shared.events import BlockCommitted, Event
from shared.settings import NatsSettings

SPEC = ConsumerSpec("CHAIN", "recorder", ("chain.block",), ack_wait_s=1.0, batch=8)


async def main(url: str, out: Path, hold_at: int | None) -> None:
    bus = await Bus.connect(NatsSettings(url=url), "recorder")
    await bus.ensure_streams()
    await ensure_consumer(bus, SPEC)  # this test process is its own provisioner

    async def record(event: Event, delivery: Delivery) -> None:
        assert isinstance(event, BlockCommitted)
        with out.open("a") as f:
            f.write(f"{delivery.stream_seq} {event.height} {delivery.num_delivered}\n")
        if event.height == hold_at:
            await asyncio.Event().wait()

    await DurableConsumer(bus, SPEC, record).run()


if __name__ == "__main__":
    hold = int(sys.argv[3]) if len(sys.argv) > 3 else None
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), hold))
