"""MLNode versions and the URLs built from them.

A version string ends up verbatim as a URL path segment (`http://host:port/v3.0.8/api/v1/state`),
so validation here is a security boundary: anything that could change the path's structure
(`..`, `/`, `%2e`, spaces, control characters) is refused before it reaches a URL or a proxy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

MAX_VERSION_LENGTH = 64

_NUMERIC = r"0|[1-9][0-9]*"
_PRERELEASE_ID = r"0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*"
VERSION_PATTERN = (
    rf"^v?(?P<major>{_NUMERIC})\.(?P<minor>{_NUMERIC})\.(?P<patch>{_NUMERIC})"
    rf"(?:-(?P<pre>(?:{_PRERELEASE_ID})(?:\.(?:{_PRERELEASE_ID}))*))?$"
)
_VERSION_RE = re.compile(VERSION_PATTERN)


class InvalidVersionError(ValueError):
    """A string that is not an MLNode version; the message says why, for the operator."""


def _reason(raw: str) -> str:
    if raw == "":
        return "a version is required here and the string is empty"
    if len(raw) > MAX_VERSION_LENGTH:
        return f"it is {len(raw)} characters long; at most {MAX_VERSION_LENGTH} are allowed"
    if raw != raw.strip() or any(c.isspace() for c in raw):
        return "it contains whitespace"
    if "/" in raw or "\\" in raw:
        return "it contains a path separator"
    if ".." in raw:
        return "it contains '..'"
    if "%" in raw:
        return "it contains '%' (percent-encoding is not allowed)"
    if "+" in raw:
        return "build metadata ('+...') is not allowed in a URL path segment"
    if not raw.isascii() or not raw.isprintable():
        return "it contains non-ASCII or control characters"
    return "expected an optional 'v' and a semantic version such as v3.0.8 or v3.1.0-rc1"


def _prerelease_key(pre: str | None) -> tuple[tuple[int, int | str], ...] | None:
    if pre is None:
        return None
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))


@total_ordering
@dataclass(frozen=True, slots=True)
class MLNodeVersion:
    """A validated version, kept verbatim (`v3.0.8` and `3.0.8` are different URL segments).

    Ordering follows semantic-version precedence; two spellings of the same version are
    ordered by their text so that the ordering stays total and consistent with equality.
    """

    raw: str

    def __post_init__(self) -> None:
        if not isinstance(self.raw, str):
            raise InvalidVersionError(f"version must be a string, got {type(self.raw).__name__}")
        if len(self.raw) > MAX_VERSION_LENGTH or not _VERSION_RE.fullmatch(self.raw):
            raise InvalidVersionError(f"invalid MLNode version {self.raw!r}: {_reason(self.raw)}")

    @classmethod
    def parse(cls, raw: str) -> MLNodeVersion:
        return cls(raw)

    @property
    def major(self) -> int:
        return self._parts()[0]

    @property
    def minor(self) -> int:
        return self._parts()[1]

    @property
    def patch(self) -> int:
        return self._parts()[2]

    @property
    def prerelease(self) -> str | None:
        match = _VERSION_RE.fullmatch(self.raw)
        assert match is not None
        return match.group("pre")

    def _parts(self) -> tuple[int, int, int]:
        match = _VERSION_RE.fullmatch(self.raw)
        assert match is not None
        return int(match.group("major")), int(match.group("minor")), int(match.group("patch"))

    def precedence_key(self) -> tuple[Any, ...]:
        """Semantic-version precedence: a release sorts after all of its pre-releases."""
        pre = _prerelease_key(self.prerelease)
        return (*self._parts(), pre is None, pre or ())

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, MLNodeVersion):
            return NotImplemented
        return (self.precedence_key(), self.raw) < (other.precedence_key(), other.raw)

    def __str__(self) -> str:
        return self.raw

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        from_str = core_schema.no_info_after_validator_function(
            cls._from_str, core_schema.str_schema(strict=True)
        )
        return core_schema.json_or_python_schema(
            json_schema=from_str,
            python_schema=core_schema.union_schema([core_schema.is_instance_schema(cls), from_str]),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "pattern": VERSION_PATTERN,
            "maxLength": MAX_VERSION_LENGTH,
            "examples": ["v3.0.8", "v3.1.0-rc1", "3.0.9"],
        }

    @classmethod
    def _from_str(cls, raw: str) -> MLNodeVersion:
        try:
            return cls(raw)
        except InvalidVersionError as exc:
            # pydantic turns ValueError into a validation error carrying this message
            raise ValueError(str(exc)) from None


def parse_version(raw: str) -> MLNodeVersion:
    return MLNodeVersion(raw)


def parse_optional_version(raw: str | None) -> MLNodeVersion | None:
    """Empty means "no version": the unversioned URL, as the real client does."""
    return None if raw is None or raw == "" else MLNodeVersion(raw)


class InvalidEndpointError(ValueError):
    """A node address part (host, port, segment, base URL) that cannot build a safe URL."""


_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_IPV6_RE = re.compile(r"^\[[0-9A-Fa-f:.]+\]$")
_SEGMENT_RE = re.compile(r"^(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]*)*$")


def validate_host(host: str) -> str:
    if not (_HOST_RE.fullmatch(host) or _IPV6_RE.fullmatch(host)):
        raise InvalidEndpointError(
            f"invalid host {host!r}: expected a DNS name, an IPv4 or a bracketed IPv6 address"
        )
    return host


def validate_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidEndpointError(f"invalid port {port!r}: expected an integer from 1 to 65535")
    return port


def validate_segment(segment: str) -> str:
    """A segment is '' or '/a/b': it must not climb out of the versioned prefix."""
    if not _SEGMENT_RE.fullmatch(segment):
        raise InvalidEndpointError(
            f"invalid path segment {segment!r}: expected '' or a path starting with '/'"
        )
    parts = segment.split("/")[1:]
    if any(p in (".", "..") for p in parts) or "%" in segment:
        raise InvalidEndpointError(f"invalid path segment {segment!r}: '.', '..' and '%' are not allowed")
    return segment


def versioned_url(host: str, port: int, version: MLNodeVersion | None, segment: str = "") -> str:
    """`http://{host}:{port}/{version}{segment}`; without a version, `http://{host}:{port}{segment}`.

    The real client puts the version right after the port and the segment after it, and falls
    back to the unversioned URL (nginx's `location /`) when the version is empty.
    """
    validate_host(host)
    validate_port(port)
    validate_segment(segment)
    prefix = f"http://{host}:{port}"
    if version is None:
        return f"{prefix}{segment}"
    return f"{prefix}/{version.raw}{segment}"


def versioned_base_url(base_url: str, version: MLNodeVersion | None, segment: str = "") -> str:
    """The base-URL form: `{base_url without trailing /}/{version}{segment}`."""
    if not re.fullmatch(r"^https?://[^/\s?#]+(?:/[^\s?#]*)?$", base_url):
        raise InvalidEndpointError(f"invalid base URL {base_url!r}: expected http(s)://host[:port][/path]")
    validate_segment(segment)
    if version is None:
        return f"{base_url}{segment}"
    return f"{base_url.rstrip('/')}/{version.raw}{segment}"


@dataclass(frozen=True, slots=True)
class NodeEndpoint:
    """Where one MLNode is reached: the inference port and the PoC/management port.

    Field names follow the real node-config (`inference_port`, `inference_segment`,
    `poc_port`, `poc_segment`).
    """

    host: str
    inference_port: int
    poc_port: int
    inference_segment: str = ""
    poc_segment: str = ""
    base_url: str | None = None

    def __post_init__(self) -> None:
        validate_host(self.host)
        validate_port(self.inference_port)
        validate_port(self.poc_port)
        validate_segment(self.inference_segment)
        validate_segment(self.poc_segment)

    def inference_url(self, version: MLNodeVersion | None) -> str:
        if self.base_url:
            return versioned_base_url(self.base_url, version, self.inference_segment)
        return versioned_url(self.host, self.inference_port, version, self.inference_segment)

    def poc_url(self, version: MLNodeVersion | None) -> str:
        if self.base_url:
            return versioned_base_url(self.base_url, version, self.poc_segment)
        return versioned_url(self.host, self.poc_port, version, self.poc_segment)
