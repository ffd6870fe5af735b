"""`mlnode-upgrade events pub|sub` without a server: what is checked, whom it connects as, what it prints.

The real-server side (the stream, the subscriber, the server's refusals) is in
`integration_tests/test_events_cli.py`.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from typer.testing import CliRunner

from cli import bus_cli
from cli.app import app
from cli.bus_cli import BusAccess, BusCliError, check_event, message_line, read_payload, resolve_access
from cli.stack import StackInfo
from shared.bus import Published
from shared.events import EVENT_TYPES, BlockCommitted, Event, parse_event
from shared.nats_config import user_names
from shared.subjects import publisher_of, subject_matches

runner = CliRunner()


def _stack(run_dir: Path, nats_url: str = "nats://127.0.0.1:4999") -> Path:
    """A stack.json as `dev up` writes it, its secrets in a directory of their own."""
    secrets = run_dir / "stack-secrets"
    secrets.mkdir(parents=True)
    for user in user_names():
        (secrets / f"{user}.password").write_text(f"pw-{user}\n")
    info = StackInfo(
        run_dir=str(run_dir),
        nats_url=nats_url,
        nats_monitor_url="http://127.0.0.1:8222",
        chain_rpc_url="http://127.0.0.1:26657",
        chain_grpc_address="127.0.0.1:9090",
        registry_url="http://127.0.0.1:8081",
        registry_grpc_address="127.0.0.1:50051",
        chain_watcher_url="http://127.0.0.1:8083",
        broker_url="http://127.0.0.1:8082",
        secrets_dir=str(secrets),
    )
    (run_dir / "stack.json").write_text(json.dumps(asdict(info)))
    return secrets


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[BusAccess, Event]]:
    """What would have been published (nothing connects): the access and the event."""
    calls: list[tuple[BusAccess, Event]] = []

    def fake(access: BusAccess, event: Event) -> Published:
        calls.append((access, event))
        return Published(event.SUBJECT, event.msg_id(), "CHAIN", 7, duplicate=False)

    monkeypatch.setattr(bus_cli, "publish_event", fake)
    return calls


# -- check: the consumers' own parse -------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.SUBJECT)
def test_every_documented_example_is_accepted_as_the_consumers_accept_it(cls: type[Event]) -> None:
    for example in cls.EXAMPLES:
        assert check_event(cls.SUBJECT, example.encode()) == parse_event(cls.SUBJECT, example.encode())


@pytest.mark.parametrize(
    ("subject", "payload", "names"),
    [
        ("chain.upgrade.scheduled", '{"height": 12000, "node_version": "3.0"}', "node_version:"),
        ("chain.block", '{"height": 120, "heigth": 121}', "heigth: Extra inputs are not permitted"),
        ("chain.block", '{"height": "120"}', "height: Input should be a valid integer"),
        ("chain.block", '{"height": 0}', "height: Input should be greater than 0"),
        ("version.changed", '{"current": "v3.0.8", "height": 5}', "transition_id: Field required"),
        ("chain.block", "{height: 1}", "not valid JSON"),
    ],
)
def test_an_invalid_payload_exits_2_naming_the_field_and_publishes_nothing(
    tmp_path: Path, published: list[tuple[BusAccess, Event]], subject: str, payload: str, names: str
) -> None:
    _stack(tmp_path)
    result = runner.invoke(app, ["events", "pub", subject, payload, "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert names in result.stderr and "nothing published" in result.stderr
    assert result.stdout == ""
    assert published == []


def test_an_unknown_subject_exits_2_listing_the_events(
    tmp_path: Path, published: list[tuple[BusAccess, Event]]
) -> None:
    _stack(tmp_path)
    for subject in ("chain.blocks", "errors.broker", "registry.state"):
        result = runner.invoke(app, ["events", "pub", subject, "{}", "--run-dir", str(tmp_path)])
        assert result.exit_code == 2
        assert f"unknown subject {subject!r}" in result.stderr
        assert "chain.block, chain.upgrade.scheduled" in result.stderr
    assert published == []


def test_the_payload_is_checked_before_the_stack_is_even_looked_for(
    tmp_path: Path, published: list[tuple[BusAccess, Event]]
) -> None:
    result = runner.invoke(
        app, ["events", "pub", "chain.block", '{"height": -1}', "--run-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "height: Input should be greater than 0" in result.stderr


# -- pub: payload sources, connection, output ---------------------------------------------------


def test_pub_of_a_valid_event_as_admin_from_the_stack(
    tmp_path: Path, published: list[tuple[BusAccess, Event]]
) -> None:
    secrets = _stack(tmp_path, "nats://127.0.0.1:4999,nats://127.0.0.1:5000")
    result = runner.invoke(
        app, ["events", "pub", "chain.block", '{"height": 120}', "--run-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "published chain.block to stream CHAIN seq 7 (Nats-Msg-Id block-120)\n"
    [(access, event)] = published
    assert event == BlockCommitted(height=120)
    assert access.user == "admin"
    assert access.settings.url == "nats://127.0.0.1:4999,nats://127.0.0.1:5000"
    assert access.settings.password_file == secrets / "admin.password"
    assert access.settings.resolved_password() == "pw-admin"


def test_the_payload_from_a_file_or_stdin(tmp_path: Path, published: list[tuple[BusAccess, Event]]) -> None:
    _stack(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text('{"height": 12000, "node_version": "v3.0.8"}\n')
    args = ["--run-dir", str(tmp_path)]
    from_file = runner.invoke(app, ["events", "pub", "chain.upgrade.scheduled", f"@{plan}", *args])
    from_stdin = runner.invoke(app, ["events", "pub", "chain.block", "-", *args], input=b'{"height": 121}')
    assert from_file.exit_code == 0 and from_stdin.exit_code == 0
    assert [e.msg_id() for _, e in published] == ["plan-12000-v3.0.8", "block-121"]
    missing = runner.invoke(app, ["events", "pub", "chain.block", f"@{tmp_path}/nope.json", *args])
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_read_payload() -> None:
    assert read_payload('{"a": 1}', io.BytesIO(b"ignored")) == b'{"a": 1}'
    assert read_payload("-", io.BytesIO(b'{"b": 2}')) == b'{"b": 2}'


def test_user_url_and_password_file_override_the_stack(tmp_path: Path) -> None:
    secrets = _stack(tmp_path)
    watcher = resolve_access(tmp_path, user="chain-watcher")
    assert (watcher.user, watcher.settings.password_file) == (
        "chain-watcher",
        secrets / "chain-watcher.password",
    )
    own = tmp_path / "mine.password"
    own.write_text("secret")
    explicit = resolve_access(tmp_path / "no-stack", url="nats://h:4222", user="broker", password_file=own)
    assert (explicit.settings.url, explicit.user, explicit.settings.resolved_password()) == (
        "nats://h:4222",
        "broker",
        "secret",
    )
    assert explicit.source == "--url"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no local stack at"),
        ({"url": "nats://h:4222"}, "does not exist"),  # no stack: no secrets to take the password from
        ({"url": "http://h:4222", "password_file": Path("/dev/null")}, "is not a NATS URL"),
    ],
)
def test_what_cannot_connect_is_bad_input(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BusCliError, match=message) as caught:
        resolve_access(tmp_path, **kwargs)
    assert caught.value.exit_code == 2


def test_a_user_without_a_password_file(tmp_path: Path) -> None:
    _stack(tmp_path)
    result = runner.invoke(
        app, ["events", "pub", "chain.block", '{"height": 1}', "--run-dir", str(tmp_path), "--user", "eve"]
    )
    assert result.exit_code == 2
    assert "no password for NATS user 'eve'" in result.stderr


def test_a_duplicate_is_reported_as_one() -> None:
    line = bus_cli.describe_published(Published("chain.block", "block-120", "CHAIN", 3, duplicate=True))
    assert "duplicate (Nats-Msg-Id block-120) of stream CHAIN seq 3" in line and "nothing new stored" in line


# -- sub ----------------------------------------------------------------------------------------


def _msg(**fields: Any) -> Msg:
    """A message as nats-py delivers it; no client needed to read it."""
    return Msg(cast(Any, None), **fields)


def test_a_core_message_as_one_json_line() -> None:
    msg = _msg(
        subject="chain.block", reply="_INBOX.x", data=b'{"height": 5}', headers={"Nats-Msg-Id": "block-5"}
    )
    assert json.loads(message_line(msg)) == {
        "subject": "chain.block",
        "stream": None,
        "stream_seq": None,
        "msg_id": "block-5",
        "payload": {"height": 5},
    }
    garbled = json.loads(message_line(_msg(subject="chain.block", data=b"\xffnot json")))
    assert garbled["payload"] is None and garbled["text"] == "\ufffdnot json"


def test_a_stream_delivery_carries_its_stream_and_sequence() -> None:
    reply = "$JS.ACK.CHAIN.ordered.1.12.12.1733100000000000000.0"
    msg = _msg(subject="chain.block", reply=reply, data=b'{"height": 12}')
    line = json.loads(message_line(msg))
    assert (line["stream"], line["stream_seq"]) == ("CHAIN", 12)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--count", "0"], "--count must be at least 1"), (["--timeout", "0"], "--timeout must be positive")],
)
def test_sub_refuses_bad_limits(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["events", "sub", "chain.>", "--run-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_from_start_reads_exactly_one_stream(tmp_path: Path) -> None:
    _stack(tmp_path)
    result = runner.invoke(app, ["events", "sub", ">", "--from-start", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--from-start reads one stream" in result.stderr and "CHAIN (chain.>)" in result.stderr


# -- who publishes what -------------------------------------------------------------------------


def test_subjects_map_to_the_users_their_grants_name() -> None:
    assert {cls.SUBJECT: publisher_of(cls.SUBJECT) for cls in EVENT_TYPES} == {
        "chain.block": "chain-watcher",
        "chain.upgrade.scheduled": "chain-watcher",
        "chain.version": "chain-watcher",
        "version.changed": "registry",
        "broker.refreshed": "broker",
        "broker.readiness": "broker",
    }
    assert publisher_of("errors.broker") == "broker"
    assert publisher_of("registry.state") is None


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("chain.>", "chain.block", True),
        ("chain.>", "chain.upgrade.scheduled", True),
        ("chain.>", "chain", False),
        ("chain.*", "chain.upgrade.scheduled", False),
        ("*.block", "chain.block", True),
        ("chain.block", "chain.block", True),
        ("chain.block", "chain.blocks", False),
        (">", "version.changed", True),
    ],
)
def test_subject_matching(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches
