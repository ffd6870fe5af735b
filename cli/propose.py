"""`mlnode-upgrade propose`: the governance proposal for a partial upgrade.

Writes the JSON that `inferenced tx gov submit-proposal` takes (one
`/inference.inference.MsgCreatePartialUpgrade` signed by the gov module account) and prints the
exact command, or with `--submit URL` sends it to a mock_chain. Inputs are validated before
anything is written: the version must be usable as a URL path segment, and a height too close to
be reached after the voting period is flagged, because the chain would store the plan after its
height and drop it without applying it.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import httpx
import typer

from shared.versions import InvalidVersionError, parse_version

__all__ = [
    "GOV_MODULE_ADDRESS",
    "MSG_CREATE_PARTIAL_UPGRADE",
    "ProposalInputError",
    "build_proposal",
    "check_api_binaries_json",
    "height_warnings",
    "propose",
    "submit_command",
]

# The gov module account on gonka (bech32 of sha256("gov")[:20] with prefix "gonka").
GOV_MODULE_ADDRESS = "gonka10d07y265gmmuvt4z0w9aw880jnsr700j2h5m33"
MSG_CREATE_PARTIAL_UPGRADE = "/inference.inference.MsgCreatePartialUpgrade"
MAX_HEIGHT = 2**63 - 1


class ProposalInputError(ValueError):
    """An input the proposal cannot be built from; the message tells the operator what to fix."""


def build_proposal(
    *,
    height: int,
    node_version: str,
    api_binaries_json: str = "",
    title: str,
    summary: str,
    deposit: str,
    metadata: str = "",
    expedited: bool = False,
    authority: str = GOV_MODULE_ADDRESS,
) -> dict[str, Any]:
    """The submit-proposal document; uint64 `height` is a decimal string, as protobuf JSON writes it."""
    if not 0 < height <= MAX_HEIGHT:
        raise ProposalInputError(f"--height must be a block height above 0, got {height}")
    try:
        parse_version(node_version)
    except InvalidVersionError as exc:
        raise ProposalInputError(f"--node-version: {exc}") from None
    if not title.strip() or not summary.strip():
        raise ProposalInputError("--title and --summary cannot be empty")
    if not deposit.strip():
        raise ProposalInputError("--deposit is required, e.g. 10000000ngonka")
    return {
        "messages": [
            {
                "@type": MSG_CREATE_PARTIAL_UPGRADE,
                "authority": authority,
                "height": str(height),
                "nodeVersion": node_version,
                "apiBinariesJson": api_binaries_json,
            }
        ],
        "metadata": metadata,
        "deposit": deposit,
        "title": title,
        "summary": summary,
        "expedited": expedited,
    }


def check_api_binaries_json(raw: str, node_version: str) -> list[str]:
    """Warnings about `apiBinariesJson` as the API nodes read it; raises when it is not JSON at all."""
    if not raw:
        return []
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ProposalInputError(f"--api-binaries-json is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProposalInputError("--api-binaries-json must be a JSON object")
    warnings = []
    binaries = doc.get("api_binaries")
    if not isinstance(binaries, dict) or not binaries:
        warnings.append(
            '--api-binaries-json has no non-empty "api_binaries" map: API nodes skip such an entry '
            "entirely, including its node version"
        )
    inner = doc.get("node_version")
    if inner is not None and inner != node_version:
        warnings.append(
            f"--api-binaries-json says node_version {inner!r} but --node-version is {node_version!r}: API "
            "nodes take the one inside the JSON, the chain records --node-version"
        )
    return warnings


def height_warnings(height: int, current_height: int | None, voting_period_blocks: int | None) -> list[str]:
    """Refuse a height that has passed; warn when the vote cannot end before it."""
    if current_height is None:
        return ["the chain's current height is unknown (use --rpc or --current-height): not checked"]
    if height <= current_height:
        raise ProposalInputError(f"--height {height} is not in the future: the chain is at {current_height}")
    if voting_period_blocks is not None and height - current_height <= voting_period_blocks:
        return [
            f"height {height} is only {height - current_height} blocks ahead but the voting period is "
            f"{voting_period_blocks} blocks: the plan would be stored after its height and dropped "
            f"without being applied; choose a height above {current_height + voting_period_blocks}"
        ]
    return []


def submit_command(path: str, from_key: str, chain_id: str, node: str | None) -> str:
    args = ["inferenced", "tx", "gov", "submit-proposal", path, "--from", from_key, "--chain-id", chain_id]
    if node:
        args += ["--node", node]
    return shlex.join(args)


def _current_height(rpc_url: str) -> int:
    try:
        response = httpx.get(f"{rpc_url.rstrip('/')}/status", timeout=5.0)
        return int(response.json()["result"]["sync_info"]["latest_block_height"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ProposalInputError(f"cannot read the current height from {rpc_url}/status: {exc!r}") from None


def _mock_voting_period(url: str) -> int | None:
    try:
        response = httpx.get(f"{url.rstrip('/')}/gov/params", timeout=5.0)
        return int(response.json()["voting_period_blocks"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def propose(
    height: int = typer.Option(..., "--height", help="Block height at which the MLNodes switch"),
    node_version: str = typer.Option(..., "--node-version", help="Target MLNode version, e.g. v3.0.9"),
    deposit: str = typer.Option(..., "--deposit", help="Initial deposit, e.g. 10000000ngonka"),
    api_binaries_json: str = typer.Option("", "--api-binaries-json", help="Optional API binaries JSON"),
    title: str | None = typer.Option(None, "--title", help="Default: 'MLNode upgrade to V at height H'"),
    summary: str | None = typer.Option(None, "--summary", help="Default: a one-line description"),
    metadata: str = typer.Option("", "--metadata", help="Proposal metadata (e.g. an ipfs:// link)"),
    expedited: bool = typer.Option(False, "--expedited", help="Ask for an expedited vote"),
    authority: str = typer.Option(GOV_MODULE_ADDRESS, "--authority", help="The gov module account"),
    out: Path = typer.Option(
        Path("partial-upgrade-proposal.json"), "--out", help="Where to write (- = stdout)"
    ),
    submit: str | None = typer.Option(None, "--submit", help="A mock_chain URL: submit there instead"),
    rpc: str | None = typer.Option(None, "--rpc", help="CometBFT RPC URL to read the current height"),
    current_height: int | None = typer.Option(None, "--current-height", help="Instead of --rpc"),
    voting_period_blocks: int | None = typer.Option(None, "--voting-period-blocks", help="For the check"),
    from_key: str = typer.Option("<key-name>", "--from", help="Key for the printed command"),
    chain_id: str = typer.Option("<chain-id>", "--chain-id", help="Chain id for the printed command"),
    node: str | None = typer.Option(None, "--node", help="Node for the printed command"),
) -> None:
    """Write a partial-upgrade governance proposal (or submit it to a mock_chain)."""
    title = title or f"MLNode upgrade to {node_version} at height {height}"
    summary = summary or (
        f"Switch every MLNode to {node_version} at block {height} (a partial upgrade; old and new "
        "containers run side by side until then)."
    )
    try:
        proposal = build_proposal(
            height=height,
            node_version=node_version,
            api_binaries_json=api_binaries_json,
            title=title,
            summary=summary,
            deposit=deposit,
            metadata=metadata,
            expedited=expedited,
            authority=authority,
        )
        warnings = check_api_binaries_json(api_binaries_json, node_version)
        status_url = rpc or submit
        if current_height is None and status_url:
            current_height = _current_height(status_url)
        if voting_period_blocks is None and submit:
            voting_period_blocks = _mock_voting_period(submit)
        warnings += height_warnings(height, current_height, voting_period_blocks)
    except ProposalInputError as exc:
        raise _fail(str(exc), 2) from None
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)

    document = json.dumps(proposal, indent=2) + "\n"
    if submit:
        _submit(submit, proposal)
        return
    if str(out) == "-":
        typer.echo(document, nl=False)
        return
    out.write_text(document)
    typer.echo(f"wrote {out}")
    typer.echo("submit it to the chain with:")
    typer.echo("  " + submit_command(str(out), from_key, chain_id, node))
    typer.echo("then vote with: inferenced tx gov vote <proposal-id> yes --from <validator-key>")


def _submit(url: str, proposal: dict[str, Any]) -> None:
    endpoint = f"{url.rstrip('/')}/gov/proposals"
    try:
        response = httpx.post(endpoint, json=proposal, timeout=10.0)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {endpoint}: {exc!r}", 1) from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    if response.status_code != 200:
        raise _fail(f"the chain refused the proposal (HTTP {response.status_code}): {body.get('error')}", 1)
    typer.echo(
        f"submitted proposal {body['proposal_id']}: voting ends at height {body['voting_end_height']}, "
        f"status {body['status']}"
    )
