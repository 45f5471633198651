"""The HTTP API: serve it, and manage its keys."""

from __future__ import annotations

import click

from prediction_pipeline.cli.base import Context, fail, main


@main.group()
def api() -> None:
    """The HTTP API for the web app (FastAPI on uvicorn)."""


@api.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.pass_obj
def serve(obj: Context, host: str, port: int) -> None:
    """Serve the API (OpenAPI at /docs). Runs are launched by the on-demand sensors, so
    the Dagster daemon must be running for queued work to start."""
    import uvicorn

    from prediction_pipeline.api.app import create_app

    uvicorn.run(create_app(obj.engine), host=host, port=port, log_level="info")


@api.group()
def keys() -> None:
    """API keys: created once, stored as a hash, revocable."""


@keys.command("create")
@click.argument("name")
@click.pass_obj
def keys_create(obj: Context, name: str) -> None:
    """Create a key for NAME (e.g. the web app) and print it once."""
    from prediction_pipeline.services import api_access

    try:
        key = api_access.create_key(obj.engine, name)
    except ValueError as exc:
        fail(exc)
    click.echo(key)
    click.echo("Store it now: only its hash is kept.", err=True)


@keys.command("list")
@click.pass_obj
def keys_list(obj: Context) -> None:
    """Name, prefix, created and revoked times of every key (never the key)."""
    from prediction_pipeline.services import api_access

    for row in api_access.list_keys(obj.engine):
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        click.echo(f"{row.prefix}…\t{row.name}\tcreated {row.created_at:%Y-%m-%d %H:%M}\t{revoked}")


@keys.command("revoke")
@click.argument("name_or_prefix")
@click.pass_obj
def keys_revoke(obj: Context, name_or_prefix: str) -> None:
    """Revoke the active keys with that name or prefix."""
    from prediction_pipeline.services import api_access

    count = api_access.revoke_key(obj.engine, name_or_prefix)
    if not count:
        fail(LookupError(f"no active key named or starting {name_or_prefix!r}"))
    click.echo(f"revoked {count} key(s)")
