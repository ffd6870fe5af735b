"""Every call a mock instance received, so a test can see exactly which version got what."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["RequestLog", "RequestRecord"]


@dataclass(frozen=True)
class RequestRecord:
    seq: int
    ts: float
    method: str
    path: str  # as received, prefixes included
    route: str  # after the version and node prefixes
    version: str
    node: str
    status: int | None  # None: the connection was dropped or the process exited
    fault: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """The newest `limit` calls; older ones fall off so a long benchmark run stays bounded."""

    def __init__(self, limit: int = 100_000) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=limit)
        self._seq = 0

    def add(
        self,
        *,
        ts: float,
        method: str,
        path: str,
        route: str,
        version: str,
        node: str,
        status: int | None,
        fault: str | None = None,
    ) -> RequestRecord:
        self._seq += 1
        record = RequestRecord(self._seq, ts, method, path, route, version, node, status, fault)
        self._records.append(record)
        return record

    def query(
        self, *, version: str = "", node: str = "", route: str = "", method: str = "", since: int = 0
    ) -> list[RequestRecord]:
        return [
            r
            for r in self._records
            if r.seq > since
            and (not version or r.version == version)
            and (not node or r.node == node)
            and (not route or r.route == route)
            and (not method or r.method == method.upper())
        ]

    def clear(self) -> None:
        self._records.clear()
