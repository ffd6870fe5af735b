"""Docs as tests: every shell command in the README, the operator guide and the event reference
runs against one local stack, in document order, or says why it cannot.

Commands come from `devtools.doc_commands` (its docstring has the extraction and mark rules). A
command is run when the doc marks it `exit N` or when no mark and no rule of `RULES` says why
not and its program is one of `RUNNABLE`; anything else is unaccounted for and fails (here and in
`tests/unit/test_doc_commands.py`, which checks the same without a stack), so a new doc line
must either work or carry its reason.

Each command runs in `bash` with `.venv/bin` first on PATH, in a scratch directory whose
`var/dev` is the stack's run directory (the CLI's default `--run-dir`) and which holds copies of
`deploy/` and `docs/` (so `deploy render`, `deploy secrets` and the `--check`s never write into
the shared tree); a `make` or `scripts/` line a doc marks runnable runs from the repo root. The
docs' default local addresses become the stack's through `SUBSTITUTIONS`.

The stack is `dev up`'s, with these differences, each so the walk-through reads as the docs do
within a minute: the chain makes a block every `BLOCK_EVERY_S` (advanced by this test from the
first command on, so the README's `propose --height 120` goes in near height 50 and the plan
applies while the guide's `status --watch --until-done` watches), models load in 0.5 s, and the
chain-watcher sends its `chain.version` snapshot every second (the README's hand-typed
`chain.block 120` is undone before its plan arrives).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.stack import LocalStack, StackConfig, StackInfo
from devtools.doc_commands import DocCommand, doc_commands

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
COMMAND_TIMEOUT_S = 60.0
BLOCK_EVERY_S = 0.15  # the chain's pace while the docs run
STACK_ENV = (("CHAIN_WATCHER_VERSION_SNAPSHOT_INTERVAL_S", "1"),)
REPORT = REPO_ROOT / "var" / "doc-commands-run.json"

# Programs this test runs unless a rule says why not; `make` and `scripts/` only where a doc mark
# (`exit N`) says so, and then from the repo root, where they belong.
RUNNABLE = re.compile(r"^(mlnode-upgrade|curl|export)\s")
FROM_REPO_ROOT = re.compile(r"^(make\s|scripts/)")


@dataclass(frozen=True)
class Rule:
    """A family of doc commands that is not run, for one reason."""

    name: str
    pattern: re.Pattern[str]
    reason: str
    unless: re.Pattern[str] | None = None  # the family leaves out commands that also match this

    def applies(self, text: str) -> bool:
        return bool(self.pattern.search(text)) and not (self.unless and self.unless.search(text))


# The rule-based marks: the first that applies gives the reason. A doc's own mark comes first.
RULES: tuple[Rule, ...] = (
    Rule(
        "nats-cli",
        re.compile(r"^nats\s"),
        "needs the NATS CLI, which nothing here installs; the `mlnode-upgrade events pub` line beside "
        "each example runs, and `status`/`history` read the state the `req` lines ask for",
    ),
    Rule(
        "docker",
        re.compile(r"^(docker|docker-compose)\s|^scripts/docker/|^make docker-|DOCKER_HOST="),
        "needs a Docker engine (root, apt and a dockerd of its own: `make docker-smoke`)",
    ),
    Rule(
        "grpcurl",
        re.compile(r"^grpcurl\s"),
        "needs grpcurl, which nothing here installs (`integration_tests/test_proto_grpc.py` uses "
        "the same server reflection)",
    ),
    Rule(
        "real-chain",
        re.compile(r"your-node|your-key|gonka-mainnet|^inferenced\s"),
        "needs a real chain: a gonka node, a key and the chain id (the `--submit` line runs against "
        "the mock chain)",
    ),
    Rule(
        "template",
        re.compile(r"<[^<>]+>|\b(SUBJECT|JSON)\b"),
        "a template: the reader fills in its placeholders (the filled-in lines run)",
    ),
    Rule(
        "dev-up",
        re.compile(r"^mlnode-upgrade dev up\b"),
        "starts the local stack in the foreground until Ctrl-C: this test runs that stack "
        "(`LocalStack`); `integration_tests/test_dev_stack.py` runs `dev up` itself",
    ),
    Rule(
        "live-view",
        re.compile(r"^mlnode-upgrade status\b.*--watch\b"),
        "a live view until Ctrl-C (the `--until-done` line runs)",
        unless=re.compile(r"--until-done\b"),
    ),
    Rule(
        "subscription",
        re.compile(r"^mlnode-upgrade events sub\b"),
        "prints messages until Ctrl-C: without `--count` it never ends (the README's `--count 3` line runs)",
        unless=re.compile(r"--count\b|--timeout\b"),
    ),
    Rule(
        "server",
        re.compile(r"^(\.venv/bin/)?python3? -m (services\.|mock_chain|mock_mlnode)"),
        "a server that runs until stopped; the stack under test runs the same module",
    ),
    Rule(
        "suite",
        re.compile(r"^make (test|unit|integration|chaos|lint)\b"),
        "is the test suite or the linters themselves (CI runs them; this test is part of `make test`)",
    ),
    Rule(
        "benchmark",
        re.compile(r"^make bench|^(\.venv/bin/)?python3? -m bench\b"),
        "a benchmark on a stack of its own, minutes of load on the machine (CI runs `make bench-quick`)",
    ),
    Rule(
        "demo",
        re.compile(r"^make demo\b|^mlnode-upgrade demo\b"),
        "a whole upgrade under load on a second stack of its own (about a minute), not against the "
        "stack under test",
    ),
    Rule(
        "generator",
        re.compile(r"^make (proto|docs)\b"),
        "rewrites generated files in the shared working tree; unit tests check they are current "
        "(`tests/unit/test_proto.py`, `tests/unit/test_event_docs.py`)",
    ),
    Rule(
        "provision",
        re.compile(r"^mlnode-upgrade nats provision\b"),
        "needs the provisioner's NATS settings (`PROVISION_NATS__*`); the stack under test runs it "
        "before its services, as `dev up` does",
    ),
    Rule(
        "named-in-prose",
        re.compile(r"^mlnode-upgrade (events pub|events sub|rollback|propose|nodes add|nodes remove)$"),
        "names the command in a sentence, without its required arguments; its full lines run",
    ),
)

# The docs' default local addresses -> the stack's (`StackInfo` field names).
SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("http://127.0.0.1:26657", "chain_rpc_url"),
    ("http://localhost:26657", "chain_rpc_url"),
    ("http://node:26657", "chain_rpc_url"),  # the README's chain node for `propose --rpc`
    ("http://127.0.0.1:8081", "registry_url"),
    ("http://localhost:8081", "registry_url"),
    ("http://127.0.0.1:8082", "broker_url"),
    ("http://localhost:8082", "broker_url"),
    ("nats://127.0.0.1:4222", "nats_url"),
    ("nats://localhost:4222", "nats_url"),
)


@dataclass(frozen=True)
class Verdict:
    """What the docs test does with one command: run it (expecting `exit_code`) or not, and why."""

    command: DocCommand
    run: bool
    exit_code: int = 0
    reason: str = ""
    by: str = ""  # "doc mark", a rule's name, "runnable" or "unaccounted"


def classify(command: DocCommand) -> Verdict:
    mark = command.mark
    if mark is not None:
        if mark.skip is not None:
            return Verdict(command, run=False, reason=mark.skip, by="doc mark")
        return Verdict(command, run=True, exit_code=mark.exit_code, by="doc mark")
    for rule in RULES:
        if rule.applies(command.text):
            return Verdict(command, run=False, reason=rule.reason, by=rule.name)
    if RUNNABLE.match(command.text):
        return Verdict(command, run=True, by="runnable")
    return Verdict(command, run=False, by="unaccounted")


def unaccounted(verdicts: list[Verdict]) -> list[str]:
    """The commands neither run nor marked with a reason: each must get a rule or a doc mark."""
    return [f"{v.command.where}: {v.command.text}" for v in verdicts if not v.run and not v.reason]


def summary(verdicts: list[Verdict]) -> dict[str, Any]:
    """Counts for the closing note: found, run, marked, by reason."""
    marked: dict[str, dict[str, Any]] = {}
    for v in verdicts:
        if not v.run and v.reason:
            entry = marked.setdefault(v.by, {"count": 0, "reason": set(), "commands": []})
            entry["count"] += 1
            entry["reason"].add(v.reason)
            entry["commands"].append(f"{v.command.where}: {v.command.text}")
    return {
        "found": len(verdicts),
        "run": sum(v.run for v in verdicts),
        "marked": sum(not v.run and bool(v.reason) for v in verdicts),
        "unaccounted": unaccounted(verdicts),
        "by_file": {
            f: sum(v.command.file == f for v in verdicts)
            for f in dict.fromkeys(v.command.file for v in verdicts)
        },
        "marked_by": {
            name: {**e, "reason": " | ".join(sorted(e["reason"]))} for name, e in sorted(marked.items())
        },
    }


def substitute(text: str, info: StackInfo) -> str:
    for default, name in SUBSTITUTIONS:
        text = text.replace(default, str(getattr(info, name)))
    return text


def _ids(verdicts: list[Verdict]) -> list[str]:
    """Test ids by file:line, with `/2`, `/3` for a second and third command on one line."""
    seen: dict[str, int] = {}
    ids = []
    for v in verdicts:
        seen[v.command.where] = seen.get(v.command.where, 0) + 1
        n = seen[v.command.where]
        ids.append(v.command.where if n == 1 else f"{v.command.where}/{n}")
    return ids


VERDICTS = [classify(c) for c in doc_commands(REPO_ROOT)]


# -- the stack ---------------------------------------------------------------------------------


class ChainClock:
    """Advances the mock chain one block every `BLOCK_EVERY_S` in a thread, as its own timer would,
    but from the first doc command on rather than from the stack's start."""

    def __init__(self, rpc_url: str) -> None:
        self._url = f"{rpc_url}/advance"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chain-clock", daemon=True)
        self.error: str | None = None

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.wait(BLOCK_EVERY_S):  # the chain's pace, not a synchronisation
                try:
                    client.post(self._url, params={"n": 1}).raise_for_status()
                except httpx.HTTPError as exc:
                    self.error = repr(exc)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)  # polling a condition with a deadline


def _serving(info: StackInfo, version: str) -> bool:
    try:
        nodes = httpx.get(f"{info.broker_url}/upgrade/status", timeout=2).json()["nodes"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return len(nodes) == len(info.proxies) and all(n["ready"] and n["version"] == version for n in nodes)


@dataclass
class DocRun:
    info: StackInfo
    cwd: Path
    env: dict[str, str]
    clock: ChainClock
    results: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def doc_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocRun]:
    """One stack for every command of the module, in a scratch directory laid out as the repo."""
    started = time.monotonic()
    cwd = tmp_path_factory.mktemp("docs")
    for name in ("deploy", "docs"):
        shutil.copytree(REPO_ROOT / name, cwd / name, ignore=shutil.ignore_patterns(".env", "passwords.conf"))
    config = StackConfig(run_dir=cwd / "var" / "dev", block_time_s=0, model_load_s=0.5, extra_env=STACK_ENV)
    stack = LocalStack(config)
    with stack as running:
        info = running.info
        assert info is not None
        httpx.post(f"{info.chain_rpc_url}/advance", params={"n": 1}).raise_for_status()
        _wait(lambda: _serving(info, config.old_version), 60, f"every node serving {config.old_version}")
        env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "COLUMNS": "200",
        }
        clock = ChainClock(info.chain_rpc_url)
        clock.start()
        run = DocRun(info, cwd, env, clock)
        run.results.append({"step": "stack up", "seconds": round(time.monotonic() - started, 2)})
        try:
            yield run
        finally:
            clock.stop()
            REPORT.parent.mkdir(parents=True, exist_ok=True)
            REPORT.write_text(json.dumps(run.results, indent=2) + "\n")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# Only the commands that run are tests here: a marked one is not a skipped test but a command
# with its reason, which `tests/unit/test_doc_commands.py` checks (every command run or marked)
# and counts.
RUN_HERE = [v for v in VERDICTS if v.run]


def test_every_doc_command_is_run_here_or_marked_with_a_reason() -> None:
    unaccounted = [f"{v.command.where}: `{v.command.text}`" for v in VERDICTS if not v.run and not v.reason]
    assert unaccounted == [], "neither run nor marked with a reason:\n" + "\n".join(unaccounted)


@pytest.mark.parametrize("verdict", RUN_HERE, ids=_ids(RUN_HERE))
def test_doc_command(verdict: Verdict, request: pytest.FixtureRequest) -> None:
    command = verdict.command
    run: DocRun = request.getfixturevalue("doc_run")
    text = substitute(command.text, run.info)
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", text],
            cwd=REPO_ROOT if FROM_REPO_ROOT.match(text) else run.cwd,
            env=run.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"{command.where}: `{text}` did not end within {COMMAND_TIMEOUT_S:g}s\n{_tail(out)}")
    seconds = round(time.monotonic() - started, 2)
    last_line = _tail(done.stdout or done.stderr, 1)
    run.results.append(
        {
            "where": command.where,
            "command": text,
            "exit": done.returncode,
            "seconds": seconds,
            "last": last_line,
        }
    )
    assert run.clock.error is None, f"the chain clock failed: {run.clock.error}"
    assert done.returncode == verdict.exit_code, (
        f"{command.where}: `{text}` exited {done.returncode}, the doc expects {verdict.exit_code}\n"
        f"stderr:\n{_tail(done.stderr)}\nstdout:\n{_tail(done.stdout)}"
    )
