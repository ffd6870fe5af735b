"""Every FastAPI app of ours reads a JSON body that comes without a Content-Type.

The real API node's Go client never sets that header on its POSTs, and FastAPI from 0.120 on
answers such a body 422 unless the app says `strict_content_type=False`. The behaviour is tested
over sockets per app; this guard catches a new app that forgets it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "shared", "devtools", "mock_mlnode", "mock_chain", "cli", "bench")


def _fastapi_calls() -> list[tuple[str, ast.Call]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "FastAPI"
                ):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return found


def test_every_app_reads_json_without_a_content_type() -> None:
    calls = _fastapi_calls()
    assert len(calls) >= 6  # ops, broker, registry, chain-watcher, mock MLNode, mock chain
    strict = [
        where
        for where, call in calls
        if not any(
            k.arg == "strict_content_type" and isinstance(k.value, ast.Constant) and k.value.value is False
            for k in call.keywords
        )
    ]
    assert strict == [], f"apps that would answer an untyped JSON body 422: {strict}"
