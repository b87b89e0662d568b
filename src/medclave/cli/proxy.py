"""``medclave proxy --upstream URL --policy FILE [--port 8080]``: OpenAI-compatible HTTP on
127.0.0.1 for unmodified apps; every request is attested, encrypted and sent to the enclave.

Exit 2: unusable configuration (no such policy file, invalid policy).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

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
) -> None:
    """Serve until interrupted."""
    from medclave.attestation.policy import load_policy
    from medclave.client.proxy import ProxySettings, serve

    try:
        load_policy(policy)  # refuse a bad policy before listening
        settings = ProxySettings(upstream=upstream, policy_file=policy, host=host, port=port,
                                 sim_roots=tuple(sim_root or ()),
                                 reattest_seconds=reattest_seconds)
    except MedclaveError as exc:
        sys.stdout.write(json.dumps({"error": exc.to_dict()}, indent=2) + "\n")
        raise typer.Exit(2) from None
    if host not in ("127.0.0.1", "::1", "localhost"):
        typer.secho(f"WARNING: listening on {host}: apps reach the proxy in plain HTTP.",
                    err=True, fg=typer.colors.YELLOW)
    if settings.sim_roots:
        typer.secho("WARNING: sim evidence accepted: sim is NOT a TEE and protects nothing.",
                    err=True, fg=typer.colors.RED, bold=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(settings)
