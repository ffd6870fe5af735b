"""Files the project generates and commits (docs, deploy configs): write them, or find stale ones."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["stale_files", "write_files"]


def write_files(root: Path, files: Mapping[str, str]) -> list[Path]:
    """Write each relative path under `root`; returns the paths written."""
    written = []
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        written.append(path)
    return written


def stale_files(root: Path, files: Mapping[str, str]) -> list[str]:
    """Relative paths whose committed content differs from `files` (or is missing)."""
    return [
        rel
        for rel, content in files.items()
        if not (root / rel).exists() or (root / rel).read_text() != content
    ]
