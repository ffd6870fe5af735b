"""Compare-and-swap on a real JetStream KV bucket."""

from __future__ import annotations

import pytest

from shared.bus import BucketSpec, Bus
from shared.kv_store import StaleRevisionError, VersionedStore

SPEC = BucketSpec("test_state", "state for tests", history=8)


async def test_update_with_stale_revision_is_refused(bus: Bus) -> None:
    store = VersionedStore(await bus.ensure_bucket(SPEC))
    first = await store.create("state", b"one")
    second = await store.update("state", b"two", first)

    with pytest.raises(StaleRevisionError, match="expected at revision"):
        await store.update("state", b"stale write", first)

    current = await store.get("state")
    assert current is not None
    assert (current.value, current.revision) == (b"two", second)


async def test_create_refuses_an_existing_key(bus: Bus) -> None:
    store = VersionedStore(await bus.ensure_bucket(SPEC))
    await store.write("state", b"one", None)
    with pytest.raises(StaleRevisionError, match="expected to be absent"):
        await store.write("state", b"two", None)
    assert (await store.get("state")) is not None


async def test_two_writers_from_the_same_read_only_one_wins(bus: Bus) -> None:
    store = VersionedStore(await bus.ensure_bucket(SPEC))
    base = await store.create("state", b"base")
    results = []
    for value in (b"writer-a", b"writer-b"):
        try:
            await store.update("state", value, base)
            results.append(value)
        except StaleRevisionError:
            results.append(b"refused")
    assert results == [b"writer-a", b"refused"]


async def test_missing_key_reads_as_none(bus: Bus) -> None:
    store = VersionedStore(await bus.ensure_bucket(SPEC))
    assert await store.get("nothing-here") is None


async def test_ensure_bucket_is_idempotent_and_updates_history(bus: Bus) -> None:
    kv = await bus.ensure_bucket(SPEC)
    await VersionedStore(kv).create("state", b"kept")
    await bus.ensure_bucket(SPEC)
    await bus.ensure_bucket(BucketSpec(SPEC.name, "more history", history=32))
    info = await bus.js.stream_info(f"KV_{SPEC.name}")
    assert info.config.max_msgs_per_subject == 32
    assert info.config.description == "more history"
    assert (await VersionedStore(await bus.js.key_value(SPEC.name)).get("state")) is not None
