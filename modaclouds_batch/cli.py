"""`modaclouds-batch serve | pool ...`: thin click wrappers around library functions."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .settings import load_settings


def _settings(ctx: click.Context, **overrides):
    return load_settings(overrides=overrides, config_file=ctx.obj.get("config"))


@click.group()
@click.version_option(__version__, prog_name="modaclouds-batch")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file with settings (see docs/configuration.md).",
)
@click.option("--home", type=click.Path(path_type=Path), help="State folder (db, jobs, pool).")
@click.option("--url", envvar="MODACLOUDS_BATCH_URL", default="http://127.0.0.1:5000", show_default=True,
              help="The gateway the client commands (submit, jobs, status, ...) talk to; "
                   "env MODACLOUDS_BATCH_URL. The API token comes from MODACLOUDS_BATCH_TOKEN, else, "
                   "for a loopback URL, from <home>/admin-token (the local admin token the gateway writes).")
@click.pass_context
def main(ctx: click.Context, config: Path | None, home: Path | None, url: str) -> None:
    """HTCondor batch-submission gateway."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["home"] = home
    ctx.obj["url"] = url


@main.group()
def pool() -> None:
    """Bring up, inspect and stop the single-node HTCondor pool."""


def _pool_settings(ctx: click.Context):
    return _settings(ctx, home=ctx.obj.get("home"))


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@pool.command("up")
@click.option("--mirror", help="Debian mirror URL for building the root filesystem.")
@click.pass_context
def pool_up(ctx: click.Context, mirror: str | None) -> None:
    """Start the pool (idempotent) and write the gateway's client config and token."""
    from .condor import pool as pool_tooling

    settings = _settings(ctx, home=ctx.obj.get("home"), debian_mirror=mirror)
    try:
        status = pool_tooling.up(settings, log=lambda line: click.echo(line, err=True))
    except pool_tooling.PoolError as exc:
        _fail(str(exc))
    click.echo(json.dumps(status.as_dict(), indent=2))


@pool.command("down")
@click.pass_context
def pool_down(ctx: click.Context) -> None:
    """Stop the daemons `pool up` started."""
    from .condor import pool as pool_tooling

    try:
        pool_tooling.down(_pool_settings(ctx), log=lambda line: click.echo(line, err=True))
    except pool_tooling.PoolError as exc:
        _fail(str(exc))


@pool.command("status")
@click.pass_context
def pool_status(ctx: click.Context) -> None:
    """Tell what runs, where its config and logs are, and how many slots are free."""
    from .condor import pool as pool_tooling

    try:
        status = pool_tooling.status(_pool_settings(ctx))
    except pool_tooling.PoolError as exc:
        _fail(str(exc))
    click.echo(json.dumps(status.as_dict(), indent=2))
    if not status.running:
        sys.exit(3)


@pool.command("token")
@click.option("--execute-node", is_flag=True,
              help="A new token for an execute node on another host (advertise a startd and a "
                   "master, read), not the gateway's.")
@click.pass_context
def pool_token(ctx: click.Context, execute_node: bool) -> None:
    """Print the IDTOKEN of the gateway's pool identity (or a new execute node's)."""
    from .condor import pool as pool_tooling

    try:
        settings = _pool_settings(ctx)
        click.echo(pool_tooling.execute_node_token(settings) if execute_node else pool_tooling.token(settings))
    except pool_tooling.PoolError as exc:
        _fail(str(exc))


@pool.group("host")
def pool_host() -> None:
    """Simulated hosts: execute nodes in network namespaces of their own (root; pool_bridge or pool_namespace)."""


@pool_host.command("add")
@click.argument("name")
@click.option("--cpus", type=int, default=2, show_default=True, help="Cores its startd advertises.")
@click.option("--runtime", "runtimes", multiple=True, help="A runtime it offers (repeat); default bash, python3.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The IDTOKEN its daemons present (from `pool token --execute-node`); default: a new one.")
@click.pass_context
def pool_host_add(ctx: click.Context, name: str, cpus: int, runtimes: tuple[str, ...], token_file: Path | None) -> None:
    """Create host NAME and start its execute node; prints it as JSON."""
    from .condor import pool as pool_tooling
    from .condor.pool import hosts
    from .condor.pool.config import DEFAULT_RUNTIMES

    try:
        token = token_file.read_text(encoding="utf-8").strip() if token_file else None
        added = hosts.add_host(_pool_settings(ctx), name, num_cpus=cpus, runtimes=runtimes or DEFAULT_RUNTIMES,
                               token=token, log=lambda line: click.echo(line, err=True))
    except pool_tooling.PoolError as exc:
        _fail(str(exc))
    click.echo(json.dumps(added.as_dict(), indent=2))


@pool_host.command("remove")
@click.argument("name")
@click.option("--drain", "drain_seconds", type=float,
              help="Drain its startd first and wait up to this many seconds for running jobs to finish.")
@click.pass_context
def pool_host_remove(ctx: click.Context, name: str, drain_seconds: float | None) -> None:
    """Stop host NAME's daemons and delete its namespace, mounts and folder."""
    from .condor import pool as pool_tooling
    from .condor.pool import hosts

    say = lambda line: click.echo(line, err=True)  # noqa: E731
    try:
        settings = _pool_settings(ctx)
        if drain_seconds is not None and any(h.name == name for h in hosts.hosts(settings)):
            hosts.drain_host(settings, name, drain_seconds, log=say)
        hosts.remove_host(settings, name, log=say)
    except pool_tooling.PoolError as exc:
        _fail(str(exc))


@pool_host.command("kill")
@click.argument("name")
@click.pass_context
def pool_host_kill(ctx: click.Context, name: str) -> None:
    """SIGKILL every process of host NAME, as a machine losing power (`remove` cleans up)."""
    from .condor import pool as pool_tooling
    from .condor.pool import hosts

    try:
        killed = hosts.kill_host(_pool_settings(ctx), name)
    except pool_tooling.PoolError as exc:
        _fail(str(exc))
    click.echo(json.dumps({"name": name, "killed": killed}))


@pool_host.command("list")
@click.pass_context
def pool_host_list(ctx: click.Context) -> None:
    """This pool's simulated hosts as JSON."""
    from .condor import pool as pool_tooling
    from .condor.pool import hosts

    try:
        click.echo(json.dumps([h.as_dict() for h in hosts.hosts(_pool_settings(ctx))], indent=2))
    except pool_tooling.PoolError as exc:
        _fail(str(exc))


@main.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 5000).")
@click.option("--db-path", type=click.Path(path_type=Path), help="SQLite database file.")
@click.option("--condor-config", type=click.Path(path_type=Path), help="Client condor_config to use.")
@click.option("--threads", type=int, help="HTTP worker threads (default 8).")
@click.pass_context
def serve(ctx: click.Context, host, port, db_path, condor_config, threads) -> None:
    """Serve the REST API (and run the state tracker) until interrupted.

    One home and one database serve one gateway: a second one on either exits with
    status 75 (EX_TEMPFAIL), naming the pid that holds them.
    """
    from .home import EXIT_STATE_BUSY, StateBusy
    from .server import run

    settings = _settings(
        ctx, home=ctx.obj.get("home"), host=host, port=port, db_path=db_path,
        condor_config=condor_config, threads=threads,
    )
    try:
        run(settings)
    except StateBusy as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_STATE_BUSY)


@main.group()
def token() -> None:
    """Create, list and revoke API tokens (works on the gateway's database directly)."""


def _token_service(ctx: click.Context):
    from .access.audit import AuditLog
    from .access.tokens import TokenService
    from .store import Store

    settings = _settings(ctx, home=ctx.obj.get("home"))
    store = Store(settings.db_path)
    return TokenService(store, AuditLog(store))


def _cli_client() -> str:
    """Where a token command came from, for its audit entry: the CLI and the account running it."""
    import getpass

    try:
        account = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        account = f"uid {os.getuid()}"
    return f"cli ({account})"


@token.command("create")
@click.option("--owner", required=True, help="The gateway user the token acts as.")
@click.option("--role", type=click.Choice(["user", "admin"]), default="user", show_default=True)
@click.option("--expires-in", type=float, help="Seconds until the token expires (default: never).")
@click.option("--label", help="A note to recognise the token by.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_context
def token_create(ctx, owner, role, expires_in, label, as_json) -> None:
    """Print a new token once; only its hash is kept."""
    from .errors import GatewayError

    try:
        from .access.identity import LOCAL_ACTOR

        secret, record = _token_service(ctx).create(owner, role, expires_in=expires_in, label=label,
                                                    by=LOCAL_ACTOR, client=_cli_client())
    except GatewayError as exc:
        _fail(exc.message)
    if as_json:
        click.echo(json.dumps({**record, "token": secret}, indent=2))
    else:
        click.echo(secret)


@token.command("list")
@click.option("--owner", help="Only this user's tokens.")
@click.pass_context
def token_list(ctx, owner) -> None:
    from .access.identity import LOCAL_ACTOR

    click.echo(json.dumps(_token_service(ctx).list(LOCAL_ACTOR, owner), indent=2))


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx, token_id) -> None:
    from .access.identity import LOCAL_ACTOR
    from .errors import GatewayError

    try:
        _token_service(ctx).revoke(LOCAL_ACTOR, token_id, client=_cli_client())
    except GatewayError as exc:
        _fail(exc.message)
    click.echo(f"revoked {token_id}")


# The HTTP client's commands (submit, jobs, status, logs, download, hold, ...): docs/client.md.
from .client_cli import COMMANDS as _CLIENT_COMMANDS  # noqa: E402

for _command in _CLIENT_COMMANDS:
    main.add_command(_command)
