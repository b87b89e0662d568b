"""``medclave enclave``: boot and serve the enclave; print what a policy needs to name.

Exit 0: done; 1: refused at boot (attestation, key broker, model); 2: unusable configuration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from medclave.cli.options import ConfigFile, TrustedProxy
from medclave.cli.output import fail
from medclave.errors import MedclaveError

app = typer.Typer(help="The in-TEE inference server.", no_args_is_help=True)
@app.command("serve")
def serve_cmd(
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8443)")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="data folder")] = None,
    platform: Annotated[str | None, typer.Option(
        help="auto (the TEE found here) or sim (development: protects NOTHING)")] = None,
    sealed_model: Annotated[Path | None, typer.Option(
        "--sealed-model", help="sealed model folder; its key comes from --kbs")] = None,
    kbs: Annotated[str | None, typer.Option("--kbs", help="key broker URL")] = None,
    kbs_key: Annotated[list[str] | None, typer.Option(
        "--kbs-key", help="the broker's public key (`medclave kbs key show`); its signature "
        "is required on every release answer")] = None,
    kbs_ca: Annotated[Path | None, typer.Option(
        "--kbs-ca", help="HTTPS to the broker: pin this CA or certificate file")] = None,
    requester: Annotated[str | None, typer.Option(help="requester identity for the broker")
                         ] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="a plain GGUF (development; default: the bundled SmolLM2), or the "
        "file or folder the openai-compatible engine loads (hashed at boot)")] = None,
    model_sha256: Annotated[str | None, typer.Option("--model-sha256")] = None,
    model_id: Annotated[str | None, typer.Option("--model-id", help="name served")] = None,
    engine: Annotated[str | None, typer.Option(help="llama.cpp or openai-compatible")] = None,
    engine_url: Annotated[str | None, typer.Option(
        "--engine-url", help="openai-compatible engine (vLLM) in this VM: http://127.0.0.1:PORT "
        "or unix:///PATH")] = None,
    engine_build: Annotated[str | None, typer.Option(
        "--engine-build", help="the engine's build, attested (default: vLLM's GET /version)")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="llama.cpp threads")] = None,
    auth_issuer: Annotated[str | None, typer.Option("--auth-issuer")] = None,
    auth_jwks_file: Annotated[Path | None, typer.Option("--auth-jwks-file")] = None,
    auth_jwks_url: Annotated[str | None, typer.Option("--auth-jwks-url")] = None,
    tenant: Annotated[list[str] | None, typer.Option("--tenant", help="tenant served")] = None,
    role: Annotated[list[str] | None, typer.Option("--role", help="role allowed to infer")
                    ] = None,
    insecure_no_auth: Annotated[bool, typer.Option(
        "--insecure-no-auth", help="sim only: accept callers without a token")] = False,
    audit_store: Annotated[str | None, typer.Option(help="sqlite (default) or memory")] = None,
    audit_key_resource: Annotated[str | None, typer.Option(
        "--audit-key-resource", help="kbs:///OWNER/audit-key/NAME: the audit key's seed, "
        "released by --kbs, so the log continues across restarts (needs --audit-origin)")
    ] = None,
    audit_origin: Annotated[str | None, typer.Option(
        "--audit-origin", help="the audit log's name (fixed, to continue one log)")] = None,
    commitment_key_file: Annotated[Path | None, typer.Option(
        "--commitment-key-file", help="sim only: the tenants' audit commitment key (a 0600 "
        "file); otherwise each tenant's key comes from --kbs")] = None,
    key_rotation: Annotated[int | None, typer.Option(
        "--key-rotation", help="rotate the OHTTP key every N seconds")] = None,
    triage: Annotated[bool, typer.Option(
        "--triage", help="serve the crisis-triage chat (/v1/medclave/conversations)")] = False,
    sealing_root_file: Annotated[Path | None, typer.Option(
        "--sealing-root-file", help="sim only: the sealing root (a 0600 file of 64 hex "
        "digits); otherwise each tenant's root comes from --kbs")] = None,
    trusted_proxy: TrustedProxy = None,
    config: ConfigFile = None,
    speech: Annotated[bool, typer.Option(
        "--speech", help="serve /v1/audio/transcriptions (Whisper, in a sandboxed worker)")
    ] = False,
    scribe: Annotated[bool, typer.Option(
        "--scribe", help="serve the clinical scribe /v1/medclave/scribe (implies --speech)")
    ] = False,
    speech_sealed_model: Annotated[Path | None, typer.Option(
        "--speech-sealed-model", help="a sealed tar of a CTranslate2 Whisper folder; key from "
        "--kbs (default: the bundled tiny.en)")] = None,
    speech_model: Annotated[Path | None, typer.Option(
        "--speech-model", help="a plain CTranslate2 Whisper folder (development)")] = None,
    speech_model_sha256: Annotated[str | None, typer.Option(
        "--speech-model-sha256", help="the speech model's manifest digest")] = None,
) -> None:
    """Boot (evidence, keys, model key from the broker, unseal, load) and serve until stopped."""
    from medclave.enclave.server import serve
    from medclave.enclave.settings import EnclaveSettings
    from medclave.ops.config import load_settings

    overrides: dict[str, Any] = {
        "host": host, "port": port, "data_dir": data, "platform": platform,
        "sealed_model": sealed_model, "kbs_url": kbs, "requester": requester,
        "kbs_keys": tuple(kbs_key) if kbs_key else None, "kbs_ca_file": kbs_ca,
        "model_path": model, "model_sha256": model_sha256, "model_id": model_id,
        "engine": engine, "engine_url": engine_url, "engine_build": engine_build,
        "n_threads": threads,
        "auth_issuer": auth_issuer, "auth_jwks_file": auth_jwks_file,
        "auth_jwks_url": auth_jwks_url, "auth_tenants": tuple(tenant) if tenant else None,
        "auth_roles": tuple(role) if role else None,
        "insecure_no_auth": insecure_no_auth or None, "audit_store": audit_store,
        "commitment_key_file": commitment_key_file,
        "audit_key_resource": audit_key_resource, "audit_origin": audit_origin,
        "key_rotation_seconds": key_rotation, "triage": triage or None,
        "sealing_root_file": sealing_root_file,
        "trusted_proxies": tuple(trusted_proxy) if trusted_proxy else None,
        "speech": (speech or scribe) or None, "speech_sealed_model": speech_sealed_model,
        "speech_model_path": speech_model, "speech_model_sha256": speech_model_sha256,
    }
    try:
        settings = load_settings(EnclaveSettings, config_file=config, overrides=overrides)
    except MedclaveError as exc:  # config.invalid: a bad flag, variable or file entry
        raise fail(exc) from None
    if settings.platform == "sim":
        typer.secho("WARNING: platform sim is NOT a TEE and protects nothing.", err=True,
                    fg=typer.colors.RED, bold=True)
    apps: tuple[Any, ...] = ()
    if settings.triage:
        from medclave.apps.triage.app import TriageApp

        apps = (TriageApp.from_context,)
    routes = None
    if scribe:
        from medclave.apps.scribe.route import routes as scribe_routes

        def routes(s: EnclaveSettings) -> dict[str, Any]:
            return dict(scribe_routes(s.model_id))
    try:
        serve(settings, apps, routes=routes)
    except MedclaveError as exc:
        raise fail(exc) from None


@app.command("measurement")
def measurement_cmd() -> None:
    """The sim measurement of this installed code (what a sim policy's reference value is)."""
    from medclave.attestation.sim import code_measurement

    sys.stdout.write(json.dumps({"platform": "sim", "measurement": code_measurement().hex()})
                     + "\n")


@app.command("sim-root")
def sim_root_cmd(data: Annotated[Path, typer.Option("--data", help="the enclave's data folder")]
                 ) -> None:
    """The sim root fingerprint (created if absent): clients pin it with --sim-root."""
    from medclave.attestation.sim import SimAuthority

    try:
        authority = SimAuthority.load_or_create(data)
    except MedclaveError as exc:
        raise fail(exc) from None
    sys.stdout.write(json.dumps({"sim_root": authority.root_fingerprint,
                                 "warning": "sim protects nothing"}) + "\n")
