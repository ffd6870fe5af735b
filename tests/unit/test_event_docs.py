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
        assert f"nats pub {cls.SUBJECT} '{cls.EXAMPLES[0]}'" in markdown
        assert cls.PUBLISHER in markdown


def test_a_stale_file_is_reported(tmp_path: Path) -> None:
    for rel, content in render_all().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    (tmp_path / "events.md").write_text("edited by hand")
    assert stale_docs(tmp_path) == ["events.md"]
