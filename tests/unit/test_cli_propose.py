"""`mlnode-upgrade propose`: the proposal file, the printed command, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from cli.propose import (
    ProposalInputError,
    build_proposal,
    check_api_binaries_json,
    height_warnings,
    submit_command,
)
from mock_chain.gov import parse_proposal

runner = CliRunner()


def test_written_proposal_is_what_the_chain_accepts(tmp_path: Path) -> None:
    out = tmp_path / "proposal.json"
    result = runner.invoke(
        app,
        [
            "propose",
            "--height",
            "12000",
            "--node-version",
            "v3.0.9",
            "--deposit",
            "10000000ngonka",
            "--title",
            "Upgrade",
            "--summary",
            "Move to v3.0.9",
            "--current-height",
            "11000",
            "--voting-period-blocks",
            "100",
            "--out",
            str(out),
            "--from",
            "gov-key",
            "--chain-id",
            "gonka-mainnet",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["messages"] == [
        {
            "@type": "/inference.inference.MsgCreatePartialUpgrade",
            "authority": "gonka10d07y265gmmuvt4z0w9aw880jnsr700j2h5m33",
            "height": "12000",
            "nodeVersion": "v3.0.9",
            "apiBinariesJson": "",
        }
    ]
    assert (doc["title"], doc["summary"], doc["deposit"], doc["expedited"]) == (
        "Upgrade",
        "Move to v3.0.9",
        "10000000ngonka",
        False,
    )
    draft = parse_proposal(doc)  # the mock chain's parser, which refuses what the chain refuses
    assert draft.messages[0].height == 12000
    assert f"inferenced tx gov submit-proposal {out} --from gov-key --chain-id gonka-mainnet" in result.output
    assert "warning" not in result.output


def test_stdout_output_and_default_title(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "propose",
            "--height",
            "500",
            "--node-version",
            "v3.1.0-rc1",
            "--deposit",
            "1ngonka",
            "--current-height",
            "10",
            "--out",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["title"] == "MLNode upgrade to v3.1.0-rc1 at height 500"


def test_too_close_a_height_warns_but_still_writes(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    result = runner.invoke(
        app,
        [
            "propose",
            "--height",
            "105",
            "--node-version",
            "v3.0.9",
            "--deposit",
            "1ngonka",
            "--current-height",
            "100",
            "--voting-period-blocks",
            "10",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0
    assert "only 5 blocks ahead but the voting period is 10 blocks" in result.stderr
    assert out.exists()


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--node-version", "v3.0.9/../admin"], "path separator"),
        (["--node-version", "latest"], "invalid MLNode version"),
        (["--current-height", "200"], "not in the future"),
        (["--api-binaries-json", "{broken"], "not valid JSON"),
        (["--api-binaries-json", "[1]"], "must be a JSON object"),
    ],
)
def test_invalid_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], reason: str) -> None:
    out = tmp_path / "p.json"
    base = {"--height": "150", "--node-version": "v3.0.9", "--deposit": "1ngonka", "--current-height": "100"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["propose", "--out", str(out), *[x for pair in base.items() for x in pair]]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert reason in result.stderr
    assert not out.exists()


def test_api_binaries_json_warnings() -> None:
    assert check_api_binaries_json("", "v3.0.9") == []
    good = json.dumps(
        {"api_binaries": {"linux/amd64": "https://x?checksum=sha256:ab"}, "node_version": "v3.0.9"}
    )
    assert check_api_binaries_json(good, "v3.0.9") == []
    warnings = check_api_binaries_json('{"amd64": "hash1"}', "v3.0.9")
    assert any("skip such an entry" in w for w in warnings)
    mismatch = json.dumps({"api_binaries": {"linux/amd64": "u"}, "node_version": "v3.0.10"})
    assert any("take the one inside the JSON" in w for w in check_api_binaries_json(mismatch, "v3.0.9"))


def test_height_checks() -> None:
    assert height_warnings(200, 100, 50) == []
    assert "unknown" in height_warnings(200, None, None)[0]
    assert "choose a height above 160" in height_warnings(150, 100, 60)[0]
    with pytest.raises(ProposalInputError, match="not in the future"):
        height_warnings(100, 100, 10)


def test_builder_refuses_bad_values() -> None:
    with pytest.raises(ProposalInputError, match="--height"):
        build_proposal(height=0, node_version="v3.0.9", title="t", summary="s", deposit="1ngonka")
    with pytest.raises(ProposalInputError, match="--deposit"):
        build_proposal(height=5, node_version="v3.0.9", title="t", summary="s", deposit=" ")


def test_command_quotes_what_the_shell_would_split() -> None:
    assert submit_command("my proposal.json", "k", "c", "tcp://n:26657") == (
        "inferenced tx gov submit-proposal 'my proposal.json' --from k --chain-id c --node tcp://n:26657"
    )
