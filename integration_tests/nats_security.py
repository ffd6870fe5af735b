"""Per-service NATS users for tests: generated passwords in files, never in the repository."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from shared.nats_config import NatsUser, user_names
from shared.settings import NatsSettings

__all__ = ["Credentials", "awkward_password"]


def awkward_password() -> str:
    """A random password with what breaks naive config rendering: leading digit, `$`, quotes, `#`, spaces."""
    return f"{secrets.randbelow(10)}{secrets.token_hex(6)}$X \"q\" 'a' #{secrets.token_urlsafe(8)} ${{Y}}"


@dataclass(frozen=True)
class Credentials:
    directory: Path
    passwords: dict[str, str]

    @classmethod
    def generate(cls, directory: Path) -> Credentials:
        directory.mkdir(parents=True, exist_ok=True)
        passwords = {name: awkward_password() for name in user_names()}
        for name, password in passwords.items():
            path = directory / f"{name}.password"
            path.write_text(password)
            path.chmod(0o600)
        return cls(directory, passwords)

    @property
    def users(self) -> list[NatsUser]:
        return [NatsUser(name, password) for name, password in self.passwords.items()]

    def password_file(self, user: str) -> Path:
        return self.directory / f"{user}.password"

    def settings(self, url: str, user: str, **extra: object) -> NatsSettings:
        return NatsSettings(url=url, user=user, password_file=self.password_file(user), **extra)  # type: ignore[arg-type]

    def env(self, prefix: str, user: str) -> dict[str, str]:
        return {f"{prefix}NATS__USER": user, f"{prefix}NATS__PASSWORD_FILE": str(self.password_file(user))}
