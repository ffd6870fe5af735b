"""Reading the services' JSON-lines logs as they grow, for their own timestamps."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from bench.stats import parse_log_ts

__all__ = ["LogTail"]


class LogTail:
    """Reads a JSON-lines service log incrementally, for the services' own timestamps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        lines = []
        for raw in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                if isinstance(line, dict):
                    lines.append(line)
        return lines

    @staticmethod
    def ts(line: dict[str, Any]) -> float:
        return parse_log_ts(str(line["ts"]))
