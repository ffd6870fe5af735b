"""What a benchmark hands back: its figures, and each figure that has a target checked against it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchContext", "BenchResult", "Check"]


@dataclass(frozen=True)
class Check:
    """One figure against its target; `met` is None when the figure could not be measured."""

    measure: str
    value: float | None
    unit: str
    target: str
    met: bool | None

    def to_json(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
        }

    @classmethod
    def at_most(cls, measure: str, value: float | None, limit: float, unit: str) -> Check:
        met = None if value is None else value <= limit
        return cls(measure, value, unit, f"<= {limit:g} {unit}", met)

    @classmethod
    def at_least(cls, measure: str, value: float | None, limit: float, unit: str) -> Check:
        met = None if value is None else value >= limit
        return cls(measure, value, unit, f">= {limit:g} {unit}", met)


@dataclass
class BenchResult:
    name: str
    figures: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    # Figures without a target worth a line in the printed table: (measure, value).
    rows: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def met(self) -> bool | None:
        verdicts = [c.met for c in self.checks]
        if not verdicts:
            return None
        if any(v is False for v in verdicts):
            return False
        return None if any(v is None for v in verdicts) else True

    def to_json(self) -> dict[str, Any]:
        return {
            **self.figures,
            "target": "; ".join(f"{c.measure} {c.target}" for c in self.checks) or None,
            "met": self.met,
            "checks": [c.to_json() for c in self.checks],
            "wall_seconds": round(self.seconds, 1),
        }


@dataclass
class BenchContext:
    quick: bool
    work_dir: Path
    say: Callable[[str], None] = print
    # Python processes to run under cProfile, by name (`broker`, `version-registry`, `mlnode-v3.0.8`).
    profile: tuple[str, ...] = ()
    # Measurements one benchmark leaves for another in the same run (fan-out reuses the switches).
    shared: dict[str, Any] = field(default_factory=dict)
    # Fleet sizes for the switch benchmarks (`--nodes`); empty: each benchmark's own.
    nodes: tuple[int, ...] = ()
