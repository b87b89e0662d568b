"""``medclave idp``: the small issuer for the embedded default and for tests.

Real deployments point Medclave at their own IdP; this one is for a laptop and CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medclave.auth.issuer import DEFAULT_AUDIENCE, DEFAULT_DATA_DIR, Directory, SigningAlg
from medclave.cli.options import TrustedProxy, bad_settings, split_roles
from medclave.cli.output import refusals

app = typer.Typer(help="A small OpenID-style token issuer for development.", no_args_is_help=True)





@app.command("serve")
def serve(
    data: Annotated[Path, typer.Option(help="Data folder (key, clients, users).")] = DEFAULT_DATA_DIR,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8800,
    issuer: Annotated[str | None, typer.Option(help="Issuer URL (default http://HOST:PORT).")] = None,
    audience: Annotated[str, typer.Option(help="Audience of issued tokens.")] = DEFAULT_AUDIENCE,
    alg: Annotated[str, typer.Option(help="Key type if one is created: EdDSA or ES256.")] = "EdDSA",
    dev_password: Annotated[
        bool, typer.Option("--dev-password", help="Enable the password grant (development only).")
    ] = False,
    trusted_proxy: TrustedProxy = None,
) -> None:
    """Serve JWKS, discovery metadata and the token endpoint."""
    from medclave.auth.idp_server import build_service
    from medclave.auth.idp_server import serve as run_server
    from medclave.serving import ServingSettings

    if alg not in ("EdDSA", "ES256"):
        raise typer.BadParameter("--alg is EdDSA or ES256")
    try:
        serving = ServingSettings(trusted_proxies=tuple(trusted_proxy or ()))
    except ValueError as exc:  # pydantic's ValidationError
        raise bad_settings(exc) from None
    signing_alg: SigningAlg = "EdDSA" if alg == "EdDSA" else "ES256"
    with refusals(as_json=False):
        service = build_service(
            data,
            issuer=issuer or f"http://{host}:{port}",
            alg=signing_alg,
            audience=audience,
            dev_password=dev_password,
        )
    if dev_password:
        typer.echo("WARNING: the password grant is enabled; never do this in production.", err=True)
    run_server(service, host=host, port=port, serving=serving)


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
