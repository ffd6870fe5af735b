"""Event contracts: hand-typed minimal payloads are valid, anything off is refused with a reason."""

from __future__ import annotations

import pytest

from shared.events import (
    EVENT_TYPES,
    EVENTS_BY_SUBJECT,
    BlockCommitted,
    BrokerReadiness,
    ChainVersionObserved,
    InvalidEventError,
    NodeReadiness,
    UpgradeScheduled,
    VersionChanged,
    parse_event,
)
from shared.versions import MLNodeVersion

V308 = MLNodeVersion("v3.0.8")


def test_every_design_subject_has_a_model() -> None:
    assert set(EVENTS_BY_SUBJECT) == {
        "chain.block",
        "chain.upgrade.scheduled",
        "chain.version",
        "version.changed",
        "broker.refreshed",
        "broker.readiness",
    }


def test_hand_typed_block_is_valid() -> None:
    assert parse_event("chain.block", b'{"height": 120}') == BlockCommitted(height=120)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.SUBJECT)
def test_examples_parse_and_round_trip(cls: type) -> None:
    for example in cls.EXAMPLES:
        event = parse_event(cls.SUBJECT, example.encode())
        assert isinstance(event, cls)
        assert parse_event(cls.SUBJECT, event.to_json()) == event


@pytest.mark.parametrize(
    ("subject", "payload", "reason", "detail"),
    [
        ("chain.block", b'{"height": 120', "json", "not valid JSON"),
        ("chain.block", b"\xff", "json", "not valid JSON"),
        ("chain.block", b'{"height": "120"}', "validation", "height: Input should be a valid integer"),
        ("chain.block", b'{"height": 12.0}', "validation", "height"),
        ("chain.block", b'{"height": true}', "validation", "height"),
        ("chain.block", b'{"height": 0}', "validation", "greater than 0"),
        ("chain.block", b'{"height": 9223372036854775808}', "validation", "less than or equal"),
        (
            "chain.block",
            b'{"height": 1, "hieght": 2}',
            "validation",
            "hieght: Extra inputs are not permitted",
        ),
        ("chain.block", b'{"height": 1, "hash": "zz"}', "validation", "hash"),
        ("chain.block", b'"120"', "validation", "payload"),
        ("chain.block", b"{}", "validation", "height: Field required"),
        ("chain.upgrade.scheduled", b'{"height": 5, "node_version": "%2e%2e"}', "validation", "percent"),
        ("chain.upgrade.scheduled", b'{"height": 5, "node_version": null}', "validation", "node_version"),
        ("chain.version", b'{"current_version": "v3.0.8 "}', "validation", "whitespace"),
        (
            "version.changed",
            b'{"transition_id": "a/b", "current": "v3.0.8", "height": 5}',
            "validation",
            "transition_id",
        ),
        (
            "version.changed",
            b'{"transition_id": "t", "current": "v3.0.8", "height": 5, "reason": "magic"}',
            "validation",
            "reason",
        ),
        (
            "broker.refreshed",
            b'{"transition_id": "t", "version": "v3.0.8", "nodes": [{"node_id": "n"}]}',
            "validation",
            "outcome",
        ),
        (
            "broker.readiness",
            b'{"target_version": "v3.0.8", "nodes": [{"node_id": "../n", "ready": true}]}',
            "validation",
            "node_id",
        ),
        ("chain.blocks", b'{"height": 1}', "unknown_subject", "chain.blocks"),
    ],
)
def test_invalid_payloads_are_refused_with_a_reason(
    subject: str, payload: bytes, reason: str, detail: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event(subject, payload)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


def test_dedup_ids_follow_the_content() -> None:
    assert BlockCommitted(height=120).msg_id() == "block-120"
    assert BlockCommitted(height=120, hash="ab" * 32).msg_id() == "block-120-ABABABABABABABAB"
    assert UpgradeScheduled(height=12000, node_version=V308).msg_id() == "plan-12000-v3.0.8"
    assert ChainVersionObserved(current_version=V308, height=7).msg_id() == "chain-version-7-v3.0.8"
    changed = VersionChanged(transition_id="12000-v3.0.8", current=V308, height=12000)
    assert changed.msg_id() == "changed-12000-v3.0.8"


def test_readiness_id_changes_only_when_readiness_does() -> None:
    ready = BrokerReadiness(target_version=V308, nodes=(NodeReadiness(node_id="n1", ready=True),))
    same = BrokerReadiness(target_version=V308, nodes=(NodeReadiness(node_id="n1", ready=True),))
    not_ready = BrokerReadiness(
        target_version=V308, nodes=(NodeReadiness(node_id="n1", ready=False, reason="404"),)
    )
    assert ready.msg_id() == same.msg_id()
    assert ready.msg_id() != not_ready.msg_id()


def test_events_are_immutable() -> None:
    event = BlockCommitted(height=1)
    with pytest.raises(Exception, match="frozen"):
        event.height = 2  # type: ignore[misc]


def test_serialisation_omits_unset_optionals_and_keeps_versions_verbatim() -> None:
    assert BlockCommitted(height=3).to_json() == b'{"height":3}'
    event = UpgradeScheduled(height=9, node_version=MLNodeVersion("3.0.9"))
    assert b'"node_version":"3.0.9"' in event.to_json()
