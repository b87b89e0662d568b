"""Sealed model files: round trips, and every tampering refused with a stable code."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.crypto import hpke, sealed
from medclave.crypto.sealed import TAG_SIZE, Manifest
from medclave.errors import MedclaveError
from tests.conftest import flip

CHUNK = sealed.MIN_CHUNK_SIZE  # small chunks: many of them in a small file


def _model(tmp: Path, size: int, name: str = "model.gguf") -> Path:
    src = tmp / name
    src.write_bytes(os.urandom(size))
    return src


def _seal(tmp: Path, size: int = 3 * CHUNK + 100, name: str = "s",
          key: bytes | None = None) -> tuple[Path, Path, Manifest, bytes]:
    src = _model(tmp, size, f"{name}.gguf")
    manifest, key = sealed.seal_file(src, tmp / name, owner="vendor-a", key=key,
                                     chunk_size=CHUNK)
    return src, tmp / name, manifest, key


def _read_memfd(sealed_dir: Path, key: bytes) -> bytes:
    fd, path = sealed.open_to_memfd(sealed_dir, key)
    try:
        assert path == f"/proc/self/fd/{fd}"
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def _payload(sealed_dir: Path) -> Path:
    return sealed_dir / sealed.PAYLOAD_NAME


def _chunks(sealed_dir: Path) -> list[bytes]:
    data = _payload(sealed_dir).read_bytes()
    step = CHUNK + TAG_SIZE
    return [data[i:i + step] for i in range(0, len(data), step)]


def _refused(sealed_dir: Path, key: bytes, code: str) -> None:
    with pytest.raises(MedclaveError) as err:
        _read_memfd(sealed_dir, key)
    assert err.value.code == code


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK, 3 * CHUNK + 100])
def test_round_trip_memfd_and_unseal(tmp_path: Path, size: int) -> None:
    src, sealed_dir, manifest, key = _seal(tmp_path, size)
    assert manifest.size == size
    assert manifest.chunk_count == max(1, -(-size // CHUNK))
    assert _payload(sealed_dir).stat().st_size == size + TAG_SIZE * manifest.chunk_count
    assert _read_memfd(sealed_dir, key) == src.read_bytes()
    assert sealed.inspect(sealed_dir) == manifest
    out = tmp_path / "plain.gguf"
    sealed.unseal_to(sealed_dir, key, out)
    assert out.read_bytes() == src.read_bytes()
    assert out.stat().st_mode & 0o777 == 0o600


def test_manifest_contents_and_digest(tmp_path: Path) -> None:
    import hashlib

    src, sealed_dir, manifest, key = _seal(tmp_path)
    on_disk = json.loads((sealed_dir / sealed.MANIFEST_NAME).read_text())
    assert on_disk == manifest.to_json()
    assert on_disk["format"] == "medclave-sealed-model-v1"
    assert on_disk["plaintext_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert on_disk["owner"] == "vendor-a" and on_disk["model_format"] == "gguf"
    assert manifest.key_id == sealed.key_id_for(key)
    assert len(key) == 32
    assert manifest.digest == hashlib.sha256(manifest.canonical()).digest()


def test_memfd_is_sealed_and_close_on_exec(tmp_path: Path) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    fd, _ = sealed.open_to_memfd(sealed_dir, key)
    try:
        assert not os.get_inheritable(fd)
        with pytest.raises(OSError):
            os.write(fd, b"x")
        with pytest.raises(OSError):
            os.ftruncate(fd, 1)
    finally:
        os.close(fd)


def test_chunk_swapped(tmp_path: Path) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    c = _chunks(sealed_dir)
    _payload(sealed_dir).write_bytes(c[1] + c[0] + b"".join(c[2:]))
    _refused(sealed_dir, key, "model.chunk_invalid")


def test_chunk_dropped(tmp_path: Path) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    c = _chunks(sealed_dir)
    _payload(sealed_dir).write_bytes(c[0] + b"".join(c[2:]))
    _refused(sealed_dir, key, "model.truncated")


def test_chunk_dropped_and_manifest_adjusted(tmp_path: Path) -> None:
    _, sealed_dir, manifest, key = _seal(tmp_path)
    c = _chunks(sealed_dir)
    _payload(sealed_dir).write_bytes(b"".join(c[:-2]) + c[-1])
    forged = Manifest(**{**manifest.to_json(), "size": manifest.size - CHUNK,
                         "chunk_count": manifest.chunk_count - 1})
    (sealed_dir / sealed.MANIFEST_NAME).write_bytes(forged.canonical())
    _refused(sealed_dir, key, "model.chunk_invalid")


def test_chunk_duplicated_in_place_of_another(tmp_path: Path) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    c = _chunks(sealed_dir)
    _payload(sealed_dir).write_bytes(c[0] + c[0] + b"".join(c[2:]))
    _refused(sealed_dir, key, "model.chunk_invalid")


@pytest.mark.parametrize("cut", [1, TAG_SIZE, 100 + TAG_SIZE, CHUNK + 100 + TAG_SIZE])
def test_truncated(tmp_path: Path, cut: int) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    data = _payload(sealed_dir).read_bytes()
    _payload(sealed_dir).write_bytes(data[:-cut])
    _refused(sealed_dir, key, "model.truncated")
    with pytest.raises(MedclaveError) as err:
        sealed.inspect(sealed_dir)
    assert err.value.code == "model.truncated"


def test_truncated_at_a_chunk_boundary_with_manifest_adjusted(tmp_path: Path) -> None:
    # Cutting whole chunks and fixing size/count still fails: the new last chunk lacks the
    # final flag and the manifest digest changed.
    _, sealed_dir, manifest, key = _seal(tmp_path, 4 * CHUNK)
    c = _chunks(sealed_dir)
    _payload(sealed_dir).write_bytes(b"".join(c[:2]))
    forged = Manifest(**{**manifest.to_json(), "size": 2 * CHUNK, "chunk_count": 2})
    (sealed_dir / sealed.MANIFEST_NAME).write_bytes(forged.canonical())
    _refused(sealed_dir, key, "model.chunk_invalid")


def test_trailing_bytes(tmp_path: Path) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    with open(_payload(sealed_dir), "ab") as f:
        f.write(b"\x00")
    _refused(sealed_dir, key, "model.chunk_invalid")


@pytest.mark.parametrize("offset", [0, CHUNK - 1, CHUNK + 3, CHUNK + TAG_SIZE, -1])
def test_flipped_byte(tmp_path: Path, offset: int) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    data = _payload(sealed_dir).read_bytes()
    _payload(sealed_dir).write_bytes(flip(data, offset % len(data)))
    _refused(sealed_dir, key, "model.chunk_invalid")


def test_chunk_spliced_from_another_sealed_model_with_the_same_key(tmp_path: Path) -> None:
    _, first, _, key = _seal(tmp_path, name="a")
    _, second, _, _ = _seal(tmp_path, name="b", key=key)
    a, b = _chunks(first), _chunks(second)
    _payload(first).write_bytes(a[0] + b[1] + b"".join(a[2:]))
    _refused(first, key, "model.chunk_invalid")


def test_payload_of_another_sealing_under_its_manifest(tmp_path: Path) -> None:
    _, first, _, key = _seal(tmp_path, name="a")
    _, second, _, _ = _seal(tmp_path, name="b", key=key)
    shutil.copy(_payload(second), _payload(first))
    _refused(first, key, "model.chunk_invalid")


@pytest.mark.parametrize(("field", "value"), [
    ("owner", "vendor-b"), ("model_format", "safetensors"), ("salt", "00" * 32),
    ("plaintext_sha256", "11" * 32),
])
def test_manifest_field_edited(tmp_path: Path, field: str, value: str) -> None:
    _, sealed_dir, manifest, key = _seal(tmp_path)
    forged = Manifest(**{**manifest.to_json(), field: value})
    (sealed_dir / sealed.MANIFEST_NAME).write_bytes(forged.canonical())
    _refused(sealed_dir, key, "model.chunk_invalid")


def test_wrong_key(tmp_path: Path) -> None:
    _, sealed_dir, _, _ = _seal(tmp_path)
    _refused(sealed_dir, os.urandom(32), "model.key_invalid")
    _refused(sealed_dir, b"short", "model.key_invalid")
    with pytest.raises(MedclaveError) as err:
        sealed.seal_file(_model(tmp_path, 10), tmp_path / "x", owner="o", key=b"k" * 31)
    assert err.value.code == "model.key_invalid"


def test_key_id_edited_to_match_another_key(tmp_path: Path) -> None:
    _, sealed_dir, manifest, _ = _seal(tmp_path)
    other = os.urandom(32)
    forged = Manifest(**{**manifest.to_json(), "key_id": sealed.key_id_for(other)})
    (sealed_dir / sealed.MANIFEST_NAME).write_bytes(forged.canonical())
    _refused(sealed_dir, other, "model.chunk_invalid")


def _lying_sealer(tmp_path: Path) -> tuple[Path, bytes]:
    """A key holder who seals one plaintext but records another's digest."""
    key = os.urandom(32)
    plaintext = os.urandom(2 * CHUNK + 7)
    manifest = Manifest(owner="vendor-a", model_format="gguf", key_id=sealed.key_id_for(key),
                        salt=os.urandom(32).hex(), size=len(plaintext), chunk_size=CHUNK,
                        chunk_count=3, plaintext_sha256="ab" * 32)
    cipher = sealed._ChunkCipher(manifest, key)
    out = tmp_path / "lie"
    out.mkdir()
    payload = b"".join(
        cipher.aead.encrypt(cipher.nonce(i), plaintext[i * CHUNK:(i + 1) * CHUNK], cipher.aad(i))
        for i in range(3))
    (out / sealed.PAYLOAD_NAME).write_bytes(payload)
    (out / sealed.MANIFEST_NAME).write_bytes(manifest.canonical())
    return out, key


def test_digest_mismatch_closes_the_memfd(tmp_path: Path) -> None:
    sealed_dir, key = _lying_sealer(tmp_path)
    before = _open_fds()
    _refused(sealed_dir, key, "model.digest_mismatch")
    assert _open_fds() == before
    with pytest.raises(MedclaveError) as err:
        sealed.unseal_to(sealed_dir, key, tmp_path / "out.gguf")
    assert err.value.code == "model.digest_mismatch"
    assert not (tmp_path / "out.gguf").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_failures_leak_no_fd_and_no_plaintext_file(tmp_path: Path) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    data = _payload(sealed_dir).read_bytes()
    _payload(sealed_dir).write_bytes(flip(data, len(data) - 1))
    before = _open_fds()
    _refused(sealed_dir, key, "model.chunk_invalid")
    assert _open_fds() == before
    with pytest.raises(MedclaveError):
        sealed.unseal_to(sealed_dir, key, tmp_path / "out.gguf")
    assert not any(p.name.startswith((".out", "out")) for p in tmp_path.iterdir())


def test_no_memfd_means_refusal_not_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.delattr(os, "memfd_create")
    _refused(sealed_dir, key, "model.unsupported_platform")
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing


@pytest.mark.parametrize("text", [
    "", "{", "[]", "null", '{"format": "medclave-sealed-model-v1"}',
])
def test_malformed_manifest(tmp_path: Path, text: str) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    (sealed_dir / sealed.MANIFEST_NAME).write_text(text)
    _refused(sealed_dir, key, "model.manifest_invalid")


@pytest.mark.parametrize(("field", "value"), [
    ("format", "medclave-sealed-model-v2"), ("cipher", "AES-128-GCM"), ("size", -1),
    ("size", 1.5), ("size", True), ("chunk_size", 1), ("chunk_count", 99), ("key_id", "XYZ"),
    ("salt", "00"), ("owner", ""), ("model_format", "GGUF"), ("plaintext_sha256", 5),
])
def test_invalid_manifest_fields(tmp_path: Path, field: str, value: object) -> None:
    _, sealed_dir, manifest, key = _seal(tmp_path)
    data = {**manifest.to_json(), field: value}
    (sealed_dir / sealed.MANIFEST_NAME).write_text(json.dumps(data))
    _refused(sealed_dir, key, "model.manifest_invalid")


def test_manifest_duplicate_or_extra_keys(tmp_path: Path) -> None:
    _, sealed_dir, manifest, key = _seal(tmp_path)
    text = json.dumps(manifest.to_json())
    for bad in (text[:-1] + ', "owner": "x"}', text[:-1] + ', "extra": 1}'):
        (sealed_dir / sealed.MANIFEST_NAME).write_text(bad)
        _refused(sealed_dir, key, "model.manifest_invalid")


def test_missing_files(tmp_path: Path) -> None:
    _, sealed_dir, _, key = _seal(tmp_path)
    _payload(sealed_dir).unlink()
    _refused(sealed_dir, key, "model.truncated")
    _refused(tmp_path / "nowhere", key, "model.manifest_invalid")


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    src, sealed_dir, _, key = _seal(tmp_path)
    with pytest.raises(MedclaveError):
        sealed.seal_file(src, sealed_dir, owner="o")
    with pytest.raises(MedclaveError):
        sealed.unseal_to(sealed_dir, key, src)


@pytest.mark.parametrize("salt", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32, 32])
def test_given_salt_must_be_32_bytes(tmp_path: Path, salt: object) -> None:
    src = _model(tmp_path, 10)
    with pytest.raises(MedclaveError) as err:
        sealed.seal_file(src, tmp_path / "s", owner="o", salt=salt)  # type: ignore[arg-type]
    assert err.value.code == "input.malformed"
    assert not (tmp_path / "s").exists()


def test_salt_is_fresh_unless_given(tmp_path: Path) -> None:
    key = os.urandom(sealed.KEY_SIZE)
    src = _model(tmp_path, 10)
    first, _ = sealed.seal_file(src, tmp_path / "a", owner="o", key=key)
    second, _ = sealed.seal_file(src, tmp_path / "b", owner="o", key=key)
    assert first.salt != second.salt
    given, _ = sealed.seal_file(src, tmp_path / "c", owner="o", key=key, salt=b"\x07" * 32)
    assert given.salt == "07" * 32

def test_key_sealed_to_owner(tmp_path: Path) -> None:
    owner, owner_public = hpke.generate_keypair()
    _, sealed_dir, _, key = _seal(tmp_path)
    blob = sealed.seal_key_to_owner(key, owner_public)
    assert key not in blob
    recovered = sealed.open_owner_key(blob, owner)
    assert recovered == key
    assert _read_memfd(sealed_dir, recovered)
    other, _ = hpke.generate_keypair()
    with pytest.raises(MedclaveError) as err:
        sealed.open_owner_key(blob, other)
    assert err.value.code == "crypto.decrypt_failed"
    with pytest.raises(MedclaveError) as err:
        sealed.open_owner_key(flip(blob, 40), owner)
    assert err.value.code == "crypto.decrypt_failed"


@pytest.fixture(scope="module")
def small_sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes, bytes]:
    tmp = tmp_path_factory.mktemp("fuzz")
    src = _model(tmp, 2 * CHUNK + 10)
    sealed.seal_file(src, tmp / "s", owner="o", key=b"K" * 32, chunk_size=CHUNK)
    return (tmp / "s", (tmp / "s" / sealed.MANIFEST_NAME).read_bytes(),
            _payload(tmp / "s").read_bytes(), src.read_bytes())


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_sealed_model_raises_only_medclave_errors(
        tmp_path: Path, small_sealed: tuple[Path, bytes, bytes, bytes],
        data: st.DataObject) -> None:
    _, manifest, payload, plaintext = small_sealed
    target = Path(tempfile.mkdtemp(dir=tmp_path))
    which = data.draw(st.sampled_from(["manifest", "payload"]))
    mutated = bytearray(manifest if which == "manifest" else payload)
    pos = data.draw(st.integers(0, len(mutated) - 1))
    action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if action == "flip":
        mutated[pos] ^= data.draw(st.integers(1, 255))
    elif action == "cut":
        del mutated[pos:pos + data.draw(st.integers(1, 64))]
    else:
        mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    (target / sealed.MANIFEST_NAME).write_bytes(bytes(mutated) if which == "manifest"
                                                else manifest)
    (target / sealed.PAYLOAD_NAME).write_bytes(bytes(mutated) if which == "payload"
                                               else payload)
    try:
        out = _read_memfd(target, b"K" * 32)
    except MedclaveError:
        return
    # Only a manifest edit that leaves its canonical form unchanged (e.g. whitespace) can pass.
    assert which == "manifest" and out == plaintext
