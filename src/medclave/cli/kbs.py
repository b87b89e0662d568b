"""``medclave kbs``: serve the key broker and manage its resources and release policies.

``serve``, ``owner add`` and ``key show`` work on the broker's data folder directly (they are the broker's
administrator's commands, run where the broker runs). ``resource`` and ``policy`` talk to a
running broker over its owner API with an owner token (``--url``/``MEDCLAVE_KBS_URL``,
``--token``/``MEDCLAVE_KBS_TOKEN``), so an owner never needs the broker's disk or its KEK.

Output is one JSON object (or list); errors and exit statuses as in :mod:`medclave.cli.output`
(0 done, 1 refused, 2 unusable input).
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from medclave.cli.options import ConfigFile, TrustedProxy
from medclave.cli.output import emit, run
from medclave.kbs.client import OwnerClient
from medclave.kbs.factory import ensure_data_dir, open_signer, open_store
from medclave.kbs.models import MAX_SECRET_BYTES, parse_release_policy
from medclave.kbs.settings import KbsSettings
from medclave.kbs.tokens import issue_owner_token

app = typer.Typer(help="The attestation-gated key broker.", no_args_is_help=True)
resource_app = typer.Typer(help="Resources (secrets) you own on a running broker.",
                           no_args_is_help=True)
policy_app = typer.Typer(help="Release policies of your resources.", no_args_is_help=True)
owner_app = typer.Typer(help="Owner credentials (on the broker's data folder).",
                        no_args_is_help=True)
app.add_typer(resource_app, name="resource")
app.add_typer(policy_app, name="policy")
key_app = typer.Typer(help="The broker's signing key (on the broker's data folder).",
                      no_args_is_help=True)
app.add_typer(owner_app, name="owner")
app.add_typer(key_app, name="key")
kek_app = typer.Typer(help="The broker's key-encryption key (on the stopped broker's data "
                      "folder).", no_args_is_help=True)
app.add_typer(kek_app, name="kek")
threshold_app = typer.Typer(help="Split a secret k-of-n across independent brokers.",
                            no_args_is_help=True)
app.add_typer(threshold_app, name="threshold")
mesh_app = typer.Typer(help="The mesh CA (on the broker's data folder).", no_args_is_help=True)
app.add_typer(mesh_app, name="mesh")
revocation_app = typer.Typer(help="Your revocation list: enclaves that get none of your keys.",
                             no_args_is_help=True)
app.add_typer(revocation_app, name="revocation")
Kind = Annotated[str, typer.Argument(help="measurement | chip_id | tcb | gpu_serial")]
Value = Annotated[str, typer.Argument(help="the identity, hex (as the evidence's claims show)")]


Url = Annotated[str, typer.Option("--url", envvar="MEDCLAVE_KBS_URL", help="broker base URL")]
Token = Annotated[str, typer.Option("--token", envvar="MEDCLAVE_KBS_TOKEN", show_default=False,
                                    help="owner token (mkt1.OWNER.SECRET)")]
Resource = Annotated[str, typer.Argument(help="kbs:///OWNER/TYPE/NAME")]
DEFAULT_URL = "http://127.0.0.1:8450"


def _read_secret(path: Path | None) -> bytes | None:
    if path is None:
        return None
    data = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1) if str(path) == "-" else path.read_bytes()
    if not data or len(data) > MAX_SECRET_BYTES:
        raise typer.BadParameter(f"a secret is 1 to {MAX_SECRET_BYTES} bytes")
    return data


# The broker's `store` setting for commands that open it (a KEK rotation, owners, kek show).
StoreOption = Annotated[str | None, typer.Option(
    help="the broker's store: sqlite (default) or its postgresql:// URL")]


@app.command("serve")
def serve_cmd(
    host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 8450)")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="data folder")] = None,
    store: Annotated[str | None, typer.Option(
        help="sqlite (default), memory, or a postgresql:// URL shared by replicas")] = None,
    sim_root: Annotated[list[str] | None, typer.Option(
        "--sim-root", help="accept sim evidence from this root fingerprint (NOT SECURE)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="serve HTTPS with this certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", help="the certificate's private key (PEM)")] = None,
    trusted_proxy: TrustedProxy = None,
    config: ConfigFile = None,
) -> None:
    """Serve the broker (FastAPI + uvicorn) until stopped (SIGTERM drains)."""
    from medclave.kbs.server import serve
    from medclave.ops.config import load_settings

    overrides: dict[str, Any] = {"host": host, "port": port, "data_dir": data, "store": store,
                                 "sim_roots": tuple(sim_root) if sim_root else None,
                                 "tls_cert_file": tls_cert, "tls_key_file": tls_key,
                                 "trusted_proxies": tuple(trusted_proxy) if trusted_proxy else None}
    # config.invalid (exit 2) for a bad flag, variable or file entry.
    settings = run(lambda: load_settings(KbsSettings, config_file=config, overrides=overrides))
    if settings.sim_roots:
        typer.echo("WARNING: sim evidence accepted from configured roots: sim protects nothing.",
                   err=True)
    run(lambda: serve(settings))


@key_app.command("show")
def key_show(
    data: Annotated[Path, typer.Option("--data", help="the broker's data folder")],
) -> None:
    """The broker's public signing key (made on first use): give it to enclaves (--kbs-key)
    and its key_id to relying parties' policies (kbs_keys)."""
    def show() -> dict[str, str]:
        signer = open_signer(KbsSettings(data_dir=data))
        return {"key_id": signer.key_id,
                "public_key": base64.b64encode(signer.public_key).decode()}
    emit(run(show))


@kek_app.command("rotate")
def kek_rotate(
    data: Annotated[Path | None, typer.Option("--data", help="the broker's data folder")] = None,
    new_kek_file: Annotated[Path | None, typer.Option(
        "--new-kek-file", help="the new KEK (base64 of 32 bytes, mode 0600); default: a fresh "
        "one in KEK_FILE.new")] = None,
    store: StoreOption = None,
    config: ConfigFile = None,
) -> None:
    """Re-wrap every stored secret under a new KEK, all or nothing, and record it in the
    decision log. Stop the broker first (it holds the old KEK in memory); start it after."""
    from medclave.kbs.rekey import rotate_configured_kek
    from medclave.ops.config import load_settings

    settings = run(lambda: load_settings(KbsSettings, config_file=config,
                                         overrides={"data_dir": data, "store": store}))
    emit(run(lambda: rotate_configured_kek(settings, new_kek_file=new_kek_file,
                                           now=datetime.now(UTC))))


@kek_app.command("show")
def kek_show(
    data: Annotated[Path | None, typer.Option("--data", help="the broker's data folder")] = None,
    store: StoreOption = None,
    config: ConfigFile = None,
) -> None:
    """The configured KEK's id and the id the store records (they must match: check a
    backup of the KEK against it), and the last rotations from the decision log. Never the
    key."""
    from medclave.kbs.factory import open_wrapper
    from medclave.ops.config import load_settings

    settings = run(lambda: load_settings(KbsSettings, config_file=config,
                                         overrides={"data_dir": data, "store": store}))

    def show() -> dict[str, Any]:
        from medclave.kbs.rekey import RESOURCE

        wrapper = open_wrapper(settings, create=False)
        store = open_store(settings)
        try:
            rotations = [{"at": d.at.isoformat(), "detail": d.detail}
                         for d in store.decisions(resource=RESOURCE, limit=20)]
            return {"kek_id": wrapper.key_id, "store_kek_id": store.kek_id(),
                    "rotations": rotations}
        finally:
            store.close()
    emit(run(show))


@owner_app.command("add")
def owner_add(
    owner: Annotated[str, typer.Argument(help="owner name: lower-case letters, digits, '-'")],
    data: Annotated[Path, typer.Option("--data", help="the broker's data folder")],
    store: Annotated[str | None, typer.Option(
        help="the broker's store: sqlite (default) or its postgresql:// URL")] = None,
) -> None:
    """Issue an API token for OWNER. Shown once; the broker keeps only its hash."""
    def issue() -> str:
        settings = (KbsSettings(data_dir=data) if store is None
                    else KbsSettings(data_dir=data, store=store))
        ensure_data_dir(settings)
        opened = open_store(settings)
        try:
            return issue_owner_token(opened, owner, now=datetime.now(UTC))
        finally:
            opened.close()
    emit({"owner": owner, "token": run(issue)})


def _client(url: str, token: str) -> OwnerClient:
    return OwnerClient(url, token)


@resource_app.command("put")
def resource_put(
    resource: Resource, token: Token, url: Url = DEFAULT_URL,
    secret_file: Annotated[Path | None, typer.Option(
        "--secret-file", help="the secret's bytes ('-': stdin); default: broker draws 256 bits")
    ] = None,
) -> None:
    """Create RESOURCE (version 1)."""
    secret = _read_secret(secret_file)
    with _client(url, token) as c:
        emit({"resource": resource, "version": run(lambda: c.put(resource, secret))})


@resource_app.command("rotate")
def resource_rotate(
    resource: Resource, token: Token, url: Url = DEFAULT_URL,
    secret_file: Annotated[Path | None, typer.Option("--secret-file")] = None,
    expected_version: Annotated[int | None, typer.Option(
        help="refuse unless the current version is this one")] = None,
) -> None:
    """A new current version of RESOURCE; the previous one stays until retired."""
    secret = _read_secret(secret_file)
    with _client(url, token) as c:
        version = run(lambda: c.rotate(resource, secret, expected_version=expected_version))
        emit({"resource": resource, "version": version})


@resource_app.command("list")
def resource_list(token: Token, url: Url = DEFAULT_URL) -> None:
    """Your resources and their versions (never their secrets)."""
    with _client(url, token) as c:
        emit(run(c.list_resources))


@resource_app.command("retire")
def resource_retire(
    resource: Resource, version: Annotated[int, typer.Argument()], token: Token,
    url: Url = DEFAULT_URL,
) -> None:
    """Retire an old VERSION of RESOURCE (the current one cannot be)."""
    with _client(url, token) as c:
        run(lambda: c.retire(resource, version))
        emit({"resource": resource, "retired": version})


@resource_app.command("delete")
def resource_delete(resource: Resource, token: Token, url: Url = DEFAULT_URL) -> None:
    """Delete RESOURCE, every version and its policies."""
    with _client(url, token) as c:
        run(lambda: c.delete(resource))
        emit({"resource": resource, "deleted": True})


@policy_app.command("set")
def policy_set(
    resource: Resource,
    policy_file: Annotated[Path, typer.Argument(help="release policy, TOML or JSON")],
    token: Token, url: Url = DEFAULT_URL,
    expected_version: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Set RESOURCE's release policy (a new version)."""
    def load() -> Any:
        try:
            data = policy_file.read_bytes()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {policy_file}: {exc.strerror}") from exc
        return parse_release_policy(data, fmt="json" if policy_file.suffix == ".json" else None)
    policy = run(load)
    with _client(url, token) as c:
        emit(run(lambda: c.set_policy(resource, policy, expected_version=expected_version)))


@policy_app.command("show")
def policy_show(
    resource: Resource, token: Token, url: Url = DEFAULT_URL,
    version: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Show RESOURCE's release policy (current, or --version)."""
    with _client(url, token) as c:
        emit(run(lambda: c.get_policy(resource, version)))


@policy_app.command("retire")
def policy_retire(
    resource: Resource, version: Annotated[int, typer.Argument()], token: Token,
    url: Url = DEFAULT_URL,
) -> None:
    """Retire an old policy VERSION."""
    with _client(url, token) as c:
        run(lambda: c.retire_policy(resource, version))
        emit({"resource": resource, "retired_policy": version})


@app.command("decisions")
def decisions_cmd(
    token: Token, url: Url = DEFAULT_URL,
    resource: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """Recorded decisions about your resources and by your token, newest first."""
    with _client(url, token) as c:
        emit(run(lambda: c.decisions(resource, limit)))


@threshold_app.command("split")
def threshold_split(
    resource: Resource,
    threshold: Annotated[int, typer.Option("--threshold", "-k", help="shares needed (k)")],
    brokers: Annotated[Path, typer.Option(
        "--brokers", help='JSON {"brokers": [{"url", "token", "key"}]} (mode 0600)')],
    secret_file: Annotated[Path | None, typer.Option(
        "--secret-file", help="the secret ('-': stdin); default: 256 fresh random bits")] = None,
    rotate: Annotated[bool, typer.Option(help="a new version of existing shares")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", help="write the descriptor (not secret) here too")] = None,
) -> None:
    """Split a secret k-of-n: one Shamir share per broker under RESOURCE, each released only
    under that broker's own policy. Prints the descriptor the enclave needs."""
    import os

    from medclave.kbs.threshold import BrokerTarget, load_brokers_file, split_to_brokers

    secret = _read_secret(secret_file) or os.urandom(32)

    def split() -> dict[str, Any]:
        targets = [BrokerTarget(url, OwnerClient(url, token), key)
                   for url, token, key in load_brokers_file(brokers)]
        try:
            ref = split_to_brokers(secret, threshold, targets, resource, rotate=rotate)
        finally:
            for t in targets:
                t.owner.close()
        body = ref.model_dump(mode="json")
        if out is not None:
            out.write_text(json.dumps(body, indent=2) + "\n")
        return body

    emit(run(split))


@revocation_app.command("add")
def revocation_add(kind: Kind, value: Value, token: Token, url: Url = DEFAULT_URL,
                   reason: Annotated[str, typer.Option(help="why (kept with the entry)")] = ""
                   ) -> None:
    """Revoke an enclave identity: no further release of your resources to it, and enclaves
    holding your keys learn it at their next standing check and stop serving."""
    with _client(url, token) as c:
        emit(run(lambda: c.revoke(kind, value, reason)))


@revocation_app.command("remove")
def revocation_remove(kind: Kind, value: Value, token: Token, url: Url = DEFAULT_URL) -> None:
    """Take an entry off your revocation list."""
    with _client(url, token) as c:
        run(lambda: c.unrevoke(kind, value))
        emit({"removed": {"kind": kind, "value": value}})


@revocation_app.command("list")
def revocation_list(token: Token, url: Url = DEFAULT_URL) -> None:
    """Your revocation list."""
    with _client(url, token) as c:
        emit(run(c.revocations))


@mesh_app.command("database")
def mesh_database(
    tenant: Annotated[str, typer.Option("--tenant", help="the trust domain (owner name)")],
    host: Annotated[list[str], typer.Option(
        "--host", help="a DNS name or IP address the enclaves dial (repeat for several)")],
    out: Annotated[Path, typer.Option("--out", help="a new folder for the server's files")],
    data: Annotated[Path, typer.Option("--data", help="the broker's data folder")],
    name: Annotated[str, typer.Option("--name", help="the database's workload name")] = "db-1",
    user: Annotated[str, typer.Option("--user", help="the PostgreSQL role enclaves use")
                    ] = "medclave",
    days: Annotated[int, typer.Option("--days", min=1, max=825,
                                      help="certificate lifetime")] = 90,
) -> None:
    """A PostgreSQL server certificate from the mesh CA (medclave://TENANT/database/NAME with
    the hosts as subjectAltNames, for the enclaves' sslmode=verify-full), its key (0600), the
    CA certificate, and the postgresql.conf / pg_hba.conf / pg_ident.conf lines that admit
    only TENANT's enclaves. The database is not attested: run this where the broker runs."""
    from datetime import timedelta

    from cryptography.hazmat.primitives import serialization

    from medclave.errors import InputError
    from medclave.mesh.certs import MeshCA, new_key
    from medclave.mesh.database import server_config
    from medclave.mesh.policy import WorkloadId
    from medclave.util.files import create_file, create_secret_file

    def issue() -> dict[str, Any]:
        if not (data / MeshCA.KEY_FILE).exists():
            raise InputError("config.invalid", "no mesh CA in this data folder (the broker "
                             "makes it when it first serves with a mesh_file)")
        if out.exists():
            raise InputError("config.invalid", f"{out} exists: --out names a new folder")
        now = datetime.now(UTC)
        ca = MeshCA.load_or_create(data, tenant, now=now)
        config = server_config(tenant, user)
        identity = WorkloadId.of(tenant, "database", name)
        key = new_key()
        cert = ca.issue(identity, key.public_key(), claims={}, now=now,
                        lifetime=timedelta(days=days), hosts=host)
        out.mkdir(mode=0o700)
        create_secret_file(out / "server.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        create_file(out / "server.crt", cert.public_bytes(serialization.Encoding.PEM))
        create_file(out / "mesh-ca.pem", ca.pem)
        return {"identity": identity.uri, "hosts": host,
                "not_after": cert.not_valid_after_utc.isoformat(), "folder": str(out),
                "postgresql.conf": config.postgresql_conf, "pg_hba.conf": config.pg_hba_conf,
                "pg_ident.conf": config.pg_ident_conf}
    emit(run(issue))
