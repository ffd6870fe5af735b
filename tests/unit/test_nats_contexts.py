"""The NATS CLI contexts `dev up` writes, and the `nats` lines of the docs that rely on them."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from cli.nats_contexts import context_dir, context_name, ready_lines, user_description, write_contexts
from shared.nats_config import ADMIN_USER, user_names
from shared.subjects import publisher_of

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/events.md", "docs/operator-guide.md")
# Every field jsm.go's natscontext `settings` writes (`nats context save`), in its order.
NATSCLI_FIELDS = [
    "description",
    "url",
    "socks_proxy",
    "token",
    "user",
    "password",
    "creds",
    "nkey",
    "cert",
    "key",
    "ca",
    "nsc",
    "jetstream_domain",
    "jetstream_api_prefix",
    "jetstream_event_prefix",
    "inbox_prefix",
    "user_jwt",
    "color_scheme",
    "tls_first",
]


def _secrets(directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True)
    passwords = {user: f'pw-{user}-"$x" #1' for user in user_names()}
    for user, password in passwords.items():
        (directory / f"{user}.password").write_text(password + "\n")
    return passwords


def test_a_context_per_user_in_the_nats_cli_format(tmp_path: Path) -> None:
    passwords = _secrets(tmp_path / "secrets")
    url = "nats://127.0.0.1:4222,nats://127.0.0.1:4223"
    written = write_contexts(tmp_path, url, tmp_path / "secrets")

    directory = tmp_path / "nats" / "context"
    assert context_dir(tmp_path) == directory
    assert sorted(p.name for p in directory.iterdir()) == sorted(f"mlnode-{u}.json" for u in user_names())
    assert written == [directory / f"mlnode-{u}.json" for u in user_names()]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for user in user_names():
        path = directory / f"{context_name(user)}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the password
        text = path.read_text()
        document = json.loads(text)
        assert list(document) == NATSCLI_FIELDS
        assert document == {
            "description": f"mlnode-upgrade: {user_description(user)}",
            "url": url,
            "socks_proxy": "",
            "token": "",
            "user": user,
            "password": passwords[user],  # as the server has it: the file's trailing newline stripped
            "creds": "",
            "nkey": "",
            "cert": "",
            "key": "",
            "ca": "",
            "nsc": "",
            "jetstream_domain": "",
            "jetstream_api_prefix": "",
            "jetstream_event_prefix": "",
            "inbox_prefix": "",
            "user_jwt": "",
            "color_scheme": "",
            "tls_first": False,
        }
        assert text == json.dumps(document, indent=2) + "\n"  # Go's MarshalIndent("", "  ") layout


def test_rewritten_at_each_start_with_the_new_url(tmp_path: Path) -> None:
    _secrets(tmp_path / "secrets")
    write_contexts(tmp_path, "nats://127.0.0.1:1111", tmp_path / "secrets")
    write_contexts(tmp_path, "nats://127.0.0.1:2222", tmp_path / "secrets")
    for path in context_dir(tmp_path).iterdir():
        assert json.loads(path.read_text())["url"] == "nats://127.0.0.1:2222"


def test_descriptions_say_what_each_user_may_do() -> None:
    assert user_description("chain-watcher") == "the chain-watcher service: publishes chain.>"
    assert "answers registry.state" in user_description("registry")
    assert "every subject" in user_description(ADMIN_USER)
    with pytest.raises(ValueError, match="no grant"):
        user_description("nobody")


def test_ready_lines() -> None:
    assert ready_lines("var/dev") == [
        "XDG_CONFIG_HOME=var/dev nats --context mlnode-chain-watcher pub chain.block '{\"height\": 120}'",
        "XDG_CONFIG_HOME=var/dev nats --context mlnode-admin sub 'chain.>'",
        "XDG_CONFIG_HOME=var/dev nats --context mlnode-admin req registry.state '{}'",
        "mlnode-upgrade events pub chain.block '{\"height\": 120}'",
        "mlnode-upgrade events sub 'chain.>'",
    ]
    other = ready_lines("/tmp/my stack", "--run-dir '/tmp/my stack'")
    assert other[0].startswith("XDG_CONFIG_HOME='/tmp/my stack' nats --context")
    assert other[3] == "mlnode-upgrade events pub --run-dir '/tmp/my stack' chain.block '{\"height\": 120}'"


# `nats [--context mlnode-USER] pub|sub|req SUBJECT`: a NATS CLI line that touches the bus.
NATS_LINE = re.compile(
    r"\bnats\s+(?:--context\s+(?P<context>\S+)\s+)?(?P<verb>pub|sub|req)\s+'?(?P<subject>[^\s']+)"
)


def _allowed(context: str | None, verb: str, subject: str) -> bool:
    """Whether the line's user may do it: its own subjects for a service, anything for admin."""
    if context is None or not context.startswith("mlnode-"):
        return False
    user = context.removeprefix("mlnode-")
    if user == ADMIN_USER:
        return True
    return verb == "pub" and publisher_of(subject) == user


def _nats_lines(text: str) -> list[re.Match[str]]:
    return list(NATS_LINE.finditer(text))


@pytest.mark.parametrize("doc", DOCS)
def test_every_nats_line_of_the_docs_names_a_user_that_may_do_it(doc: str) -> None:
    found = _nats_lines((REPO / doc).read_text())
    assert found, f"{doc} has no nats line any more: drop it from DOCS"
    wrong = [m.group(0) for m in found if not _allowed(m["context"], m["verb"], m["subject"])]
    assert wrong == [], f"{doc}: nats lines without a context whose user may do it"


def test_the_printed_lines_name_a_user_that_may_do_it() -> None:
    found = _nats_lines("\n".join(ready_lines("var/dev")))
    assert len(found) == 3
    assert all(_allowed(m["context"], m["verb"], m["subject"]) for m in found)


def test_the_line_check_can_fail() -> None:
    bad = "nats pub chain.block '{}'\nnats --context mlnode-chain-watcher pub version.changed '{}'\n"
    bad += "nats --context mlnode-broker sub 'broker.>'\n"
    assert not any(_allowed(m["context"], m["verb"], m["subject"]) for m in _nats_lines(bad))
