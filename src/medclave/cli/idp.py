"""``medclave idp``: the small issuer for the embedded default and for tests.

Real deployments point Medclave at their own IdP; this one is for a laptop and CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medclave.auth.issuer import DEFAULT_AUDIENCE, DEFAULT_DATA_DIR, Directory
from medclave.cli.options import ConfigFile, TrustedProxy, split_roles
from medclave.cli.output import refusals

app = typer.Typer(help="A small OpenID-style token issuer for development.", no_args_is_help=True)





@app.command("serve")
def serve(
    data: Annotated[Path | None, typer.Option(
        help=f"Data folder (key, clients, users; default {DEFAULT_DATA_DIR}).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (8800).")] = None,
    issuer: Annotated[str | None, typer.Option(help="Issuer URL (default http://HOST:PORT).")] = None,
    audience: Annotated[str | None, typer.Option(
        help=f"Audience of issued tokens ({DEFAULT_AUDIENCE}).")] = None,
    alg: Annotated[str | None, typer.Option(
        help="Key type if one is created: EdDSA (default) or ES256.")] = None,
    dev_password: Annotated[
        bool, typer.Option("--dev-password", help="Enable the password grant (development only).")
    ] = False,
    trusted_proxy: TrustedProxy = None,
    config: ConfigFile = None,
) -> None:
    """Serve JWKS, discovery metadata and the token endpoint."""
    from datetime import timedelta

    from medclave.auth.idp_server import IdpSettings, build_service
    from medclave.auth.idp_server import serve as run_server
    from medclave.auth.replay import open_failure_log, open_replay_cache
    from medclave.ops.config import load_settings

    with refusals(as_json=False):
        settings = load_settings(IdpSettings, config_file=config, overrides={
            "data_dir": data, "host": host, "port": port, "issuer": issuer,
            "audience": audience, "alg": alg, "dev_password": dev_password or None,
            "trusted_proxies": tuple(trusted_proxy) if trusted_proxy else None})
        service = build_service(
            settings.data_dir,
            issuer=settings.issuer or f"http://{settings.host}:{settings.port}",
            alg=settings.alg,
            audience=settings.audience,
            ttl=timedelta(seconds=settings.token_ttl_seconds),
            dev_password=settings.dev_password,
            replay=open_replay_cache(settings.store, scope="idp", max_entries=100_000,
                                     allow_remote=settings.store_allow_remote),
            failures=open_failure_log(settings.store, allow_remote=settings.store_allow_remote),
        )
    if settings.dev_password:
        typer.echo("WARNING: the password grant is enabled; never do this in production.", err=True)
    with refusals(as_json=False):
        run_server(service, settings)


@app.command("add-client")
def add_client(
    client_id: Annotated[str, typer.Argument(help="Client identifier.")],
    tenant: Annotated[str, typer.Option(help="Tenant of the client.")],
    roles: Annotated[str, typer.Option(help="Comma-separated roles.")] = "",
    secret: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, envvar="MEDCLAVE_IDP_SECRET", help="Secret."),
    ] = "",
    data: Annotated[Path, typer.Option(help="Data folder.")] = DEFAULT_DATA_DIR,
    act_for_users: Annotated[bool, typer.Option(
        "--act-for-users", help="May exchange tokens for its tenant's users (RFC 8693): the "
        "hospital's proxy.")] = False,
) -> None:
    """Register a client for the client-credentials grant (secret stored as a scrypt hash)."""
    with refusals(as_json=False):
        Directory(data).add_client(client_id, secret, tenant=tenant, roles=split_roles(roles),
                                   act_for_users=act_for_users)
    typer.echo(f"client {client_id} added")


@app.command("add-user")
def add_user(
    username: Annotated[str, typer.Argument(help="User name.")],
    tenant: Annotated[str, typer.Option(help="Tenant of the user.")],
    roles: Annotated[str, typer.Option(help="Comma-separated roles.")] = "",
    password: Annotated[
        str | None,
        typer.Option(hide_input=True, envvar="MEDCLAVE_IDP_PASSWORD",
                     help="Password (asked for when not given)."),
    ] = None,
    data: Annotated[Path, typer.Option(help="Data folder.")] = DEFAULT_DATA_DIR,
    no_password: Annotated[bool, typer.Option(
        "--no-password", help="A directory entry only: tokens for this user come from token "
        "exchange by a client that may act for users, never from a password.")] = False,
) -> None:
    """Register a user: the tenant and roles a token for them may carry, and a password for the
    development password grant unless --no-password."""
    if no_password and password is not None:
        raise typer.BadParameter("--no-password and --password exclude each other")
    if not no_password and password is None:
        password = typer.prompt("Password", hide_input=True)
    with refusals(as_json=False):
        Directory(data).add_user(username, None if no_password else password, tenant=tenant,
                                 roles=split_roles(roles))
    typer.echo(f"user {username} added")


@app.command("jwks")
def jwks(
    data: Annotated[Path, typer.Option(help="Data folder.")] = DEFAULT_DATA_DIR,
) -> None:
    """Print the issuer's public JWKS (for `medclave auth token verify --jwks`)."""
    import json

    from medclave.auth.issuer import load_or_create_signing_key

    with refusals(as_json=False):
        key = load_or_create_signing_key(data)
    typer.echo(json.dumps({"keys": [key.public_jwk()]}, indent=2))
