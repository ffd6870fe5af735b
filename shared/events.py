"""The events on the bus: subjects, payload models, deduplication ids.

Payloads are plain JSON so that an operator can type `nats pub chain.block '{"height": 120}'`.
Validation is strict (no string-for-number coercion, no unknown fields, positive heights,
valid versions) because one forged or garbled event could move every MLNode.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.versions import MLNodeVersion

MAX_HEIGHT = 2**63 - 1

Height = Annotated[int, Field(gt=0, le=MAX_HEIGHT, description="Block height, a positive integer")]
NodeId = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9._-]{1,128}$", description="The node's id from the node config")
]
TransitionId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description="Identifies one version switch; every event about that switch carries it",
    ),
]
ServiceName = Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")]


class Event(BaseModel):
    """Base of every bus payload. Subclasses say where they go and who sends them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    SUBJECT: ClassVar[str]
    PUBLISHER: ClassVar[str]
    # Raw JSON payloads for docs/events.md: the first is the minimal hand-typed form.
    EXAMPLES: ClassVar[tuple[str, ...]]

    def msg_id(self) -> str:
        """The `Nats-Msg-Id`: derived from what the event is about, so a replay is a duplicate."""
        raise NotImplementedError

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class BlockCommitted(Event):
    """A block the chain committed. The registry applies plans on it."""

    SUBJECT = "chain.block"
    PUBLISHER = "chain-watcher"
    EXAMPLES = (
        '{"height": 120}',
        '{"height": 121, "hash": "0A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5F60718293A4B5C6D7E8F9",'
        ' "time": "2026-11-23T10:00:00Z"}',
    )

    height: Height
    hash: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{64}$")] | None = None
    time: datetime | None = None

    def msg_id(self) -> str:
        # With the block's hash when known: a reset chain's block at a height already published
        # (within the duplicate window) is a different block and must not be dropped as a duplicate.
        return f"block-{self.height}-{self.hash[:16].upper()}" if self.hash else f"block-{self.height}"


class UpgradeScheduled(Event):
    """A partial upgrade the chain stored: at `height`, MLNodes move to `node_version`."""

    SUBJECT = "chain.upgrade.scheduled"
    PUBLISHER = "chain-watcher"
    EXAMPLES = (
        '{"height": 12000, "node_version": "v3.0.8"}',
        '{"height": 12000, "node_version": "v3.0.8",'
        ' "name": "PartialUpgrade at height 12000 for node version v3.0.8", "api_binaries_json": ""}',
    )

    height: Height
    node_version: MLNodeVersion
    name: Annotated[str, Field(max_length=512)] = ""
    api_binaries_json: Annotated[str, Field(max_length=65_536)] = ""

    def msg_id(self) -> str:
        return f"plan-{self.height}-{self.node_version}"


class ChainPlan(BaseModel):
    """One partial upgrade as the chain stores it, inside a `chain.version` snapshot."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    height: Height
    node_version: MLNodeVersion
    name: Annotated[str, Field(max_length=512)] = ""


MAX_SNAPSHOT_PLANS = 1000


class ChainVersionObserved(Event):
    """The chain's own word at `height`: its `MLNodeVersion` and, when read, its stored plans.

    The chain-watcher publishes one at start-up, whenever the version changes, and periodically,
    always at the newest height it has published a block for (never below it), so the registry can
    tell when it has been moved ahead of the chain by an event the chain never produced.
    `plans` lists the partial upgrades the chain stores above `height`; it is absent (None) when
    they were not read, as in a hand-typed snapshot, and an empty list when the chain has none.
    """

    SUBJECT = "chain.version"
    PUBLISHER = "chain-watcher"
    EXAMPLES = (
        '{"current_version": "v3.0.8"}',
        '{"current_version": "v3.0.8", "height": 11990}',
        '{"current_version": "v3.0.8", "height": 11990,'
        ' "plans": [{"height": 12000, "node_version": "v3.0.9"}]}',
    )

    current_version: MLNodeVersion
    height: Height | None = None
    plans: Annotated[tuple[ChainPlan, ...], Field(max_length=MAX_SNAPSHOT_PLANS)] | None = None

    def msg_id(self) -> str:
        return f"chain-version-{self.height or 0}-{self.current_version}"


class VersionChanged(Event):
    """The registry switched the current version; the broker hands every node over."""

    SUBJECT = "version.changed"
    PUBLISHER = "version-registry"
    EXAMPLES = (
        '{"transition_id": "12000-v3.0.8", "current": "v3.0.8", "height": 12000}',
        '{"transition_id": "12000-v3.0.8", "previous": "v3.0.6", "current": "v3.0.8",'
        ' "height": 12000, "reason": "plan"}',
    )

    transition_id: TransitionId
    previous: MLNodeVersion | None = None
    current: MLNodeVersion
    height: Height
    reason: Literal["plan", "sync", "rollback"] = "plan"

    def msg_id(self) -> str:
        return f"changed-{self.transition_id}"


class NodeOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    node_id: NodeId
    outcome: Literal["ready", "stop_pending", "failed", "removed"]
    detail: Annotated[str, Field(max_length=2048)] = ""
    # What the node does on the new version (inference, pow_generate, pow_validate, pow, train,
    # stopped) and whether that is the work it had before the switch; `detail` says why not.
    work: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")] | None = None
    carried: bool | None = None


class BrokerRefreshed(Event):
    """The broker finished handing every node over to `version`; the registry records last_used."""

    SUBJECT = "broker.refreshed"
    PUBLISHER = "broker"
    EXAMPLES = (
        '{"transition_id": "12000-v3.0.8", "version": "v3.0.8"}',
        '{"transition_id": "12000-v3.0.8", "version": "v3.0.8", "previous": "v3.0.6",'
        ' "nodes": [{"node_id": "node-1", "outcome": "ready"},'
        ' {"node_id": "node-2", "outcome": "stop_pending", "detail": "stop returned 500"}]}',
        '{"transition_id": "12000-v3.0.8", "version": "v3.0.8", "previous": "v3.0.6",'
        ' "nodes": [{"node_id": "node-1", "outcome": "ready", "work": "pow_generate", "carried": true},'
        ' {"node_id": "node-2", "outcome": "ready", "work": "stopped", "carried": false,'
        ' "detail": "pow_validate not carried: /api/v1/stop from the API node was waiting and runs next"}]}',
    )

    transition_id: TransitionId
    version: MLNodeVersion
    previous: MLNodeVersion | None = None
    nodes: tuple[NodeOutcome, ...] = ()

    def msg_id(self) -> str:
        return f"refreshed-{self.transition_id}"


class NodeReadiness(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    node_id: NodeId
    ready: bool
    reason: Annotated[str, Field(max_length=2048)] = ""


class StagingView(BaseModel):
    """The staged switch planned for the next plan: which nodes go early, from which height."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    early: tuple[NodeId, ...] = ()  # the nodes the plan hands over before the height
    staged: tuple[NodeId, ...] = ()  # those handed over already
    start_height: Height | None = None
    lead_s: Annotated[float, Field(ge=0)] = 0.0
    old_capacity: Annotated[int, Field(ge=0)] = 0  # what the old version keeps in the window
    new_capacity: Annotated[int, Field(ge=0)] = 0  # what the new version has at the height
    why_not: Annotated[str, Field(max_length=2048)] = ""  # when no node goes early


class BrokerReadiness(Event):
    """Whether every node can serve the target version before the height arrives."""

    SUBJECT = "broker.readiness"
    PUBLISHER = "broker"
    EXAMPLES = (
        '{"target_version": "v3.0.8", "nodes": [{"node_id": "node-1", "ready": true}]}',
        '{"target_version": "v3.0.8", "height": 12000, "nodes": [{"node_id": "node-1", "ready": true},'
        ' {"node_id": "node-2", "ready": false, "reason": "GET /v3.0.8/api/v1/state: 404"}]}',
    )

    target_version: MLNodeVersion
    height: Height | None = None
    nodes: tuple[NodeReadiness, ...] = ()
    staging: StagingView | None = None

    def msg_id(self) -> str:
        # Published on change: the same readiness picture is the same message.
        digest = hashlib.sha256(self.to_json()).hexdigest()[:16]
        return f"readiness-{self.target_version}-{digest}"


class RejectedMessage(BaseModel):
    """What a consumer copies to `errors.<service>` when a payload fails validation."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    service: ServiceName
    subject: str
    reason: Literal["json", "validation", "unknown_subject"]
    detail: str
    payload: str
    stream: str | None = None
    stream_seq: int | None = None

    @staticmethod
    def subject_for(service: str) -> str:
        return f"errors.{service}"


EVENT_TYPES: tuple[type[Event], ...] = (
    BlockCommitted,
    UpgradeScheduled,
    ChainVersionObserved,
    VersionChanged,
    BrokerRefreshed,
    BrokerReadiness,
)
EVENTS_BY_SUBJECT: dict[str, type[Event]] = {cls.SUBJECT: cls for cls in EVENT_TYPES}


class InvalidEventError(ValueError):
    """A payload that is not a valid event; `reason` is a short category for metrics."""

    def __init__(self, reason: Literal["json", "validation", "unknown_subject"], detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Literal["json", "validation", "unknown_subject"] = reason
        self.detail = detail


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_event(subject: str, data: bytes) -> Event:
    """Validate a raw payload received on `subject`; raise `InvalidEventError` saying why."""
    cls = EVENTS_BY_SUBJECT.get(subject)
    if cls is None:
        raise InvalidEventError("unknown_subject", f"no event is defined for subject {subject!r}")
    try:
        return cls.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise InvalidEventError("json", f"not valid JSON: {errors[0]['msg']}") from None
        raise InvalidEventError("validation", _summarise(exc)) from None
