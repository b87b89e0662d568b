"""``medclave model``: seal a model's weights, inspect a sealed model, unseal it (owner only).

Exit 0: done; 1: refused (wrong key, altered chunks, broker refusal); 2: unusable input
(:mod:`medclave.cli.output`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medclave.cli.output import emit, run
from medclave.crypto import sealed
from medclave.kbs.client import OwnerClient
from medclave.kbs.sealed_models import (
    BrokerTarget,
    ThresholdPlan,
    read_key_file,
    read_key_ref,
    seal_model,
    unseal_for_owner,
    write_owner_keypair,
)
from medclave.kbs.threshold import load_brokers_file

app = typer.Typer(help="Sealed models: weights that open only inside an attested enclave.",
                  no_args_is_help=True)


@app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="private key file to create (0600)")],
) -> None:
    """An owner X25519 key pair: OUT (private) and OUT.pub (public, give it to `seal`)."""
    public = run(lambda: write_owner_keypair(out))
    emit({"private_key_file": str(out), "public_key_file": str(out) + ".pub",
           "public_key": public.hex()})


@app.command("seal")
def seal_cmd(
    model_file: Annotated[Path, typer.Argument(help="the plaintext weights")],
    out: Annotated[Path, typer.Option("--out", help="folder for the sealed model")],
    owner: Annotated[str, typer.Option("--owner", help="the model's owner (KBS owner name)")],
    kbs: Annotated[str | None, typer.Option("--kbs", help="broker URL: the key goes there")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="MEDCLAVE_KBS_TOKEN",
                                              show_default=False, help="owner token")] = None,
    resource: Annotated[str | None, typer.Option(
        help="kbs:///OWNER/model-key/NAME (default from the file name)")] = None,
    rotate: Annotated[bool, typer.Option(help="rotate an existing resource")] = False,
    owner_key: Annotated[Path | None, typer.Option(
        "--owner-key", help="owner public key file (from `keygen`): key sealed to it")] = None,
    model_format: Annotated[str, typer.Option("--format")] = "gguf",
    chunk_size: Annotated[int, typer.Option(help="bytes per chunk")] = sealed.DEFAULT_CHUNK_SIZE,
    threshold: Annotated[int | None, typer.Option(
        "--threshold", help="split the key k-of-n across --brokers (threshold release)")] = None,
    brokers: Annotated[Path | None, typer.Option(
        "--brokers", help='with --threshold: JSON {"brokers": [{"url", "token", "key"}]}')] = None,
) -> None:
    """Seal MODEL_FILE under a fresh 256-bit key (AES-256-GCM, 4 MiB chunks).

    The key goes to the broker (--kbs), is split k-of-n across brokers (--threshold with
    --brokers), and/or goes into a file sealed to the owner (--owner-key); one is required.
    It is never written in plain.
    """
    if kbs is not None and not token:
        raise typer.BadParameter("--kbs needs an owner --token (or MEDCLAVE_KBS_TOKEN)")
    if (threshold is None) != (brokers is None):
        raise typer.BadParameter("--threshold and --brokers go together")

    def action() -> dict[str, Any]:
        public = read_key_file(owner_key, private=False) if owner_key else None
        client = OwnerClient(kbs, token or "") if kbs is not None else None
        plan = None
        if threshold is not None and brokers is not None:
            plan = ThresholdPlan(threshold, tuple(
                BrokerTarget(url, OwnerClient(url, tok), key)
                for url, tok, key in load_brokers_file(brokers)))
        try:
            result = seal_model(model_file, out, owner=owner, broker=client, kbs_url=kbs,
                                resource=resource, rotate=rotate, owner_public_key=public,
                                model_format=model_format, chunk_size=chunk_size,
                                threshold=plan)
        finally:
            if client is not None:
                client.close()
            for target in plan.targets if plan else ():
                target.owner.close()
        return {"manifest": result.manifest.to_json(),
                "key": result.key_ref.model_dump() if result.key_ref else None,
                "threshold": (result.threshold_ref.model_dump(mode="json")
                              if result.threshold_ref else None),
                "owner_key_file": str(result.owner_key_file) if result.owner_key_file else None}
    emit(run(action))


@app.command("inspect")
def inspect_cmd(sealed_dir: Annotated[Path, typer.Argument(help="a sealed model folder")]) -> None:
    """Show the manifest (and where the key lives); checks the payload length."""
    def action() -> dict[str, Any]:
        manifest = sealed.inspect(sealed_dir)
        ref = read_key_ref(sealed_dir)
        return {"manifest": manifest.to_json(), "key": ref.model_dump() if ref else None,
                "owner_sealed_key": (sealed_dir / "owner-key.sealed").exists()}
    emit(run(action))


@app.command("unseal")
def unseal_cmd(
    sealed_dir: Annotated[Path, typer.Argument(help="a sealed model folder")],
    key: Annotated[Path, typer.Option("--key", help="the owner's private key file (0600)")],
    out: Annotated[Path, typer.Option("--out", help="plaintext file to create (0600)")],
) -> None:
    """For the key's owner only: decrypt to OUT with the owner's private key."""
    def action() -> dict[str, Any]:
        manifest = unseal_for_owner(sealed_dir, read_key_file(key, private=True), out)
        return {"out": str(out), "sha256": manifest.plaintext_sha256, "size": manifest.size}
    emit(run(action))
