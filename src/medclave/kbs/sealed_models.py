"""Sealed models and where their keys live: with the broker, or sealed to their owner.

``crypto.sealed`` does the cryptography (chunks, manifest, memfd); this module decides where the
key goes. Beside ``manifest.json`` and ``model.sealed`` a sealed directory may hold:

* ``key.json``: where the broker keeps the key: ``{"kbs", "resource", "version", "key_id"}``.
  Not secret; the enclave reads it to ask for the right resource and version.
  Or, for a key split k-of-n across brokers (``kbs/threshold.py``), a ``ThresholdRef``:
  ``{"format": "medclave-threshold-v1", "threshold", "split_id", "secret_digest", "shares"}``.
* ``owner-key.sealed``: the key HPKE-sealed to the owner's X25519 key, so the owner (and only the
  owner) can unseal without a broker.

The plaintext key is never written anywhere; it goes from ``os.urandom`` to the broker (over the
owner API) and/or into the owner-sealed file.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medclave.crypto import hpke, sealed
from medclave.errors import InputError, MedclaveError, ModelError
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.names import MODEL_KEY, ResourceName
from medclave.kbs.threshold import (
    BrokerTarget,
    ClientFor,
    ShareRef,
    ThresholdRef,
    fetch_threshold,
    split_to_brokers,
)
from medclave.util.files import create_file, create_secret_file, read_secret_file

__all__ = ["BrokerTarget", "ClientFor", "KeyRef", "SealResult", "ShareRef", "ThresholdPlan",
           "ThresholdRef",
           "fetch_model_key", "fetch_model_key_threshold", "load_sealed_model",
           "load_sealed_model_threshold", "read_key_ref", "read_threshold_ref", "seal_model"]

KEY_REF_NAME = "key.json"
OWNER_KEY_NAME = "owner-key.sealed"
MAX_KEY_REF_BYTES = 4096
MAX_OWNER_KEY_FILE_BYTES = 4096


class KeyRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kbs: str = Field(max_length=2048)
    resource: str = Field(max_length=400)
    version: int = Field(ge=1)
    key_id: str = Field(pattern=r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class SealResult:
    manifest: sealed.Manifest
    key_ref: KeyRef | None
    owner_key_file: Path | None
    threshold_ref: ThresholdRef | None = None


@dataclass(frozen=True)
class ThresholdPlan:
    """Split the model key k-of-n across these brokers (``kbs/threshold.py``)."""

    threshold: int
    targets: tuple[BrokerTarget, ...]


def default_resource(owner: str, model_file: Path) -> str:
    """``kbs:///OWNER/model-key/STEM`` with the file stem reduced to the name alphabet."""
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in model_file.stem)[:128]
    return str(ResourceName.of(owner, MODEL_KEY, stem.lstrip("._-") or "model"))


def seal_model(
    model_file: Path,
    out_dir: Path,
    *,
    owner: str,
    broker: OwnerClient | None = None,
    kbs_url: str | None = None,
    resource: str | None = None,
    rotate: bool = False,
    owner_public_key: bytes | None = None,
    model_format: str = "gguf",
    chunk_size: int = sealed.DEFAULT_CHUNK_SIZE,
    threshold: ThresholdPlan | None = None,
) -> SealResult:
    """Seal ``model_file`` under a fresh 256-bit key and hand the key to the broker and/or owner.

    Fails before writing anything when the key would have nowhere to go. If the broker refuses
    the key, the sealed files just written are removed: a model nobody can open helps no one.
    """
    if broker is None and owner_public_key is None and threshold is None:
        raise InputError("input.missing", "the key needs a home: a broker (--kbs) or --owner-key")
    if broker is not None and threshold is not None:
        raise InputError("input.malformed", "one broker or a threshold split, not both")
    name = None
    if broker is not None or threshold is not None:
        name = (
            str(ResourceName.parse(resource)) if resource else default_resource(owner, model_file)
        )
    if owner_public_key is not None:
        hpke.public_key_from_bytes(owner_public_key)  # fail early on a bad key
    manifest, key = sealed.seal_file(
        model_file, out_dir, owner=owner, model_format=model_format, chunk_size=chunk_size
    )
    try:
        owner_file = None
        if owner_public_key is not None:
            owner_file = out_dir / OWNER_KEY_NAME
            create_file(owner_file, sealed.seal_key_to_owner(key, owner_public_key))
        ref = None
        if broker is not None and name is not None:
            version = broker.rotate(name, key) if rotate else broker.put(name, key)
            ref = KeyRef(kbs=kbs_url or "", resource=name, version=version, key_id=manifest.key_id)
            create_file(out_dir / KEY_REF_NAME, json.dumps(ref.model_dump(), indent=2).encode())
        split = None
        if threshold is not None and name is not None:
            split = split_to_brokers(key, threshold.threshold, threshold.targets, name,
                                     rotate=rotate)
            create_file(out_dir / KEY_REF_NAME,
                        json.dumps(split.model_dump(mode="json"), indent=2).encode())
    except BaseException:
        for leftover in (sealed.MANIFEST_NAME, sealed.PAYLOAD_NAME, OWNER_KEY_NAME, KEY_REF_NAME):
            (out_dir / leftover).unlink(missing_ok=True)
        raise
    return SealResult(manifest, ref, owner_file, split)


def _read_ref_bytes(sealed_dir: Path) -> bytes | None:
    path = sealed_dir / KEY_REF_NAME
    if not path.exists():
        return None
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_KEY_REF_BYTES + 1)
    except OSError as exc:
        raise ModelError("model.manifest_invalid", f"{KEY_REF_NAME} is unreadable") from exc
    if len(raw) > MAX_KEY_REF_BYTES:
        raise ModelError("model.manifest_invalid", f"{KEY_REF_NAME} too large")
    return raw


def read_key_ref(sealed_dir: Path) -> KeyRef | None:
    """The single-broker reference, or None (no key.json, or a threshold one)."""
    raw = _read_ref_bytes(sealed_dir)
    if raw is None or b'"threshold"' in raw:
        return None
    try:
        return KeyRef.model_validate_json(raw)
    except ValidationError as exc:
        raise ModelError("model.manifest_invalid", f"{KEY_REF_NAME} is invalid") from exc


def read_threshold_ref(sealed_dir: Path) -> ThresholdRef | None:
    """The k-of-n descriptor, or None when the key is not split."""
    raw = _read_ref_bytes(sealed_dir)
    if raw is None or b'"threshold"' not in raw:
        return None
    try:
        return ThresholdRef.model_validate_json(raw).check()
    except (ValidationError, InputError) as exc:
        raise ModelError("model.manifest_invalid", f"{KEY_REF_NAME} is invalid") from exc


def fetch_model_key(client: KbsClient, sealed_dir: Path) -> bytes:
    """The model key from the broker (inside the enclave), checked against the manifest."""
    manifest = sealed.load_manifest(sealed_dir)
    ref = read_key_ref(sealed_dir)
    if ref is None:
        raise ModelError(
            "model.manifest_invalid", f"{KEY_REF_NAME} missing: no broker holds the key"
        )
    if ref.key_id != manifest.key_id:
        raise ModelError("model.manifest_invalid", f"{KEY_REF_NAME} names another key")
    key = client.fetch(ref.resource, version=ref.version)
    if len(key) != sealed.KEY_SIZE or sealed.key_id_for(key) != manifest.key_id:
        raise ModelError("model.key_invalid", "the broker released a key for another model")
    return key


def fetch_model_key_threshold(open_client: ClientFor, sealed_dir: Path) -> bytes:
    """The model key combined from k brokers' shares, checked against the manifest."""
    manifest = sealed.load_manifest(sealed_dir)
    ref = read_threshold_ref(sealed_dir)
    if ref is None:
        raise ModelError("model.manifest_invalid", f"{KEY_REF_NAME} names no threshold split")
    key = fetch_threshold(ref, open_client)
    if len(key) != sealed.KEY_SIZE or sealed.key_id_for(key) != manifest.key_id:
        raise ModelError("model.key_invalid", "the shares combine into a key for another model")
    return key


def load_sealed_model_threshold(open_client: ClientFor, sealed_dir: Path
                                ) -> tuple[int, str, sealed.Manifest]:
    """Like :func:`load_sealed_model`, with the key released k-of-n."""
    key = fetch_model_key_threshold(open_client, sealed_dir)
    fd, path = sealed.open_to_memfd(sealed_dir, key)
    return fd, path, sealed.load_manifest(sealed_dir)


def load_sealed_model(client: KbsClient, sealed_dir: Path) -> tuple[int, str, sealed.Manifest]:
    """Fetch the key and decrypt into an anonymous memory file: ``(fd, path, manifest)``."""
    key = fetch_model_key(client, sealed_dir)
    fd, path = sealed.open_to_memfd(sealed_dir, key)
    return fd, path, sealed.load_manifest(sealed_dir)


# --- the owner's own key ----------------------------------------------------------------------


def write_owner_keypair(private_path: Path) -> bytes:
    """A fresh X25519 owner key: private (base64) in ``private_path`` 0600, public in ``.pub``."""
    private, public = hpke.generate_keypair()
    create_secret_file(private_path, base64.b64encode(hpke.private_key_bytes(private)) + b"\n")
    pub_path = private_path.with_name(private_path.name + ".pub")
    create_file(pub_path, base64.b64encode(public) + b"\n")
    return public


def read_key_file(path: Path, *, private: bool) -> bytes:
    """A base64 X25519 key file; a private one must not be readable by others."""
    try:
        if private:
            text = read_secret_file(path, "owner key", max_bytes=256)
        else:
            with path.open("rb") as fh:
                text = fh.read(256)
        raw = base64.b64decode(text.strip(), validate=True)
    except OSError as exc:
        raise InputError("input.missing", f"cannot read {path.name}: {exc.strerror}") from exc
    except (binascii.Error, ValueError) as exc:
        raise InputError("input.malformed", f"{path.name} is not a base64 key") from exc
    if len(raw) != hpke.NPK:
        raise InputError("input.malformed", f"{path.name} is not a 32-byte X25519 key")
    return raw


def unseal_for_owner(sealed_dir: Path, owner_private_key: bytes, out: Path) -> sealed.Manifest:
    """Decrypt to a file (0600) with the owner's key: for the key's owner only."""
    path = sealed_dir / OWNER_KEY_NAME
    try:
        with path.open("rb") as fh:
            blob = fh.read(MAX_OWNER_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ModelError(
            "model.key_invalid", f"no {OWNER_KEY_NAME}: the key was not sealed to an owner"
        ) from exc
    try:
        key = sealed.open_owner_key(blob, owner_private_key)
    except MedclaveError as exc:
        raise ModelError("model.key_invalid", "this owner key does not open the model key") from exc
    return sealed.unseal_to(sealed_dir, key, out)
