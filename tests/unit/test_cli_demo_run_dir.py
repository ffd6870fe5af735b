"""The demo starts from nothing: a previous run's state is wiped, a foreign directory refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.demo import RunDirInUse, fresh_run_dir


def test_a_previous_demo_run_is_wiped(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    (run / "nats" / "jetstream").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    fresh_run_dir(run)
    assert not run.exists()
    fresh_run_dir(run)  # nothing there: nothing to do


def test_a_directory_with_other_files_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "nats").mkdir()
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(RunDirInUse, match=r"thesis\.tex"):
        fresh_run_dir(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "mine"
