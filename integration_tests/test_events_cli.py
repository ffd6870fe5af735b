"""`mlnode-upgrade events pub|sub` and the NATS CLI contexts against a real server with the real users.

The server has the local stack's accounts and passwords (`shared/nats_config.py`); the CLI runs as
a subprocess, finding the server through a `stack.json` as `dev up` writes it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from cli.nats_contexts import context_dir, context_name, write_contexts
from cli.stack import StackInfo
from devtools.embedded_nats import EmbeddedNats
from integration_tests.nats_security import Credentials
from integration_tests.support import eventually
from shared.bus import ALL_STREAMS, Bus
from shared.events import BlockCommitted, UpgradeScheduled, parse_event

CLI = str(Path(sys.executable).parent / "mlnode-upgrade")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_dir(tmp_path: Path, secured_nats: EmbeddedNats, creds: Credentials) -> Path:
    """A `stack.json` pointing at the server, its secrets the server's passwords, as `dev up` writes."""
    directory = tmp_path / "stack"
    directory.mkdir()
    info = StackInfo(
        run_dir=str(directory),
        nats_url=secured_nats.url,
        nats_monitor_url=f"http://127.0.0.1:{secured_nats.monitor_port}",
        chain_rpc_url="http://127.0.0.1:1",
        chain_grpc_address="127.0.0.1:1",
        registry_url="http://127.0.0.1:1",
        registry_grpc_address="127.0.0.1:1",
        chain_watcher_url="http://127.0.0.1:1",
        broker_url="http://127.0.0.1:1",
        secrets_dir=str(creds.directory),
    )
    (directory / "stack.json").write_text(json.dumps(asdict(info)))
    return directory


async def cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """`mlnode-upgrade ARGS` in a subprocess: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Subscriber:
    """`events sub` running in the background; ready once it says it is listening."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> Subscriber:
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "events",
            "sub",
            *args,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stderr.readline(), 30)  # the subscription is in place
        if not first.startswith(b"listening on "):
            rest = await proc.stderr.read()
            proc.kill()
            raise AssertionError(f"events sub did not start: {(first + rest).decode()}")
        return cls(proc)

    async def finish(self) -> tuple[int, list[dict[str, object]], str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), 30)
        assert self.proc.returncode is not None
        return self.proc.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


async def last_seqs(bus: Bus) -> dict[str, int]:
    """Every stream's last sequence: what any publish, stored anywhere, would move."""
    return {spec.name: (await bus.js.stream_info(spec.name)).state.last_seq for spec in ALL_STREAMS}


async def test_pub_reaches_a_subscriber_and_the_stream(admin: Bus, run_dir: Path) -> None:
    sub = await Subscriber.start("chain.>", "--count", "2", "--timeout", "30", "--run-dir", str(run_dir))

    code, out, err = await cli("events", "pub", "chain.block", '{"height": 120}', "--run-dir", str(run_dir))
    assert (code, err) == (0, "")
    assert out == "published chain.block to stream CHAIN seq 1 (Nats-Msg-Id block-120)\n"
    plan = '{"height": 12000, "node_version": "v3.0.8"}'
    code, out, _ = await cli(
        "events", "pub", "chain.upgrade.scheduled", "-", "--run-dir", str(run_dir), stdin=plan.encode()
    )
    assert code == 0 and "stream CHAIN seq 2 (Nats-Msg-Id plan-12000-v3.0.8)" in out

    code, lines, _ = await sub.finish()
    assert code == 0
    assert lines == [
        {
            "subject": "chain.block",
            "stream": None,
            "stream_seq": None,
            "msg_id": "block-120",
            "payload": {"height": 120},
        },
        {
            "subject": "chain.upgrade.scheduled",
            "stream": None,
            "stream_seq": None,
            "msg_id": "plan-12000-v3.0.8",
            # As the chain-watcher sends it: the model's JSON, defaults included.
            "payload": {"height": 12000, "node_version": "v3.0.8", "name": "", "api_binaries_json": ""},
        },
    ]
    # Stored as the chain-watcher stores it: the same JSON and id, so the consumers parse it and
    # JetStream deduplicates a second one.
    stored = await admin.js.get_last_msg("CHAIN", "chain.block")
    assert stored.data is not None and parse_event("chain.block", stored.data) == BlockCommitted(height=120)
    assert stored.data == BlockCommitted(height=120).to_json()
    assert (stored.headers or {}).get("Nats-Msg-Id") == BlockCommitted(height=120).msg_id()
    code, out, _ = await cli("events", "pub", "chain.block", '{"height": 120}', "--run-dir", str(run_dir))
    assert code == 0 and "duplicate (Nats-Msg-Id block-120) of stream CHAIN seq 1" in out
    assert (await last_seqs(admin))["CHAIN"] == 2


async def test_sub_from_start_reads_the_stream_with_its_sequences(admin: Bus, run_dir: Path) -> None:
    await admin.publish(BlockCommitted(height=7))
    await admin.publish(UpgradeScheduled(height=9, node_version="v3.0.9"))  # type: ignore[arg-type]

    code, out, err = await cli(
        "events",
        "sub",
        "chain.>",
        "--from-start",
        "--count",
        "2",
        "--timeout",
        "30",
        "--run-dir",
        str(run_dir),
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["subject"], x["stream"], x["stream_seq"], x["msg_id"]) for x in lines] == [
        ("chain.block", "CHAIN", 1, "block-7"),
        ("chain.upgrade.scheduled", "CHAIN", 2, "plan-9-v3.0.9"),
    ]
    assert "stream CHAIN from its first message" in err

    code, out, err = await cli(
        "events", "sub", "version.>", "--count", "1", "--timeout", "1", "--run-dir", str(run_dir)
    )
    assert code == 1 and out == ""
    assert "timed out after 1s with 0 of 1 messages" in err


@pytest.mark.parametrize(
    ("subject", "payload", "names"),
    [
        ("chain.upgrade.scheduled", '{"height": 12000, "node_version": "v3.0.8.1"}', "node_version:"),
        ("chain.block", '{"height": 120, "extra": true}', "extra: Extra inputs are not permitted"),
        ("chain.blocks", '{"height": 120}', "unknown subject 'chain.blocks'"),
    ],
)
async def test_an_invalid_event_exits_2_and_publishes_nothing(
    admin: Bus, run_dir: Path, subject: str, payload: str, names: str
) -> None:
    await admin.publish(BlockCommitted(height=1))  # a stream that is not empty: its last seq is 1
    got: list[str] = []

    async def heard(msg: Msg) -> None:
        got.append(msg.subject)

    watcher = await admin.nc.subscribe(">", cb=heard)
    before = await last_seqs(admin)

    code, out, err = await cli("events", "pub", subject, payload, "--run-dir", str(run_dir))
    assert code == 2 and out == ""
    assert names in err

    await admin.nc.flush()
    assert await last_seqs(admin) == before
    assert [s for s in got if not s.startswith(("$JS.", "_INBOX."))] == []
    await watcher.unsubscribe()


async def test_the_servers_refusals_are_one_clear_line(admin: Bus, run_dir: Path, tmp_path: Path) -> None:
    before = await last_seqs(admin)
    # A service's user may publish only its own subjects; the answer names the user that may.
    code, out, err = await cli(
        "events", "pub", "version.changed", '{"transition_id": "9-v6.6.6", "current": "v6.6.6", "height": 9}',
        "--run-dir", str(run_dir), "--user", "chain-watcher",
    )  # fmt: skip
    assert code == 1 and out == ""
    assert 'permissions violation for publish to "version.changed"' in err
    assert "--user registry" in err and len(err.strip().splitlines()) == 1
    # ... and may subscribe to nothing but its inbox.
    code, _, err = await cli(
        "events", "sub", "chain.>", "--count", "1", "--run-dir", str(run_dir), "--user", "broker"
    )
    assert code == 1 and 'permissions violation for subscription to "chain.>"' in err
    # A wrong password.
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not it")
    code, _, err = await cli(
        "events",
        "pub",
        "chain.block",
        '{"height": 5}',
        "--run-dir",
        str(run_dir),
        "--password-file",
        str(wrong),
    )
    assert code == 1 and "Authorization Violation" in err and str(wrong) in err
    # No server.
    code, _, err = await cli(
        "events",
        "pub",
        "chain.block",
        '{"height": 5}',
        "--url",
        "nats://127.0.0.1:1",
        "--run-dir",
        str(run_dir),
    )
    assert code == 1 and "cannot connect to NATS at nats://127.0.0.1:1" in err
    assert await last_seqs(admin) == before

    # The chain-watcher's own subject, with its own user: stored.
    code, out, _ = await cli(
        "events", "pub", "chain.block", '{"height": 5}', "--run-dir", str(run_dir), "--user", "chain-watcher"
    )
    assert code == 0 and "stream CHAIN seq" in out


async def test_the_contexts_dev_up_writes_connect_as_the_docs_say(
    admin: Bus, secured_nats: EmbeddedNats, creds: Credentials, tmp_path: Path
) -> None:
    """What `nats --context mlnode-<user> pub|sub` does with the context file: core NATS as that user."""
    write_contexts(tmp_path / "xdg", secured_nats.url, creds.directory)

    def context(user: str) -> dict[str, Any]:
        path = context_dir(tmp_path / "xdg") / f"{context_name(user)}.json"
        return cast(dict[str, Any], json.loads(path.read_text()))

    async def connect(user: str) -> NatsClient:
        ctx = context(user)
        nc = NatsClient()
        await nc.connect(ctx["url"], user=ctx["user"], password=ctx["password"], allow_reconnect=False)
        return nc

    listener = await connect("admin")  # `nats --context mlnode-admin sub 'chain.>'`
    heard = await listener.subscribe("chain.>")
    await listener.flush()
    before = (await admin.js.stream_info("CHAIN")).state.last_seq
    watcher = await connect("chain-watcher")  # `nats --context mlnode-chain-watcher pub chain.block ...`
    await watcher.publish("chain.block", b'{"height": 120}')
    await watcher.flush()

    msg = await heard.next_msg(timeout=10)
    assert (msg.subject, msg.data) == ("chain.block", b'{"height": 120}')

    async def stored() -> bool:
        return (await admin.js.stream_info("CHAIN")).state.last_seq == before + 1

    await eventually(stored, message="the core publish stored in CHAIN")
    for nc in (listener, watcher):
        await nc.close()
