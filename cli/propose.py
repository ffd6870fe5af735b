"""`mlnode-upgrade propose`: the governance proposal for a partial upgrade.

Writes the JSON that `inferenced tx gov submit-proposal` takes (one
`/inference.inference.MsgCreatePartialUpgrade` signed by the gov module account) and prints the
exact command, or with `--submit URL` sends it to a mock_chain. Inputs are validated before
anything is written: the version must be usable as a URL path segment, and a height the chain
passes before the vote ends is refused, because the chain would store the plan after its height
and drop it without applying it.

With `--rpc` the check uses the chain's own numbers, read from that CometBFT node: the x/gov
parameters through `abci_query` (`/cosmos.gov.v1.Query/Params`; the voting period is a duration,
48 h on the gonka network) and the average block time of the newest blocks (`/status`,
`/block`). The vote is assumed to end that duration after submission, so a height must lie
beyond it plus a margin for block-time drift and for the time until the proposal is on chain. A
deposit below `min_deposit` is flagged too: such a proposal waits in its deposit period and is
not voted on at all until deposits reach the minimum. `--current-height` and
`--voting-period-blocks` override what would be read (offline use). `--force` turns a refusal,
or an unreadable node, into a warning. With `--submit` alone the mock chain's block count from
its `/gov/params` is used and a too-close height is only a warning: the mock refuses it itself.
"""

from __future__ import annotations

import base64
import json
import math
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import typer
from google.protobuf.message import DecodeError

from proto.cosmos.gov.v1 import gov_pb2, query_pb2
from shared.chain_status import parse_status
from shared.coins import Coin, InvalidCoins, below, coins_text, foreign_denoms, parse_coins
from shared.timestamps import rfc3339
from shared.versions import InvalidVersionError, parse_version

__all__ = [
    "GOV_MODULE_ADDRESS",
    "GOV_PARAMS_PATH",
    "MSG_CREATE_PARTIAL_UPGRADE",
    "Assessment",
    "BlockTime",
    "ChainReadError",
    "ChainState",
    "GovParams",
    "ProposalInputError",
    "assess",
    "build_proposal",
    "check_api_binaries_json",
    "parse_deposit",
    "propose",
    "read_block_time",
    "read_chain",
    "read_gov_params",
    "read_status",
    "submit_command",
]

# The gov module account on gonka (bech32 of sha256("gov")[:20] with prefix "gonka").
GOV_MODULE_ADDRESS = "gonka10d07y265gmmuvt4z0w9aw880jnsr700j2h5m33"
MSG_CREATE_PARTIAL_UPGRADE = "/inference.inference.MsgCreatePartialUpgrade"
MAX_HEIGHT = 2**63 - 1
GOV_PARAMS_PATH = "/cosmos.gov.v1.Query/Params"
BLOCK_SAMPLE = 100  # block intervals averaged for the block time (fewer on a short or pruned chain)
# Blocks beyond the estimated end of the vote: block times drift over two days, and the proposal
# reaches the chain some time after this command runs (signing, broadcasting).
MARGIN_FRACTION = 0.10
MARGIN_BLOCKS = 20
HTTP_TIMEOUT_S = 5.0


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


class ChainReadError(RuntimeError):
    """The node named with --rpc (or --submit) did not answer what the checks need."""


def parse_deposit(raw: str) -> tuple[Coin, ...]:
    """`--deposit` as the chain parses it; a bad one is the operator's to fix."""
    try:
        return parse_coins(raw)
    except InvalidCoins as exc:
        raise ProposalInputError(f"--deposit: {exc}") from None


@dataclass(frozen=True, slots=True)
class GovParams:
    """The x/gov parameters the checks use (from `cosmos.gov.v1.Params`)."""

    voting_period_s: float
    expedited_voting_period_s: float | None  # unset before Cosmos SDK v0.50
    min_deposit: tuple[Coin, ...]
    expedited_min_deposit: tuple[Coin, ...]
    max_deposit_period_s: float

    @classmethod
    def from_proto(cls, params: gov_pb2.Params) -> GovParams:
        def coins(items: Any) -> tuple[Coin, ...]:
            return tuple(sorted(Coin(c.denom, int(c.amount)) for c in items))

        if not params.HasField("voting_period") or params.voting_period.ToNanoseconds() <= 0:
            raise ChainReadError("the chain's gov params have no voting_period")
        expedited = params.expedited_voting_period.ToNanoseconds() / 1e9
        return cls(
            voting_period_s=params.voting_period.ToNanoseconds() / 1e9,
            expedited_voting_period_s=expedited if expedited > 0 else None,
            min_deposit=coins(params.min_deposit),
            expedited_min_deposit=coins(params.expedited_min_deposit),
            max_deposit_period_s=params.max_deposit_period.ToNanoseconds() / 1e9,
        )


@dataclass(frozen=True, slots=True)
class BlockTime:
    """The average seconds per block over the newest `intervals` blocks."""

    seconds_per_block: float
    intervals: int


@dataclass(frozen=True, slots=True)
class ChainState:
    height: int
    block_time: BlockTime | None  # None when the check was given a block count instead
    gov: GovParams


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the checks found: `refusals` stop the proposal unless --force, `warnings` do not."""

    refusals: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    lowest_safe_height: int | None = None


def _duration_text(seconds: float) -> str:
    """Go's time.Duration style for whole seconds of an hour or more (`48h0m0s`), else `6.5s`."""
    if seconds >= 3600 and seconds == int(seconds):
        whole = int(seconds)
        return f"{whole // 3600}h{whole % 3600 // 60}m{whole % 60}s"
    return f"{seconds:.6g}s"


def _deposit_findings(deposit: str, gov: GovParams, expedited: bool) -> list[str]:
    """x/gov: only min_deposit's denominations are accepted, and the vote starts at the minimum."""
    coins = parse_deposit(deposit)
    name = "expedited_min_deposit" if expedited else "min_deposit"
    minimum = gov.expedited_min_deposit if expedited else gov.min_deposit
    findings = []
    if foreign_denoms(coins, gov.min_deposit):
        accepted = sorted({c.denom for c in gov.min_deposit})
        findings.append(
            f"--deposit {coins_text(coins)}: the chain accepts deposits only in "
            f"{', '.join(accepted)} and refuses the transaction"
        )
    if below(coins, minimum):
        findings.append(
            f"--deposit {coins_text(coins)} is below the chain's {name} of {coins_text(minimum)}: the "
            "proposal would wait in its deposit period (up to "
            f"{_duration_text(gov.max_deposit_period_s)}) and the vote would not start until deposits reach "
            f"the minimum; deposit at least {coins_text(minimum)}"
        )
    return findings


def assess(
    *,
    height: int,
    current_height: int | None,
    deposit: str,
    expedited: bool = False,
    voting_period_blocks: int | None = None,
    gov: GovParams | None = None,
    block_time: BlockTime | None = None,
) -> Assessment:
    """Decide on a height and a deposit from what is known about the chain; pure.

    A height at or below the current one is never acceptable and raises. Otherwise the vote is
    taken to last `voting_period_blocks` blocks when given (exactly, the operator's number), or
    the chain's voting period divided by its block time plus the margin.
    """
    refusals: list[str] = []
    warnings: list[str] = []
    lowest: int | None = None
    if gov is not None:
        warnings += _deposit_findings(deposit, gov, expedited)
    if current_height is None:
        warnings.append("the chain's current height is unknown (use --rpc or --current-height): not checked")
        return Assessment(tuple(refusals), tuple(warnings), lowest)
    if height <= current_height:
        raise ProposalInputError(f"--height {height} is not in the future: the chain is at {current_height}")
    ahead = height - current_height
    if voting_period_blocks is not None:
        lowest = current_height + voting_period_blocks + 1
        if height < lowest:
            refusals.append(
                f"height {height} is only {ahead} blocks ahead but the voting period is "
                f"{voting_period_blocks} blocks: the plan would be stored after its height and dropped "
                f"without being applied; the lowest safe height is {lowest}"
            )
    elif gov is not None and block_time is not None:
        period = gov.voting_period_s
        kind = "vote"
        if expedited and gov.expedited_voting_period_s is not None:
            period, kind = gov.expedited_voting_period_s, "expedited vote"
        elif expedited:
            warnings.append("the chain has no expedited_voting_period: checked against voting_period")
        vote_blocks = math.ceil(period / block_time.seconds_per_block)
        margin = math.ceil(vote_blocks * MARGIN_FRACTION) + MARGIN_BLOCKS
        lowest = current_height + vote_blocks + margin + 1
        if height < lowest:
            estimate = (
                f"the {kind} lasts {_duration_text(period)}, about {vote_blocks} blocks at "
                f"{block_time.seconds_per_block:.3g} s per block (averaged over the last "
                f"{block_time.intervals} blocks)"
            )
            margin_text = (
                f"{vote_blocks} blocks plus a margin of {margin} ({MARGIN_FRACTION:.0%} + {MARGIN_BLOCKS} "
                "blocks) for block-time drift and the time until the proposal is on chain"
            )
            refusals.append(
                f"height {height} is {ahead} blocks ahead of the chain (at {current_height}), but "
                f"{estimate}: the plan would be stored after its height and dropped without being applied. "
                f"The lowest safe height is {lowest}: {margin_text}"
            )
    else:
        warnings.append(
            "the voting period is unknown (use --rpc or --voting-period-blocks): the height is not checked "
            "against it"
        )
    return Assessment(tuple(refusals), tuple(warnings), lowest)


# -- reading the chain ------------------------------------------------------------------------


def _rpc_result(client: httpx.Client, base: str, route: str, params: dict[str, str] | None = None) -> Any:
    """The `result` of a CometBFT URI request; the body's `error` member decides, not the status."""
    url = f"{base.rstrip('/')}/{route}"
    try:
        response = client.get(url, params=params)
    except httpx.HTTPError as exc:
        raise ChainReadError(f"cannot reach {url}: {exc!r}") from None
    try:
        body = response.json()
    except ValueError:
        raise ChainReadError(f"{url} did not answer JSON-RPC (HTTP {response.status_code})") from None
    if not isinstance(body, dict):
        raise ChainReadError(f"{url} did not answer a JSON-RPC object (HTTP {response.status_code})")
    error = body.get("error")
    if error is not None:
        detail = str(error)
        if isinstance(error, dict):
            detail = ": ".join(str(error[k]) for k in ("message", "data") if error.get(k)) or detail
        raise ChainReadError(f"{url} answered an error: {detail}")
    if "result" not in body:
        raise ChainReadError(f"{url} answered neither a result nor an error (HTTP {response.status_code})")
    return body["result"]


def read_status(client: httpx.Client, base: str) -> tuple[int, datetime, int]:
    """`/status`: latest height, latest block time, earliest height kept; a syncing node is refused."""
    result = _rpc_result(client, base, "status")
    try:
        status = parse_status(result)
        latest, earliest, catching_up = status.height, status.earliest_height or 1, status.catching_up
        latest_time = status.latest_time
        if latest_time is None:
            raise ValueError("sync_info.latest_block_time is not an RFC 3339 time with a zone")
    except (KeyError, TypeError, ValueError) as exc:
        raise ChainReadError(f"unexpected /status answer from {base}: {exc!r}") from None
    if catching_up:
        raise ChainReadError(
            f"{base} is catching up (at height {latest}): its height is not the chain's; use a synced node"
        )
    return latest, latest_time, max(1, earliest)


def read_block_time(
    client: httpx.Client, base: str, latest: int, latest_time: datetime, earliest: int
) -> BlockTime:
    """The average seconds per block from `/block` of up to BLOCK_SAMPLE blocks back."""
    oldest = max(earliest, latest - BLOCK_SAMPLE)
    if latest - oldest < 1:
        raise ChainReadError(f"{base} has no earlier block than {latest} to measure the block time with")
    result = _rpc_result(client, base, "block", {"height": str(oldest)})
    try:
        oldest_time = rfc3339(result["block"]["header"]["time"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ChainReadError(f"unexpected /block answer from {base}: {exc!r}") from None
    span = (latest_time - oldest_time).total_seconds()
    if span <= 0:
        raise ChainReadError(
            f"the block times of {base} do not increase from height {oldest} to {latest}: "
            "cannot measure the block time"
        )
    return BlockTime(span / (latest - oldest), latest - oldest)


def read_gov_params(client: httpx.Client, base: str) -> GovParams:
    """`abci_query` of `/cosmos.gov.v1.Query/Params` with params_type "voting"; uses `params`."""
    request = query_pb2.QueryParamsRequest(params_type="voting").SerializeToString()
    result = _rpc_result(
        client, base, "abci_query", {"path": f'"{GOV_PARAMS_PATH}"', "data": "0x" + request.hex()}
    )
    where = f"{base} abci_query {GOV_PARAMS_PATH}"
    try:
        response = result["response"]
        code = int(response.get("code") or 0)
        if code != 0:
            raise ChainReadError(
                f"{where} failed: code {code} ({response.get('codespace') or 'no codespace'}): "
                f"{response.get('log')}"
            )
        answer = query_pb2.QueryParamsResponse.FromString(base64.b64decode(response.get("value") or ""))
    except (KeyError, TypeError, ValueError, AttributeError, DecodeError) as exc:
        raise ChainReadError(f"unexpected answer from {where}: {exc!r}") from None
    if not answer.HasField("params"):
        raise ChainReadError(f"{where} answered no params (a Cosmos SDK before v0.47?)")
    try:
        return GovParams.from_proto(answer.params)
    except ValueError as exc:  # a coin amount that is not an integer
        raise ChainReadError(f"unexpected gov params from {where}: {exc!r}") from None


def read_chain(client: httpx.Client, base: str, *, need_block_time: bool = True) -> ChainState:
    """Everything the checks read from a node: height, block time (when needed), gov params."""
    latest, latest_time, earliest = read_status(client, base)
    block_time = read_block_time(client, base, latest, latest_time, earliest) if need_block_time else None
    return ChainState(height=latest, block_time=block_time, gov=read_gov_params(client, base))


def _mock_voting_period(client: httpx.Client, url: str) -> int | None:
    """A mock_chain's own block count (`/gov/params`); None from anything else."""
    try:
        response = client.get(f"{url.rstrip('/')}/gov/params")
        return int(response.json()["voting_period_blocks"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _http_client() -> httpx.Client:
    return httpx.Client(timeout=HTTP_TIMEOUT_S)


def submit_command(path: str, from_key: str, chain_id: str, node: str | None) -> str:
    args = ["inferenced", "tx", "gov", "submit-proposal", path, "--from", from_key, "--chain-id", chain_id]
    if node:
        args += ["--node", node]
    return shlex.join(args)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def propose(
    height: int = typer.Option(..., "--height", help="Block height at which the MLNodes switch"),
    node_version: str = typer.Option(..., "--node-version", help="Target MLNode version, e.g. v3.0.9"),
    deposit: str = typer.Option(
        ..., "--deposit", help="Initial deposit; gonka's min_deposit is 25000000ngonka (50000000 expedited)"
    ),
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
    rpc: str | None = typer.Option(
        None, "--rpc", help="CometBFT RPC URL: check against its height, block time and gov params"
    ),
    current_height: int | None = typer.Option(None, "--current-height", help="Override the height (offline)"),
    voting_period_blocks: int | None = typer.Option(
        None, "--voting-period-blocks", help="Override: the vote lasts this many blocks (offline)"
    ),
    force: bool = typer.Option(
        False, "--force", help="Go on when a check refuses or the node cannot be read (warnings instead)"
    ),
    from_key: str = typer.Option("<key-name>", "--from", help="Key for the printed command"),
    chain_id: str = typer.Option("<chain-id>", "--chain-id", help="Chain id for the printed command"),
    node: str | None = typer.Option(None, "--node", help="Node for the printed command"),
) -> None:
    """Write a partial-upgrade governance proposal (or submit it to a mock_chain).

    Exits 2 when an input is refused (a height the vote would outlast included), 1 when the node
    cannot be read or the mock chain refuses; --force turns both checks into warnings.
    """
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
        parse_deposit(deposit)
        warnings = check_api_binaries_json(api_binaries_json, node_version)
        known = _what_the_chain_says(rpc, submit, current_height, voting_period_blocks, force=force)
        warnings += known.warnings
        assessment = assess(
            height=height,
            current_height=known.current_height,
            deposit=deposit,
            expedited=expedited,
            voting_period_blocks=known.voting_period_blocks,
            gov=known.gov,
            block_time=known.block_time,
        )
    except ProposalInputError as exc:
        raise _fail(str(exc), 2) from None
    _report(warnings, assessment, force=force, mock_decides=known.mock_decides)
    if submit:
        _submit(submit, proposal)
        return
    _write(proposal, out, submit_command(str(out), from_key, chain_id, node))


@dataclass(frozen=True, slots=True)
class _Known:
    """What the checks know about the chain: read from the node, or given on the command line."""

    current_height: int | None
    voting_period_blocks: int | None
    gov: GovParams | None = None
    block_time: BlockTime | None = None
    mock_decides: bool = False  # --submit alone: the mock chain applies its own block-count rule
    warnings: tuple[str, ...] = ()


def _what_the_chain_says(
    rpc: str | None,
    submit: str | None,
    current_height: int | None,
    voting_period_blocks: int | None,
    *,
    force: bool,
) -> _Known:
    """Read the node named by --rpc (or the mock of --submit); the offline overrides win."""
    with _http_client() as client:
        try:
            if rpc:
                chain = read_chain(client, rpc, need_block_time=voting_period_blocks is None)
                height = chain.height if current_height is None else current_height
                return _Known(height, voting_period_blocks, chain.gov, chain.block_time)
            if submit:
                if current_height is None:
                    current_height = read_status(client, submit)[0]
                if voting_period_blocks is None:
                    mock_blocks = _mock_voting_period(client, submit)
                    return _Known(current_height, mock_blocks, mock_decides=mock_blocks is not None)
        except ChainReadError as exc:
            if not force:
                raise _fail(f"{exc}. Nothing is checked without it: fix --rpc, or pass --force", 1) from None
            return _Known(
                current_height,
                voting_period_blocks,
                warnings=(f"{exc}: not checked against the chain (--force)",),
            )
    return _Known(current_height, voting_period_blocks)


def _report(warnings: list[str], assessment: Assessment, *, force: bool, mock_decides: bool) -> None:
    """Print what the checks found; exit 2 on a refusal unless --force (or the mock decides)."""
    for warning in (*warnings, *assessment.warnings):
        typer.echo(f"warning: {warning}", err=True)
    for refusal in assessment.refusals:
        if force:
            typer.echo(f"warning: {refusal} (--force: going on)", err=True)
        elif mock_decides:
            typer.echo(f"warning: {refusal}", err=True)
        else:
            typer.echo(f"error: {refusal}", err=True)
    if assessment.refusals and not (force or mock_decides):
        typer.echo(
            "error: nothing written; choose a later --height (or --force to write it anyway)", err=True
        )
        raise typer.Exit(2)


def _write(proposal: dict[str, Any], out: Path, command: str) -> None:
    document = json.dumps(proposal, indent=2) + "\n"
    if str(out) == "-":
        typer.echo(document, nl=False)
        return
    out.write_text(document)
    typer.echo(f"wrote {out}")
    typer.echo("submit it to the chain with:")
    typer.echo("  " + command)
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
