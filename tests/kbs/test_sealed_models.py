"""Sealed models opened through the broker: any altered chunk is refused, no plaintext leaks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from medclave.attestation import sim
from medclave.crypto import hpke, sealed
from medclave.errors import InputError, MedclaveError, ModelError
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.sealed_models import (
    KEY_REF_NAME,
    default_resource,
    load_sealed_model,
    read_key_file,
    seal_model,
    unseal_for_owner,
    write_owner_keypair,
)
from tests.kbs.conftest import Live
from tests.kbs.helpers import RESOURCE, sim_attester, sim_policy, trusting

LiveFactory = Callable[..., Live]
CHUNK = sealed.MIN_CHUNK_SIZE
CT = CHUNK + sealed.TAG_SIZE


@pytest.fixture
def sealed_model(live_factory: LiveFactory, authority: sim.SimAuthority,
                 tmp_path: Path) -> tuple[Live, Path, bytes]:
    live = live_factory(sim_roots=(authority.root_fingerprint,))
    weights = os.urandom(CHUNK * 5 - 100)
    (tmp_path / "llama.gguf").write_bytes(weights)
    with OwnerClient(live.url, live.token("vendor")) as owner:
        seal_model(tmp_path / "llama.gguf", tmp_path / "sealed", owner="vendor", broker=owner,
                   kbs_url=live.url, chunk_size=CHUNK)
        owner.set_policy(RESOURCE, sim_policy())
    return live, tmp_path / "sealed", weights


def memfds() -> int:
    """Anonymous memory files this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
        except OSError:
            continue
    return count


def load(live: Live, authority: sim.SimAuthority, folder: Path) -> bytes:
    with KbsClient(live.url, sim_attester(authority), trusted=trusting(live.broker)) as client:
        fd, _, _ = load_sealed_model(client, folder)
    try:
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def test_intact_model_loads(sealed_model: tuple[Live, Path, bytes],
                            authority: sim.SimAuthority) -> None:
    live, folder, weights = sealed_model
    assert load(live, authority, folder) == weights


def _swap(p: bytes) -> bytes:
    return p[:CT] + p[2 * CT:3 * CT] + p[CT:2 * CT] + p[3 * CT:]


def _flip(p: bytes) -> bytes:
    return p[:3 * CT + 7] + bytes([p[3 * CT + 7] ^ 1]) + p[3 * CT + 8:]


@pytest.mark.parametrize("alter,code", [
    (_swap, "model.chunk_invalid"),
    (lambda p: p[:2 * CT] + p[3 * CT:], "model.truncated"),  # a chunk dropped
    (lambda p: p[:-10], "model.truncated"),
    (lambda p: p[:4 * CT], "model.truncated"),  # cut at a chunk boundary
    (_flip, "model.chunk_invalid"),
    (lambda p: p + b"\0" * 16, "model.chunk_invalid"),  # bytes appended
])
def test_altered_model_is_refused(sealed_model: tuple[Live, Path, bytes],
                                  authority: sim.SimAuthority,
                                  alter: Callable[[bytes], bytes], code: str) -> None:
    live, folder, _ = sealed_model
    payload = folder / sealed.PAYLOAD_NAME
    payload.write_bytes(alter(payload.read_bytes()))
    before = memfds()
    with pytest.raises(ModelError) as e:
        load(live, authority, folder)
    assert e.value.code == code
    assert memfds() == before  # the memory file was closed, its plaintext freed


def test_key_reference_for_another_key_is_refused(sealed_model: tuple[Live, Path, bytes],
                                                  authority: sim.SimAuthority) -> None:
    live, folder, _ = sealed_model
    ref = json.loads((folder / KEY_REF_NAME).read_text())
    ref["key_id"] = "00" * 16
    (folder / KEY_REF_NAME).write_text(json.dumps(ref))
    with pytest.raises(ModelError) as e:
        load(live, authority, folder)
    assert e.value.code == "model.manifest_invalid"


def test_broker_key_of_another_version_is_refused(sealed_model: tuple[Live, Path, bytes],
                                                  authority: sim.SimAuthority) -> None:
    live, folder, _ = sealed_model
    with OwnerClient(live.url, live.token("vendor")) as owner:
        owner.rotate(RESOURCE)  # version 2 holds another key
    ref = json.loads((folder / KEY_REF_NAME).read_text())
    ref["version"] = 2
    (folder / KEY_REF_NAME).write_text(json.dumps(ref))
    with pytest.raises(ModelError) as e:
        load(live, authority, folder)
    assert e.value.code == "model.key_invalid"


def test_broker_refusal_leaves_no_sealed_files(live_factory: LiveFactory, tmp_path: Path) -> None:
    live = live_factory()
    (tmp_path / "m.bin").write_bytes(b"w" * 5000)
    with OwnerClient(live.url, live.token("vendor")) as owner:
        owner.put(default_resource("vendor", tmp_path / "m.bin"))
        with pytest.raises(MedclaveError) as e:  # exists: put without --rotate is refused
            seal_model(tmp_path / "m.bin", tmp_path / "out", owner="vendor", broker=owner)
        assert e.value.code == "kbs.conflict"
        assert list((tmp_path / "out").iterdir()) == []
        result = seal_model(tmp_path / "m.bin", tmp_path / "out", owner="vendor", broker=owner,
                            rotate=True)
        assert result.key_ref is not None and result.key_ref.version == 2


def test_key_needs_a_home(tmp_path: Path) -> None:
    (tmp_path / "m.bin").write_bytes(b"w")
    with pytest.raises(InputError):
        seal_model(tmp_path / "m.bin", tmp_path / "out", owner="vendor")
    assert not (tmp_path / "out").exists()


def test_owner_sealed_key_opens_for_the_owner_only(tmp_path: Path) -> None:
    weights = os.urandom(10_000)
    (tmp_path / "m.bin").write_bytes(weights)
    public = write_owner_keypair(tmp_path / "owner.key")
    assert (tmp_path / "owner.key").stat().st_mode & 0o777 == 0o600
    assert read_key_file(tmp_path / "owner.key.pub", private=False) == public
    seal_model(tmp_path / "m.bin", tmp_path / "out", owner="vendor", owner_public_key=public,
               chunk_size=CHUNK)
    private = read_key_file(tmp_path / "owner.key", private=True)
    manifest = unseal_for_owner(tmp_path / "out", private, tmp_path / "plain.bin")
    assert (tmp_path / "plain.bin").read_bytes() == weights
    assert manifest.size == len(weights)
    stranger = hpke.private_key_bytes(hpke.generate_private_key())
    with pytest.raises(ModelError) as e:
        unseal_for_owner(tmp_path / "out", stranger, tmp_path / "stolen.bin")
    assert e.value.code == "model.key_invalid" and not (tmp_path / "stolen.bin").exists()


def test_private_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    write_owner_keypair(tmp_path / "owner.key")
    (tmp_path / "owner.key").chmod(0o644)
    with pytest.raises(InputError) as e:
        read_key_file(tmp_path / "owner.key", private=True)
    assert e.value.code == "config.invalid"


def test_default_resource_name() -> None:
    assert default_resource("vendor", Path("Llama 3 8B.Q4.gguf")) == \
        "kbs:///vendor/model-key/Llama-3-8B.Q4"
    assert default_resource("vendor", Path("...gguf")) == "kbs:///vendor/model-key/model"
