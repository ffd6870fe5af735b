"""Which NATS user may publish a subject, read from the grants the server enforces.

The CLI's hints, the NATS CLI contexts' docs and the event reference name the user for a subject;
deriving it from `shared.nats_config`'s grants keeps them right when a grant changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.nats_config import DEFAULT_GRANTS, ServiceGrant

__all__ = ["publisher_of", "subject_matches"]


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: `*` is one token, a final `>` one or more."""
    tokens, parts = pattern.split("."), subject.split(".")
    for i, token in enumerate(tokens):
        if token == ">":
            return len(parts) > i
        if i >= len(parts) or token not in ("*", parts[i]):
            return False
    return len(tokens) == len(parts)


def publisher_of(subject: str, grants: Sequence[ServiceGrant] = DEFAULT_GRANTS) -> str | None:
    """The service user whose grant publishes `subject` (chain.* -> chain-watcher), if any."""
    for grant in grants:
        if subject == f"errors.{grant.user}" or any(subject_matches(p, subject) for p in grant.publishes):
            return grant.user
    return None
