"""The doc-command extractor on small samples, and every real doc command accounted for.

The real-docs check is the fast half of `integration_tests/test_docs_commands.py`: a command that
is neither runnable nor marked with a reason fails here, before any stack starts. It writes the
counts and the reasons to `var/doc-commands.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.doc_commands import DocCommand, DocMarkError, Mark, doc_commands, extract, strip_comment
from integration_tests.test_docs_commands import RULES, classify, summary, unaccounted

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT = REPO_ROOT / "var" / "doc-commands.json"


def texts(commands: list[DocCommand]) -> list[tuple[int, str]]:
    return [(c.line, c.text) for c in commands]


def test_fenced_blocks_join_continuations_and_drop_comments() -> None:
    doc = """\
# Title

```sh
make demo   # the whole thing
# a comment line
mlnode-upgrade deploy nginx --version v3.0.6=a:8080 \\
    --listen 8080 > nginx.conf
mlnode-upgrade events pub chain.block '{"note": "# not a comment"}'
```

```python
print("not shell")
```

```bash
echo one#two
```
"""
    assert texts(extract(doc, "x.md")) == [
        (4, "make demo"),
        (6, "mlnode-upgrade deploy nginx --version v3.0.6=a:8080 --listen 8080 > nginx.conf"),
        (8, """mlnode-upgrade events pub chain.block '{"note": "# not a comment"}'"""),
        (16, "echo one#two"),
    ]


def test_console_blocks_keep_only_prompted_lines() -> None:
    doc = """\
```console
$ mlnode-upgrade status --json
{"height": 3}
$ mlnode-upgrade nodes \\
  list
[]
```
"""
    assert texts(extract(doc, "x.md")) == [
        (2, "mlnode-upgrade status --json"),
        (4, "mlnode-upgrade nodes list"),
    ]


def test_inline_spans_that_are_command_lines() -> None:
    doc = """\
Run `mlnode-upgrade status` or `make
docs`; `status --watch`, `dev up`, `docker-compose` and `GET /state` are prose.
`BROKER_X=1` is a setting, `FOO=1 make lint` a command, `scripts/docker/images.sh` too.
<!-- `mlnode-upgrade hidden` is in a comment -->
``nats pub a '`b`'``
"""
    assert texts(extract(doc, "x.md")) == [
        (1, "mlnode-upgrade status"),
        (1, "make docs"),
        (3, "FOO=1 make lint"),
        (3, "scripts/docker/images.sh"),
        (5, "nats pub a '`b`'"),
    ]


def test_marks_apply_to_the_next_block_or_their_paragraph() -> None:
    doc = """\
First `mlnode-upgrade history` and `mlnode-upgrade status`.
<!-- doc-test: skip: not today -->

- an item with `make lint` <!-- doc-test: exit 2 -->
- another with `make test`

<!-- doc-test: skip: long-running -->
```sh
mlnode-upgrade dev up
mlnode-upgrade status --watch
```

```sh
mlnode-upgrade status
```
"""
    found = [(c.line, c.text, c.mark) for c in extract(doc, "x.md")]
    assert found == [
        (1, "mlnode-upgrade history", Mark(skip="not today")),
        (1, "mlnode-upgrade status", Mark(skip="not today")),
        (4, "make lint", Mark(exit_code=2)),
        (5, "make test", None),
        (9, "mlnode-upgrade dev up", Mark(skip="long-running")),
        (10, "mlnode-upgrade status --watch", Mark(skip="long-running")),
        (14, "mlnode-upgrade status", None),
    ]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("`make demo` <!-- doc-test: skip -->\n", "needs a reason"),
        ("`make demo` <!-- doc-test: skip:   -->\n", "needs a reason"),
        ("`make demo` <!-- doc-test: maybe -->\n", "unknown doc-test mark"),
        ("`make demo` <!-- doc-test skip: x -->\n", "reads `doc-test: skip"),
        ("No command here. <!-- doc-test: skip: x -->\n", "no command"),
        ("Text.\n\n<!-- doc-test: skip: x -->\n", "no command"),  # a blank line detaches it
        ("<!-- doc-test: skip: x -->\n```sh\n# only a comment\n```\n", "block with no command"),
        ("`make a b` <!-- doc-test: skip: x --> <!-- doc-test: exit 1 -->\n", "several doc-test marks"),
    ],
)
def test_a_mark_that_cannot_be_read_or_applies_to_nothing_is_an_error(doc: str, message: str) -> None:
    with pytest.raises(DocMarkError, match=message):
        extract(doc, "x.md")


def test_strip_comment_respects_quotes_and_escapes() -> None:
    assert strip_comment("make demo  # why") == "make demo"
    assert strip_comment("""echo '# x' "# y" \\# z # gone""") == """echo '# x' "# y" \\# z"""
    assert strip_comment("curl http://h/#frag") == "curl http://h/#frag"


def test_rules_and_runnable_commands() -> None:
    def by(text: str) -> str:
        return classify(DocCommand("x.md", 1, text, "block")).by

    assert by("nats --context mlnode-admin sub 'chain.>'") == "nats-cli"
    assert by("mlnode-upgrade status --watch") == "live-view"
    assert by("mlnode-upgrade status --watch --until-done") == "runnable"
    assert by("mlnode-upgrade events sub 'chain.>'") == "subscription"
    assert by("mlnode-upgrade events sub 'chain.>' --count 3") == "runnable"
    assert by("mlnode-upgrade propose --rpc http://your-node:26657 --height 1") == "real-chain"
    assert by("mlnode-upgrade events pub SUBJECT JSON") == "template"
    assert by("curl http://localhost:8082/upgrade/status") == "runnable"
    marked = DocCommand("x.md", 1, "make demo", "block", Mark(exit_code=0))
    assert classify(marked).run and classify(marked).by == "doc mark"


def test_the_check_reports_an_unmarked_unknown_command() -> None:
    doc = "Apply it with `kubectl apply -f deploy/k8s/`, then `mlnode-upgrade status`.\n"
    verdicts = [classify(c) for c in extract(doc, "sample.md")]
    assert unaccounted(verdicts) == ["sample.md:1: kubectl apply -f deploy/k8s/"]
    assert summary(verdicts)["run"] == 1


def test_every_real_doc_command_is_run_or_marked_with_a_reason() -> None:
    verdicts = [classify(c) for c in doc_commands(REPO_ROOT)]
    assert unaccounted(verdicts) == [], "give each a doc mark (<!-- doc-test: skip: why -->) or a rule"
    assert all(v.run or v.reason.strip() for v in verdicts)
    counts = summary(verdicts)
    assert counts["found"] == counts["run"] + counts["marked"]
    assert counts["run"] > 0 and counts["marked"] > 0
    assert set(counts["marked_by"]) <= {r.name for r in RULES} | {"doc mark"}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(counts, indent=2) + "\n")
    print(
        f"\ndoc commands: {counts['found']} found, {counts['run']} run, {counts['marked']} marked: "
        + ", ".join(f"{name} {e['count']}" for name, e in counts["marked_by"].items())
    )
