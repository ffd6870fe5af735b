"""The `mlnode-upgrade` command line."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import typer
from rich.console import Console

from cli.deploy_files import stale_files, write_all, write_secrets
from cli.ops import Endpoints, OpsError, add_node, list_nodes, remove_node, rollback, show_status
from cli.propose import propose
from cli.stack import StackConfig
from devtools.event_docs import stale_docs, write_docs

DEV_RUN_DIR = Path("var/dev")

app = typer.Typer(
    no_args_is_help=True, help="Zero-downtime MLNode upgrades at a governance-set block height."
)
events_app = typer.Typer(no_args_is_help=True, help="The event contracts on the bus.")
app.add_typer(events_app, name="events")
app.command("propose")(propose)
dev_app = typer.Typer(no_args_is_help=True, help="The embedded local stack.")
app.add_typer(dev_app, name="dev")
nodes_app = typer.Typer(no_args_is_help=True, help="The broker's MLNodes (admin API).")
app.add_typer(nodes_app, name="nodes")
deploy_app = typer.Typer(no_args_is_help=True, help="The generated files under deploy/.")
app.add_typer(deploy_app, name="deploy")
nats_app = typer.Typer(no_args_is_help=True, help="NATS: streams, buckets and consumers.")
app.add_typer(nats_app, name="nats")

RUN_DIR = typer.Option(DEV_RUN_DIR, "--run-dir", help="The local stack's directory (stack.json)")
REGISTRY = typer.Option(None, "--registry-url", help="version-registry HTTP, e.g. http://host:8081")
BROKER = typer.Option(None, "--broker-url", help="broker HTTP, e.g. http://host:8082")
RPC = typer.Option(None, "--rpc-url", help="CometBFT RPC, e.g. http://host:26657")
TOKEN = typer.Option(None, "--token-file", help="Admin token file (default: the local stack's)")


def _endpoints(
    run_dir: Path, registry: str | None, broker: str | None, rpc: str | None, token: Path | None
) -> Endpoints:
    try:
        return Endpoints.resolve(run_dir, registry, broker, rpc, token)
    except OpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@dev_app.command("up")
def dev_up(
    run_dir: Path = RUN_DIR,
    block_time_s: float = typer.Option(1.0, help="Seconds between blocks"),
    voting_period_blocks: int = typer.Option(5, help="Blocks from proposal to execution"),
    model_load_s: float = typer.Option(2.0, help="How long a mock MLNode takes to load its model"),
    log_level: str = typer.Option("INFO"),
) -> None:
    """Start NATS, mock_chain, two nodes (old + new version behind nginx) and the three services."""
    from cli.dev import dev_up as run

    config = StackConfig(
        run_dir=run_dir,
        block_time_s=block_time_s,
        voting_period_blocks=voting_period_blocks,
        model_load_s=model_load_s,
        log_level=log_level,
    )
    raise typer.Exit(run(config))


@app.command("demo")
def demo(
    run_dir: Path = typer.Option(Path("var/demo"), "--run-dir", help="Where the demo stack runs"),
    out: Path = typer.Option(Path("var/demo/summary.json"), "--out", help="The JSON summary"),
    rps: float = typer.Option(20.0, "--rps", help="Inference requests per second during the upgrade"),
    lead_blocks: int = typer.Option(4, "--lead-blocks", help="Blocks between the vote's end and the height"),
    live: bool = typer.Option(True, "--live/--no-live", help="Live view (off: a final view only)"),
) -> None:
    """A whole upgrade v3.0.6 -> v3.0.8 on the local stack under load; exits 1 if anything is wrong."""
    from cli.demo import run_demo

    config = StackConfig(run_dir=run_dir)
    raise typer.Exit(run_demo(config, out=out, rps=rps, lead_blocks=lead_blocks, live=live))


@app.command("status")
def status(
    run_dir: Path = RUN_DIR,
    registry_url: str | None = REGISTRY,
    broker_url: str | None = BROKER,
    rpc_url: str | None = RPC,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
    watch: bool = typer.Option(False, "--watch", "-w", help="A live view, redrawn in place (Ctrl-C ends)"),
    until_done: bool = typer.Option(
        False, "--until-done", help="With --watch: end when the switch is over; exit 1 if a node failed"
    ),
    interval_s: float = typer.Option(
        0.5, "--interval", min=0.1, help="With --watch: seconds between redraws"
    ),
    timeout_s: float | None = typer.Option(
        None, "--timeout", min=1.0, help="With --until-done: give up after this many seconds (exit 3)"
    ),
) -> None:
    """Current and last-used versions, pending plans with blocks and time left, per-node readiness.

    With --watch: chain height and the countdown to each plan, readiness per node before the
    height, each node's phase and how long it has been in it, requests held and served per
    version, pending stops, and the switch's result, from the broker's /upgrade/live.
    """
    if until_done and not watch:
        typer.echo("error: --until-done needs --watch", err=True)
        raise typer.Exit(2)
    if watch:
        from cli.watch import watch as run_watch

        endpoints = _endpoints(run_dir, "-", broker_url, "-", None)
        raise typer.Exit(
            run_watch(endpoints, Console(), until_done=until_done, interval_s=interval_s, timeout_s=timeout_s)
        )
    endpoints = _endpoints(run_dir, registry_url, broker_url, rpc_url, None)
    try:
        show_status(endpoints, Console(), as_json=as_json)
    except OpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("history")
def history(
    run_dir: Path = RUN_DIR,
    registry_url: str | None = REGISTRY,
    broker_url: str | None = BROKER,
    limit: int = typer.Option(20, "--limit", min=1, max=10_000, help="How many switches, newest first"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """The switches: height, reason (plan, sync, rollback), actor, how long the handover took, and
    what each node's stop needed."""
    from cli.history import show_history

    endpoints = _endpoints(run_dir, registry_url, broker_url, "-", None)
    try:
        show_history(endpoints, Console(), limit, as_json)
    except OpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@nodes_app.command("list")
def nodes_list(run_dir: Path = RUN_DIR, broker_url: str | None = BROKER) -> None:
    """Every node the broker manages, with its status."""
    endpoints = _endpoints(run_dir, "-", broker_url, "-", None)
    try:
        typer.echo(json.dumps(list_nodes(endpoints), indent=2))
    except OpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@nodes_app.command("add")
def nodes_add(
    node_json: str = typer.Argument(..., help="The node as in node-config.json, or @file.json"),
    run_dir: Path = RUN_DIR,
    broker_url: str | None = BROKER,
    token_file: Path | None = TOKEN,
) -> None:
    """Add a node (admin token required)."""
    text = Path(node_json[1:]).read_text() if node_json.startswith("@") else node_json
    try:
        node = json.loads(text)
    except ValueError as exc:
        typer.echo(f"error: the node is not valid JSON: {exc}", err=True)
        raise typer.Exit(2) from None
    endpoints = _endpoints(run_dir, "-", broker_url, "-", token_file)
    try:
        typer.echo(json.dumps(add_node(endpoints, node), indent=2))
    except OpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@nodes_app.command("remove")
def nodes_remove(
    node_id: str, run_dir: Path = RUN_DIR, broker_url: str | None = BROKER, token_file: Path | None = TOKEN
) -> None:
    """Remove a node (admin token required)."""
    endpoints = _endpoints(run_dir, "-", broker_url, "-", token_file)
    try:
        typer.echo(json.dumps(remove_node(endpoints, node_id)))
    except OpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("rollback")
def rollback_cmd(
    version: str = typer.Option(..., "--version", help="The version to go back to"),
    reason: str = typer.Option(..., "--reason", help="Why; recorded in the history"),
    actor: str = typer.Option(getpass.getuser(), "--actor", help="Who; recorded in the history"),
    run_dir: Path = RUN_DIR,
    registry_url: str | None = REGISTRY,
    token_file: Path | None = TOKEN,
) -> None:
    """Emergency rollback: the registry switches back until the next plan applies."""
    endpoints = _endpoints(run_dir, registry_url, "-", "-", token_file)
    try:
        typer.echo(json.dumps(rollback(endpoints, version, actor, reason), indent=2))
    except OpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@deploy_app.command("nginx")
def deploy_nginx(
    upstream: list[str] = typer.Option(
        ..., "--version", help="VERSION=HOST:PORT of one MLNode version (repeat; the first is the default)"
    ),
    listen: list[int] = typer.Option([8080, 5000], "--listen", help="Ports to listen on (repeat)"),
    resolver: str | None = typer.Option(
        None, "--resolver", help="DNS for run-time resolution, e.g. 127.0.0.11"
    ),
) -> None:
    """Print the side-by-side nginx config for your versions."""
    from devtools.nginx_config import ProxyServer, VersionUpstream, render_nginx_conf

    try:
        ups = []
        for item in upstream:
            version, sep, address = item.partition("=")
            if not sep:
                raise ValueError(f"--version {item!r} must be VERSION=HOST:PORT")
            ups.append(VersionUpstream.parse(version, address))
        servers = [ProxyServer(listen=port, upstreams=ups) for port in listen]
        typer.echo(render_nginx_conf(servers, resolver=resolver), nl=False)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@deploy_app.command("render")
def deploy_render(
    out: Path = typer.Option(Path("deploy"), "--out", help="The deploy directory"),
    check: bool = typer.Option(False, "--check", help="Only report stale files; exit 1 if any"),
) -> None:
    """Write the generated nginx, nats-server and node files under deploy/."""
    if check:
        stale = stale_files(out)
        if stale:
            typer.echo(
                "stale deploy files (run `mlnode-upgrade deploy render`): " + ", ".join(stale), err=True
            )
            raise typer.Exit(1)
        typer.echo("deploy files are up to date")
        return
    for path in write_all(out):
        typer.echo(f"wrote {path}")


@deploy_app.command("secrets")
def deploy_secrets(out: Path = typer.Option(Path("deploy"), "--out", help="The deploy directory")) -> None:
    """Write deploy/.env (missing secrets generated) and the NATS passwords file; both git-ignored."""
    for path in write_secrets(out):
        typer.echo(f"wrote {path}")


@events_app.command("docs")
def events_docs(
    out: Path = typer.Option(Path("docs"), help="Directory that receives events.md and events/*.schema.json"),
    check: bool = typer.Option(False, "--check", help="Only report files that differ; exit 1 if any"),
) -> None:
    """Write (or check) the events reference and JSON Schemas generated from the models."""
    if check:
        stale = stale_docs(out)
        if stale:
            typer.echo("stale event docs (run `make docs`): " + ", ".join(stale), err=True)
            raise typer.Exit(1)
        typer.echo("event docs are up to date")
        return
    for path in write_docs(out):
        typer.echo(f"wrote {path}")


BUS_URL = typer.Option(None, "--url", help="NATS URL(s) (default: the local stack's, from stack.json)")
BUS_USER = typer.Option(
    None,
    "--user",
    help="NATS user (default admin, the operator's: every subject, the only one that may subscribe). "
    "A service's user may publish only its own: chain-watcher chain.>, registry version.>, broker broker.>",
)
BUS_PASSWORD_FILE = typer.Option(
    None, "--password-file", help="The user's password file (default: the stack's secrets/<user>.password)"
)


@events_app.command("pub")
def events_pub(
    subject: str = typer.Argument(..., metavar="SUBJECT", help="The event's subject, e.g. chain.block"),
    payload: str = typer.Argument(..., metavar="JSON", help="The payload, @file.json, or - for stdin"),
    run_dir: Path = RUN_DIR,
    url: str | None = BUS_URL,
    user: str | None = BUS_USER,
    password_file: Path | None = BUS_PASSWORD_FILE,
    timeout_s: float = typer.Option(5.0, "--timeout", help="Seconds to wait for NATS and the stream's ack"),
) -> None:
    """Check an event as the services do, then publish it to its stream.

    It goes out as the services send it (same JSON, same Nats-Msg-Id).
    An unknown subject or an invalid payload exits 2, nothing sent;
    a refusal by the server (permissions, no stream, no ack) exits 1.
    """
    from cli.bus_cli import BusCliError, run_pub

    stdin = typer.get_binary_stream("stdin")
    try:
        line = run_pub(
            subject,
            payload,
            stdin,
            run_dir,
            url=url,
            user=user,
            password_file=password_file,
            timeout_s=timeout_s,
        )
    except BusCliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo(line)


@events_app.command("sub")
def events_sub(
    subject: str = typer.Argument(
        ..., metavar="SUBJECT", help="A subject, wildcards allowed: chain.>, broker.*"
    ),
    count: int | None = typer.Option(None, "--count", help="Stop after N messages"),
    timeout_s: float | None = typer.Option(
        None, "--timeout", help="Stop after S seconds (exit 1 if --count messages did not come)"
    ),
    from_start: bool = typer.Option(
        False, "--from-start", help="Read the stream from its first message (one stream's subjects only)"
    ),
    run_dir: Path = RUN_DIR,
    url: str | None = BUS_URL,
    user: str | None = BUS_USER,
    password_file: Path | None = BUS_PASSWORD_FILE,
) -> None:
    """Print each message on SUBJECT as one JSON line, until Ctrl-C.

    A line has subject, stream, stream_seq, msg_id and payload. Without
    --from-start it shows what is published from now on (no stream_seq).
    """
    from cli.bus_cli import BusCliError, run_sub

    try:
        run_sub(
            subject,
            run_dir,
            emit=typer.echo,
            ready=lambda line: typer.echo(line, err=True),
            count=count,
            timeout_s=timeout_s,
            from_start=from_start,
            url=url,
            user=user,
            password_file=password_file,
        )
    except BusCliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


@nats_app.command("provision")
def nats_provision(
    url: str | None = typer.Option(None, "--url", help="NATS URL(s) (default: PROVISION_NATS__URL)"),
    user: str | None = typer.Option(None, "--user", help="NATS user (default: PROVISION_NATS__USER)"),
    password_file: Path | None = typer.Option(None, "--password-file", help="The user's password file"),
) -> None:
    """Create or update every stream, KV bucket and durable consumer (idempotent); run before the services."""
    from cli.provision import ProvisionSettings, run_provision
    from shared.bus import BusError
    from shared.settings import SettingsError, load_settings

    try:
        settings = load_settings(ProvisionSettings)
        given: dict[str, object] = {"url": url, "user": user, "password_file": password_file}
        overrides = {k: v for k, v in given.items() if v}
        if password_file is not None:
            overrides["password"] = None
        nats = settings.nats.model_validate({**settings.nats.model_dump(), **overrides})
        done = run_provision(nats, connect_timeout_s=settings.connect_timeout_s)
    except (SettingsError, BusError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"provisioned {done.summary()}")


def main() -> None:
    app()
