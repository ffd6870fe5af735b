"""The `mlnode-upgrade` command line."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.propose import propose
from shared.event_docs import stale_docs, write_docs

app = typer.Typer(
    no_args_is_help=True, help="Zero-downtime MLNode upgrades at a governance-set block height."
)
events_app = typer.Typer(no_args_is_help=True, help="The event contracts on the bus.")
app.add_typer(events_app, name="events")
app.command("propose")(propose)


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


def main() -> None:
    app()
