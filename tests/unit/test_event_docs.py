"""The committed event reference is generated from the models and must not be stale."""

from __future__ import annotations

import json
from pathlib import Path

from devtools.event_docs import render_all, stale_docs
from shared.events import EVENT_TYPES

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_docs_match_the_models() -> None:
    assert stale_docs(DOCS) == [], "run `make docs` and commit the result"


def test_every_event_has_a_schema_and_a_ready_nats_pub_line() -> None:
    files = render_all()
    markdown = files["events.md"]
    for cls in EVENT_TYPES:
        schema = json.loads(files[f"events/{cls.SUBJECT}.schema.json"])
        assert schema["additionalProperties"] is False
        assert f"pub {cls.SUBJECT} '{cls.EXAMPLES[0]}'" in markdown
        assert cls.PUBLISHER in markdown


# The NATS user whose grant lets it publish each subject (shared/nats_config.py).
PUBLISHING_USER = {
    "chain.block": "chain-watcher",
    "chain.upgrade.scheduled": "chain-watcher",
    "chain.version": "chain-watcher",
    "version.changed": "registry",
    "broker.refreshed": "broker",
    "broker.readiness": "broker",
}


def test_every_example_names_its_user_and_has_the_cli_form_beside_it() -> None:
    lines = render_all()["events.md"].splitlines()
    assert set(PUBLISHING_USER) == {cls.SUBJECT for cls in EVENT_TYPES}
    for cls in EVENT_TYPES:
        user = PUBLISHING_USER[cls.SUBJECT]
        for example in cls.EXAMPLES:
            nats_line = f"nats --context mlnode-{user} pub {cls.SUBJECT} '{example}'"
            at = lines.index(nats_line)
            assert lines[at + 1] == f"mlnode-upgrade events pub {cls.SUBJECT} '{example}'"
    assert not [line for line in lines if line.startswith("nats pub")], "a nats line without its user"


def test_a_stale_file_is_reported(tmp_path: Path) -> None:
    for rel, content in render_all().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    (tmp_path / "events.md").write_text("edited by hand")
    assert stale_docs(tmp_path) == ["events.md"]
