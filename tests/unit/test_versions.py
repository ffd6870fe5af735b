"""Versions are URL path segments: what is accepted must never change a URL's structure."""

from __future__ import annotations

import itertools
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from shared.versions import (
    MAX_VERSION_LENGTH,
    VERSION_PATTERN,
    InvalidEndpointError,
    InvalidVersionError,
    MLNodeVersion,
    NodeEndpoint,
    parse_optional_version,
    versioned_base_url,
    versioned_url,
)


@pytest.mark.parametrize(
    "raw", ["v3.0.8", "v3.1.0-rc1", "3.0.9", "v0.0.0", "v10.20.30-alpha.1.beta-2", "v3.0.10"]
)
def test_accepted_versions_are_kept_verbatim(raw: str) -> None:
    assert str(MLNodeVersion(raw)) == raw


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("..", "'..'"),
        ("v1.0.0/..", "path separator"),
        ("v1.0", "semantic version"),
        ("%2e%2e", "percent"),
        ("v1.0.0 ", "whitespace"),
        (" v1.0.0", "whitespace"),
        ("v1.0.0\n", "whitespace"),
        ("v1.0.0-" + "a" * 58, "65 characters"),
        ("", "empty"),
        ("v1.0.0+build", "build metadata"),
        ("V1.0.0", "semantic version"),
        ("v01.0.0", "semantic version"),
        ("v1.0.0-01", "semantic version"),
        ("v1.0.0-", "semantic version"),
        ("v1.0.0\\..", "path separator"),
        ("v1.0.0?x=1", "semantic version"),
        ("v1.0.0#x", "semantic version"),
        ("v1.0.0-ré", "non-ASCII"),
        ("v1.0.0\x00", "control"),
    ],
)
def test_refused_versions_say_why(raw: str, reason: str) -> None:
    with pytest.raises(InvalidVersionError, match=reason):
        MLNodeVersion(raw)


def test_the_65_character_case_is_exactly_one_over_the_limit() -> None:
    assert len("v1.0.0-" + "a" * 58) == MAX_VERSION_LENGTH + 1
    assert str(MLNodeVersion("v1.0.0-" + "a" * 57)) == "v1.0.0-" + "a" * 57


def test_ordering_follows_semantic_version_precedence() -> None:
    raws = ["v3.0.10", "v3.0.8", "v3.0.8-rc.1", "v3.0.8-alpha", "v3.0.8-alpha.10", "v3.0.8-alpha.2", "v2.9.9"]
    ordered = [str(v) for v in sorted(MLNodeVersion(r) for r in raws)]
    assert ordered == [
        "v2.9.9",
        "v3.0.8-alpha",
        "v3.0.8-alpha.2",
        "v3.0.8-alpha.10",
        "v3.0.8-rc.1",
        "v3.0.8",
        "v3.0.10",
    ]


def test_spellings_of_one_version_are_distinct_but_adjacent() -> None:
    plain, prefixed = MLNodeVersion("3.0.8"), MLNodeVersion("v3.0.8")
    assert plain != prefixed  # different URL segments
    assert plain.precedence_key() == prefixed.precedence_key()
    assert MLNodeVersion("v3.0.7") < plain < prefixed < MLNodeVersion("v3.0.9")


def test_versions_are_strings_in_pydantic_models() -> None:
    class Holder(BaseModel):
        version: MLNodeVersion

    held = Holder.model_validate_json('{"version": "v3.0.8"}')
    assert held.version == MLNodeVersion("v3.0.8")
    assert held.model_dump_json() == '{"version":"v3.0.8"}'
    with pytest.raises(ValidationError, match="path separator"):
        Holder.model_validate_json('{"version": "v3.0.8/.."}')
    with pytest.raises(ValidationError):
        Holder.model_validate_json('{"version": 308}')
    assert Holder.model_json_schema()["properties"]["version"]["pattern"] == VERSION_PATTERN


# --- URLs: the real client's examples, exactly -------------------------------------------------


def test_real_client_example_versioned_url() -> None:
    # The real client's unit test: segment /api/v1, port 9090.
    url = versioned_url("example.com", 9090, MLNodeVersion("v3.0.8"), "/api/v1")
    assert url == "http://example.com:9090/v3.0.8/api/v1"


def test_empty_version_gives_the_unversioned_url() -> None:
    assert versioned_url("example.com", 9090, None, "/api/v1") == "http://example.com:9090/api/v1"
    assert versioned_url("example.com", 9090, parse_optional_version(""), "") == "http://example.com:9090"


def test_default_node_config_urls() -> None:
    # The default join config: host "inference" (nginx), inference 5000, poc 8080, empty segments.
    node = NodeEndpoint(host="inference", inference_port=5000, poc_port=8080)
    v = MLNodeVersion("v3.0.8")
    assert node.poc_url(v) + "/api/v1/state" == "http://inference:8080/v3.0.8/api/v1/state"
    assert (
        node.inference_url(v) + "/v1/chat/completions" == "http://inference:5000/v3.0.8/v1/chat/completions"
    )
    assert node.poc_url(None) == "http://inference:8080"
    assert node.inference_url(None) == "http://inference:5000"


def test_version_goes_before_the_segment() -> None:
    node = NodeEndpoint(
        host="mlnode", inference_port=5000, poc_port=8080, poc_segment="/poc", inference_segment="/inf"
    )
    v = MLNodeVersion("v3.0.8")
    assert node.poc_url(v) == "http://mlnode:8080/v3.0.8/poc"
    assert node.inference_url(v) == "http://mlnode:5000/v3.0.8/inf"


def test_base_url_form() -> None:
    v = MLNodeVersion("v3.0.9")
    assert (
        versioned_base_url("https://gw.example.com/ml/", v, "/api/v1")
        == "https://gw.example.com/ml/v3.0.9/api/v1"
    )
    assert (
        versioned_base_url("https://gw.example.com/ml", None, "/api/v1") == "https://gw.example.com/ml/api/v1"
    )
    node = NodeEndpoint(host="x", inference_port=1, poc_port=2, base_url="http://gw:80")
    assert node.poc_url(v) == "http://gw:80/v3.0.9"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"host": "a/b"}, "invalid host"),
        ({"host": ""}, "invalid host"),
        ({"host": "evil.com@x"}, "invalid host"),
        ({"inference_port": 0}, "invalid port"),
        ({"poc_port": 70000}, "invalid port"),
        ({"poc_segment": "api"}, "invalid path segment"),
        ({"poc_segment": "/api/../x"}, "not allowed"),
        ({"inference_segment": "/%2e%2e"}, "invalid path segment"),
        ({"inference_segment": "/a b"}, "invalid path segment"),
    ],
)
def test_bad_endpoint_parts_are_refused(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"host": "inference", "inference_port": 5000, "poc_port": 8080}
    with pytest.raises(InvalidEndpointError, match=match):
        NodeEndpoint(**{**base, **kwargs})  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------------

versions_from_grammar = st.from_regex(VERSION_PATTERN, fullmatch=True).filter(
    lambda s: len(s) <= MAX_VERSION_LENGTH
)
segments = st.sampled_from(["", "/api/v1", "/v1/chat/completions", "/poc", "/a/b.c/d-e"])


def accepted(raw: str) -> MLNodeVersion | None:
    try:
        return MLNodeVersion(raw)
    except InvalidVersionError:
        return None


def assert_structure_kept(url: str, version: MLNodeVersion, segment: str) -> None:
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port) == ("http", "inference", 8080)
    assert parts.query == "" and parts.fragment == ""
    assert parts.path == f"/{version.raw}{segment}"
    # exactly one segment was added, and no decoding step can reinterpret it
    assert parts.path.split("/")[1] == version.raw
    assert unquote(parts.path) == parts.path
    assert all(seg not in (".", "..") for seg in parts.path.split("/"))


@given(versions_from_grammar, segments)
def test_grammar_versions_keep_the_url_structure(raw: str, segment: str) -> None:
    version = MLNodeVersion(raw)
    assert_structure_kept(versioned_url("inference", 8080, version, segment), version, segment)


@st.composite
def mutated_versions(draw: st.DrawFn) -> str:
    """A valid version with arbitrary text spliced in: mostly invalid, sometimes still valid."""
    base = draw(versions_from_grammar)
    at = draw(st.integers(0, len(base)))
    return base[:at] + draw(st.text(max_size=4)) + base[at:]


@given(st.one_of(st.text(max_size=80), mutated_versions()), segments)
def test_nothing_accepted_changes_the_url_structure(raw: str, segment: str) -> None:
    version = accepted(raw)
    if version is not None:
        assert_structure_kept(versioned_url("inference", 8080, version, segment), version, segment)


@given(st.text(alphabet=st.sampled_from("v0123456789.-/%+ \\?#rcalph"), max_size=70))
def test_dangerous_characters_are_never_accepted(raw: str) -> None:
    version = accepted(raw)
    if version is not None:
        assert not set(raw) & set("/%+ \\?#")
        assert ".." not in raw
        assert len(raw) <= MAX_VERSION_LENGTH


@given(st.lists(versions_from_grammar, min_size=2, max_size=6))
def test_ordering_is_total_and_consistent(raws: list[str]) -> None:
    versions = [MLNodeVersion(r) for r in raws]
    ordered = sorted(versions)
    assert sorted(reversed(ordered)) == ordered
    for a, b in itertools.pairwise(ordered):
        assert a <= b
        assert (a == b) == (a.raw == b.raw)
