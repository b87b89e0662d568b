"""``medclave proxy --upstream URL --policy FILE [--port 8080]``: OpenAI-compatible HTTP on
127.0.0.1 for unmodified apps; every request is attested, encrypted and sent to the enclave.

With ``--issuer URL`` and ``--jwks FILE`` (or ``--jwks-url``) the proxy also admits only requests
whose token verifies and whose caller Cedar lets ``infer`` (coarse; the enclave decides for real).

Exit 2: unusable configuration (no such policy file, invalid policy, half an admission setup).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from medclave.cli.options import TrustedProxy, bad_settings
from medclave.errors import MedclaveError

app = typer.Typer(help="The local OpenAI-compatible proxy to an attested enclave.")


@app.callback(invoke_without_command=True)
def proxy(
    upstream: Annotated[str, typer.Option("--upstream", help="the enclave's base URL")],
    policy: Annotated[Path, typer.Option("--policy", help="appraisal policy (TOML or JSON)")],
    port: Annotated[int, typer.Option(help="local port")] = 8080,
    host: Annotated[str, typer.Option(help="bind address; keep it loopback")] = "127.0.0.1",
    sim_root: Annotated[list[str] | None, typer.Option(
        "--sim-root", help="accept sim evidence from this root (NOT SECURE)")] = None,
    reattest_seconds: Annotated[int, typer.Option(help="re-attest at least this often")] = 300,
    issuer: Annotated[str | None, typer.Option(
        "--issuer", help="admission: the hospital IdP's issuer (off when not given)")] = None,
    jwks: Annotated[Path | None, typer.Option("--jwks", help="admission: the IdP's JWKS file")
                    ] = None,
    jwks_url: Annotated[str | None, typer.Option(
        "--jwks-url", help="admission: the IdP's JWKS URL (https, or http to loopback)")] = None,
    audience: Annotated[str, typer.Option("--audience", help="admission: accepted audience")
                        ] = "medclave",
    tenant: Annotated[str | None, typer.Option(
        "--tenant", help="admission: the tenant this proxy serves (default: the token's)")] = None,
    role: Annotated[list[str] | None, typer.Option(
        "--role", help="admission: a role allowed to call the model (repeat)")] = None,
    authz_policies: Annotated[Path | None, typer.Option(
        "--authz-policies", help="admission: folder of Cedar policies (default: bundled)")] = None,
    trusted_proxy: TrustedProxy = None,
) -> None:
    """Serve until interrupted."""
    from medclave.attestation.policy import load_policy
    from medclave.client.proxy import ProxySettings, admission_for, serve

    try:
        load_policy(policy)  # refuse a bad policy before listening
        settings = ProxySettings(upstream=upstream, policy_file=policy, host=host, port=port,
                                 sim_roots=tuple(sim_root or ()),
                                 reattest_seconds=reattest_seconds, auth_issuer=issuer,
                                 auth_jwks_file=jwks, auth_jwks_url=jwks_url,
                                 auth_audience=audience, auth_tenant=tenant,
                                 auth_roles=tuple(role or ("clinician",)),
                                 auth_policies_dir=authz_policies,
                                 trusted_proxies=tuple(trusted_proxy or ()))
        admission = admission_for(settings)  # refuse a bad JWKS or policy folder before listening
        if admission is not None:
            admission.close()
    except MedclaveError as exc:
        sys.stdout.write(json.dumps({"error": exc.to_dict()}, indent=2) + "\n")
        raise typer.Exit(2) from None
    except ValueError as exc:  # pydantic's ValidationError: a bad flag or environment value
        raise bad_settings(exc) from None
    if host not in ("127.0.0.1", "::1", "localhost"):
        typer.secho(f"WARNING: listening on {host}: apps reach the proxy in plain HTTP.",
                    err=True, fg=typer.colors.YELLOW)
    if settings.sim_roots:
        typer.secho("WARNING: sim evidence accepted: sim is NOT a TEE and protects nothing.",
                    err=True, fg=typer.colors.RED, bold=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(settings)
