"""Secret files the operator guide tells people to create never reach git nor the image build context.

`docs/operator-guide.md` has operators create `deploy/.env` (from `deploy/.env.example`: every
NATS password and admin token), and `mlnode-upgrade deploy secrets` also writes
`deploy/nats/passwords.conf` (the NATS users, `deploy/docker-compose.yml`, `deploy/k8s/`).
docker compose builds with the repository root as its context, so without a `.dockerignore` entry
those files are sent to the Docker daemon on every build. NATS credentials and TLS keys
(`*_NATS__CREDS_FILE`, `*_NATS__TLS_KEY_FILE`) are secrets of the same kind.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SECRETS = (
    "deploy/.env",  # the file the operator guide names
    "deploy/nats/passwords.conf",  # `mlnode-upgrade deploy secrets`, mounted by compose and k8s
    "deploy/k8s/config/passwords.conf",
    ".env",
    "deploy/.env.production",
    "deploy/nats/broker.creds",
    "deploy/tls/server.key",
)
KEPT = ("deploy/.env.example",)  # the template is committed


# -- git ----------------------------------------------------------------------------------------


def _git_ignores(path: str) -> bool:
    # --no-index: judge by the ignore rules alone, whether or not a file is tracked or exists.
    done = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", path], cwd=REPO, capture_output=True, check=False
    )
    if done.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed: {done.stderr.decode(errors='replace').strip()}")
    return done.returncode == 0


@pytest.fixture(scope="module")
def git_work_tree() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git work tree")


@pytest.mark.parametrize("path", SECRETS)
def test_git_ignores_secret_files(git_work_tree: None, path: str) -> None:
    assert _git_ignores(path), f"{path} is not in .gitignore"


@pytest.mark.parametrize("path", KEPT)
def test_git_keeps_the_template(git_work_tree: None, path: str) -> None:
    assert not _git_ignores(path)


# -- docker build context -------------------------------------------------------------------------


def _compile(pattern: str) -> re.Pattern[str]:
    """A `.dockerignore` pattern as Docker matches it (moby/patternmatcher): `**` spans directories,
    `*` and `?` stay within one path segment, the whole path must match."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((negated, _compile(pattern)))
    return rules


def _docker_excludes(path: str) -> bool:
    """Excluded when the last rule matching the path (or a directory above it) is not a `!` rule."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, rule in _dockerignore():
        if any(rule.match(c) for c in candidates):
            excluded = not negated
    return excluded


def test_the_matcher_follows_docker_rules() -> None:
    assert _compile("**/.env").match(".env") and _compile("**/.env").match("a/b/.env")
    assert not _compile("*.key").match("tls/server.key")  # `*` does not cross a directory
    assert _compile("var").match("var") and not _compile("var").match("sub/var")


@pytest.mark.parametrize("path", SECRETS)
def test_the_build_context_excludes_secret_files(path: str) -> None:
    assert _docker_excludes(path), f"{path} is sent in the docker build context: add it to .dockerignore"


def test_the_build_context_keeps_what_the_dockerfile_copies() -> None:
    sources = []
    for line in (REPO / "deploy" / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            args = [w for w in words[1:] if not w.startswith("--")]
            sources += args[:-1]
    assert "shared" in sources and "services" in sources
    for source in sources:
        assert not _docker_excludes(source.removeprefix("./")), f".dockerignore excludes {source}"
