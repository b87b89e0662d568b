"""``medclave proxy --upstream URL --policy FILE [--port 8080]``: OpenAI-compatible HTTP on
127.0.0.1 for unmodified apps; every request is attested, encrypted and sent to the enclave.

With ``--idp-token-url``, ``--idp-client-id`` and the client secret (``MEDCLAVE_PROXY_IDP_CLIENT_SECRET``
or ``--idp-client-secret-file``) the proxy manages credentials for the apps behind it: apps send
a local API key (``medclave proxy keys add``) and the proxy fetches and refreshes short-lived
per-user tokens from the IdP; ``--identity-header`` (with ``--trusted-proxy``) takes the user from
the hospital's SSO instead.

With ``--issuer URL`` and ``--jwks FILE`` (or ``--jwks-url``) the proxy also admits only requests
whose token verifies and whose caller Cedar lets ``infer`` (coarse; the enclave decides for real).

``--replica NAME`` (repeat): ``--upstream`` is a load balancer in front of enclave replicas, each
attested on its own (docs/scaling-out.md); ``medclave proxy balancer-config --listen HOST:PORT
--replica NAME=HOST:PORT ...`` prints an HAProxy configuration for them (``--tls-passthrough``: a
``mode tcp`` one routing on the TLS server name, for a proxy in the mesh).

``medclave proxy keys add --sub SUB --roles ROLE[,ROLE] [--tenant T]`` prints a new API key once
(only its hash is stored); ``keys list`` and ``keys revoke ID`` manage them.

Exit 2: unusable configuration (no such policy file, invalid policy, half an admission or IdP
client setup) or a refused key command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from medclave.cli.options import ConfigFile, TrustedProxy, bad_settings, split_roles
from medclave.cli.output import fail, refusals
from medclave.errors import InputError, MedclaveError

app = typer.Typer(help="The local OpenAI-compatible proxy to an attested enclave.")
keys_app = typer.Typer(help="Local API keys for the apps behind the proxy.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DataDir = Annotated[Path, typer.Option("--data", help="the proxy's data folder (API keys)")]
_DEFAULT_DATA = Path(".medclave/proxy")
# The proxy's `store` setting: API keys in PostgreSQL, shared by its replicas.
KeyStore = Annotated[str | None, typer.Option(
    "--store", help="the proxy's postgresql:// store (default: apikeys.db in --data)")]


def _secret(path: Path | None) -> str | None:
    """The IdP client secret: from a file (first line) or the environment, never a flag (a
    command line is visible to every user of the machine)."""
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"cannot read a secret from {path}") from exc
    return os.environ.get("MEDCLAVE_PROXY_IDP_CLIENT_SECRET")


@app.callback(invoke_without_command=True)
def proxy(
    ctx: typer.Context,
    upstream: Annotated[str | None, typer.Option("--upstream", help="the enclave's base URL")
                        ] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="appraisal policy (TOML or JSON)")
                      ] = None,
    port: Annotated[int | None, typer.Option(help="local port (default 8080)")] = None,
    host: Annotated[str | None, typer.Option(
        help="bind address; keep it loopback (default 127.0.0.1)")] = None,
    sim_root: Annotated[list[str] | None, typer.Option(
        "--sim-root", help="accept sim evidence from this root (NOT SECURE)")] = None,
    reattest_seconds: Annotated[int | None, typer.Option(
        help="re-attest at least this often (default 300)")] = None,
    collateral: Annotated[Path | None, typer.Option(
        "--collateral", help="verifier collateral (JSON: snp_tcb_baseline, "
        "revoked_measurements); re-read while running, a change re-attests at once")] = None,
    data: DataDir = _DEFAULT_DATA,
    idp_token_url: Annotated[str | None, typer.Option(
        "--idp-token-url", help="credentials: the IdP's token endpoint (https, or http to "
        "loopback)")] = None,
    idp_client_id: Annotated[str | None, typer.Option(
        "--idp-client-id", help="credentials: this proxy's client id at the IdP")] = None,
    idp_client_secret_file: Annotated[Path | None, typer.Option(
        "--idp-client-secret-file", help="credentials: a file holding the client secret "
        "(default: MEDCLAVE_PROXY_IDP_CLIENT_SECRET)")] = None,
    identity_header: Annotated[str | None, typer.Option(
        "--identity-header", help="credentials: the SSO's user header (e.g. X-Forwarded-User), "
        "believed only from --trusted-proxy addresses")] = None,
    identity_role: Annotated[list[str] | None, typer.Option(
        "--identity-role", help="credentials: a role to ask for header users (repeat; default: "
        "the directory's)")] = None,
    issuer: Annotated[str | None, typer.Option(
        "--issuer", help="admission: the hospital IdP's issuer (off when not given)")] = None,
    jwks: Annotated[Path | None, typer.Option("--jwks", help="admission: the IdP's JWKS file")
                    ] = None,
    jwks_url: Annotated[str | None, typer.Option(
        "--jwks-url", help="admission: the IdP's JWKS URL (https, or http to loopback)")] = None,
    audience: Annotated[str | None, typer.Option(
        "--audience", help="admission: accepted audience (default medclave)")] = None,
    tenant: Annotated[str | None, typer.Option(
        "--tenant", help="admission: the tenant this proxy serves (default: the token's)")] = None,
    role: Annotated[list[str] | None, typer.Option(
        "--role", help="admission: a role allowed to call the model (repeat)")] = None,
    authz_policies: Annotated[Path | None, typer.Option(
        "--authz-policies", help="admission: folder of Cedar policies (default: bundled)")] = None,
    triage_signin_url: Annotated[str | None, typer.Option(
        "--triage-signin-url", help="the triage page's development sign-in: the dev IdP's "
        "token endpoint (password grant)")] = None,
    replica: Annotated[list[str] | None, typer.Option(
        "--replica", help="an enclave replica behind --upstream, a load balancer (repeat; "
        "docs/scaling-out.md)")] = None,
    trusted_proxy: TrustedProxy = None,
    config: ConfigFile = None,
) -> None:
    """Serve until stopped (SIGTERM drains)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None and (upstream is None or policy is None):
        raise typer.BadParameter("serving needs --upstream and --policy (or --config)")
    from pydantic import SecretStr

    from medclave.attestation import load_policy
    from medclave.client.proxy import ProxySettings, admission_for, callers_for, serve
    from medclave.ops.config import load_settings

    text = _secret(idp_client_secret_file)
    secret = SecretStr(text) if text is not None else None
    try:
        settings = load_settings(ProxySettings, config_file=config, overrides=dict(
            upstream=upstream, policy_file=policy, host=host, port=port,
            replicas=tuple(replica) if replica else None,
            sim_roots=tuple(sim_root) if sim_root else None,
            reattest_seconds=reattest_seconds, data_dir=None if data == _DEFAULT_DATA else data,
            collateral_file=collateral, triage_signin_url=triage_signin_url,
            idp_token_url=idp_token_url, idp_client_id=idp_client_id,
            idp_client_secret=secret, identity_header=identity_header,
            identity_roles=tuple(identity_role) if identity_role else None,
            auth_issuer=issuer, auth_jwks_file=jwks, auth_jwks_url=jwks_url,
            auth_audience=audience, auth_tenant=tenant,
            auth_roles=tuple(role) if role else None, auth_policies_dir=authz_policies,
            trusted_proxies=tuple(trusted_proxy) if trusted_proxy else None))
        load_policy(settings.policy_file)  # refuse a bad policy before listening
        admission = admission_for(settings)  # refuse a bad JWKS or policy folder before listening
        if admission is not None:
            admission.close()
        callers_for(settings).close()  # refuse half an IdP client or a bad key file, likewise
    except MedclaveError as exc:
        raise fail(exc) from None
    except ValueError as exc:  # pydantic's ValidationError: a bad flag or environment value
        raise bad_settings(exc) from None
    if settings.host not in ("127.0.0.1", "::1", "localhost"):
        typer.secho(f"WARNING: listening on {settings.host}: apps reach the proxy in plain HTTP.",
                    err=True, fg=typer.colors.YELLOW)
    if settings.sim_roots:
        typer.secho("WARNING: sim evidence accepted: sim is NOT a TEE and protects nothing.",
                    err=True, fg=typer.colors.RED, bold=True)
    serve(settings)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise typer.BadParameter(f"{text!r}: expected HOST:PORT")
    return host, int(port)


@app.command("balancer-config")
def balancer_config(
    listen: Annotated[str, typer.Option("--listen", help="the balancer's HOST:PORT")],
    replica: Annotated[list[str], typer.Option(
        "--replica", help="NAME=HOST:PORT of an enclave replica (repeat)")],
    tls_passthrough: Annotated[bool, typer.Option(
        "--tls-passthrough", help="route on the TLS server name (mode tcp), never terminating "
        "TLS: for a proxy with a mesh file (attested micro-segmentation)")] = False,
) -> None:
    """Print an HAProxy configuration for enclave replicas: the proxy routes each replica's
    attestation and requests with the medclave-replica header, or with ``--tls-passthrough``
    with the TLS server name NAME.replica.medclave.invalid (docs/scaling-out.md)."""
    from medclave.ops.balancer import haproxy_config

    replicas: dict[str, tuple[str, int]] = {}
    for item in replica:
        name, sep, address = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected NAME=HOST:PORT")
        replicas[name] = _host_port(address)
    with refusals():
        typer.echo(haproxy_config(_host_port(listen), replicas,
                                  tls_passthrough=tls_passthrough), nl=False)


@keys_app.command("add")
def keys_add(
    sub: Annotated[str, typer.Option("--sub", help="the user the key stands for (at the IdP)")],
    roles: Annotated[str, typer.Option("--roles", help="comma-separated roles to ask for")],
    tenant: Annotated[str | None, typer.Option(
        "--tenant", help="the tenant the user's tokens must name")] = None,
    data: DataDir = _DEFAULT_DATA,
    store_url: KeyStore = None,
) -> None:
    """Issue an API key: printed once, stored only as a SHA-256 hash."""
    from medclave.client.apikeys import open_api_keys

    with refusals():
        store = open_api_keys(data, store_url)
        try:
            key, record = store.add(subject=sub, roles=split_roles(roles), tenant=tenant)
        finally:
            store.close()
    typer.echo(key)
    typer.echo(f"key {record.key_id} for {record.subject} ({','.join(record.roles)}): shown "
               "once, keep it as the app's OPENAI_API_KEY", err=True)


@keys_app.command("list")
def keys_list(data: DataDir = _DEFAULT_DATA,
              as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
              store_url: KeyStore = None) -> None:
    """The keys' ids, users, roles and states (never the keys)."""
    from medclave.client.apikeys import open_api_keys

    with refusals():
        store = open_api_keys(data, store_url)
        try:
            records = store.list()
        finally:
            store.close()
    if as_json:
        typer.echo(json.dumps([{"id": r.key_id, "sub": r.subject, "roles": list(r.roles),
                                "tenant": r.tenant, "created": r.created.isoformat(),
                                "revoked": r.revoked.isoformat() if r.revoked else None}
                               for r in records], indent=2))
        return
    for r in records:
        state = f"revoked {r.revoked.isoformat()}" if r.revoked else "active"
        typer.echo(f"{r.key_id}  {r.subject}  {','.join(r.roles)}  {r.tenant or '-'}  "
                   f"{r.created.isoformat()}  {state}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (keys list)")],
                data: DataDir = _DEFAULT_DATA, store_url: KeyStore = None) -> None:
    """Revoke a key: the running proxy refuses it from its next request."""
    from medclave.client.apikeys import open_api_keys

    with refusals():
        store = open_api_keys(data, store_url)
        try:
            revoked = store.revoke(key_id)
        finally:
            store.close()
    if not revoked:
        raise fail(InputError("input.missing", f"no active key {key_id!r}"), as_json=False)
    typer.echo(f"key {key_id} revoked")
