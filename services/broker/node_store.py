"""What the broker persists in its JetStream KV bucket: nodes, pending stops, transition progress,
the nodes' work, their load times, a staging, and the history of switches.

Each is one `shared.kv_document` document under one key, changed only by compare-and-swap and
stored with its format version. Writes from this process are serialised per key, so the 200
outcome writes of a large switch do not fight each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.broker.load_times import LoadTimes
from services.broker.models import NodeSet, PendingStops
from services.broker.node_work import NodeWorks
from services.broker.staging import StagedDocument
from services.broker.switch_log import SwitchLog
from services.broker.transition import TransitionRecord
from shared.kv_document import Document, KvDocument, MemoryDocument, ModelCodec, OptionalCodec
from shared.kv_store import VersionedStore
from shared.provisioning import broker_bucket

__all__ = ["BROKER_BUCKET", "BrokerStore", "kv_store", "memory_store"]

BROKER_BUCKET = broker_bucket()

NODES_KEY = "nodes"
PENDING_KEY = "pending_stops"
TRANSITION_KEY = "transition"
WORK_KEY = "node_work"
LOAD_TIMES_KEY = "load_times"
STAGING_KEY = "staging"
SWITCH_LOG_KEY = "switch_log"
MAX_CAS_RETRIES = 10
# The switch record and the load times are written once per finished handoff: at most this often,
# so a 5,000-node switch writes its megabyte-sized record dozens of times, not thousands (each
# write encodes all of it). An outcome reaches KV, and `broker.refreshed` goes out, this much later.
RECORD_WRITE_INTERVAL_S = 0.25
FORMAT = 1


@dataclass(frozen=True)
class BrokerStore:
    nodes: Document[NodeSet]
    pending: Document[PendingStops]
    transition: Document[TransitionRecord | None]
    work: Document[NodeWorks]
    load_times: Document[LoadTimes]
    staging: Document[StagedDocument]
    switch_log: Document[SwitchLog]


def kv_store(store: VersionedStore) -> BrokerStore:
    return BrokerStore(
        nodes=KvDocument(
            store, NODES_KEY, ModelCodec(NodeSet, FORMAT), NodeSet(), max_attempts=MAX_CAS_RETRIES
        ),
        pending=KvDocument(
            store, PENDING_KEY, ModelCodec(PendingStops, FORMAT), PendingStops(), max_attempts=MAX_CAS_RETRIES
        ),
        transition=KvDocument[TransitionRecord | None](
            store,
            TRANSITION_KEY,
            OptionalCodec(ModelCodec(TransitionRecord, FORMAT)),
            None,
            max_attempts=MAX_CAS_RETRIES,
            min_interval_s=RECORD_WRITE_INTERVAL_S,
        ),
        work=KvDocument(
            store, WORK_KEY, ModelCodec(NodeWorks, FORMAT), NodeWorks(), max_attempts=MAX_CAS_RETRIES
        ),
        load_times=KvDocument(
            store,
            LOAD_TIMES_KEY,
            ModelCodec(LoadTimes, FORMAT),
            LoadTimes(),
            max_attempts=MAX_CAS_RETRIES,
            min_interval_s=RECORD_WRITE_INTERVAL_S,
        ),
        staging=KvDocument(
            store,
            STAGING_KEY,
            ModelCodec(StagedDocument, FORMAT),
            StagedDocument(),
            max_attempts=MAX_CAS_RETRIES,
        ),
        switch_log=KvDocument(
            store, SWITCH_LOG_KEY, ModelCodec(SwitchLog, FORMAT), SwitchLog(), max_attempts=MAX_CAS_RETRIES
        ),
    )


def memory_store(
    nodes: NodeSet | None = None,
    pending: PendingStops | None = None,
    transition: TransitionRecord | None = None,
    work: NodeWorks | None = None,
) -> BrokerStore:
    return BrokerStore(
        nodes=MemoryDocument(nodes or NodeSet()),
        pending=MemoryDocument(pending or PendingStops()),
        transition=MemoryDocument[TransitionRecord | None](transition),
        work=MemoryDocument(work or NodeWorks()),
        load_times=MemoryDocument(LoadTimes()),
        staging=MemoryDocument(StagedDocument()),
        switch_log=MemoryDocument(SwitchLog()),
    )
