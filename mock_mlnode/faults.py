"""Injected faults: which call fails, stalls, loses its connection or kills the process.

A rule matches calls by method, route (the path after the version and node prefixes), version
and node; an empty field matches anything. Rules with a count fire that many times and are then
spent; latency applies to every match for as long as the rule exists.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FaultAction", "FaultBook", "FaultDecision", "FaultRule"]


class FaultAction(enum.StrEnum):
    FAIL = "fail"  # answer with `status`
    DROP = "drop"  # close the connection without a complete answer
    EXIT = "exit"  # the process dies on the spot, as the real watchdog's os._exit does
    DELAY = "delay"  # only add latency


class FaultRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: FaultAction = FaultAction.FAIL
    route: str = ""
    method: str = ""
    version: str = ""
    node: str = ""
    times: Annotated[int, Field(ge=0, le=1_000_000)] = 1  # 0 = every matching call, forever
    status: Annotated[int, Field(ge=400, le=599)] = 500
    latency_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    exit_code: Annotated[int, Field(ge=0, le=255)] = 1

    def matches(self, method: str, route: str, version: str, node: str) -> bool:
        return (
            (not self.route or self.route == route)
            and (not self.method or self.method.upper() == method.upper())
            and (not self.version or self.version == version)
            and (not self.node or self.node == node)
        )


@dataclass(frozen=True)
class FaultDecision:
    latency_s: float = 0.0
    action: FaultAction | None = None
    status: int = 500
    exit_code: int = 1
    rule_id: int | None = None


@dataclass
class _Armed:
    rule: FaultRule
    remaining: int | None  # None: forever


@dataclass
class FaultBook:
    _rules: dict[int, _Armed] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, rule: FaultRule) -> int:
        rule_id = next(self._ids)
        self._rules[rule_id] = _Armed(rule, rule.times or None)
        return rule_id

    def clear(self) -> None:
        self._rules.clear()

    def describe(self) -> list[dict[str, object]]:
        return [
            {"id": rid, "remaining": armed.remaining, **armed.rule.model_dump(mode="json")}
            for rid, armed in self._rules.items()
        ]

    def decide(self, method: str, route: str, version: str, node: str) -> FaultDecision:
        """What happens to this call; consumes one use of the first matching action rule."""
        latency = 0.0
        for rule_id, armed in list(self._rules.items()):
            rule = armed.rule
            if not rule.matches(method, route, version, node):
                continue
            latency += rule.latency_s
            if rule.action is FaultAction.DELAY:
                self._spend(rule_id, armed)
                continue
            self._spend(rule_id, armed)
            return FaultDecision(latency, rule.action, rule.status, rule.exit_code, rule_id)
        return FaultDecision(latency)

    def _spend(self, rule_id: int, armed: _Armed) -> None:
        if armed.remaining is None:
            return
        armed.remaining -= 1
        if armed.remaining <= 0:
            del self._rules[rule_id]
