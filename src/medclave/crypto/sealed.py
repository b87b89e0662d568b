"""Sealed model files: the weights encrypted in fixed-size AES-256-GCM chunks, plus a manifest.

Layout of a sealed directory::

    manifest.json   canonical JSON (RFC 8785) of :class:`Manifest`
    model.sealed    chunk 0 || chunk 1 || ...; chunk i = AES-256-GCM(plaintext[i]) || tag (16 B)

Construction (``K`` is the 256-bit model key, ``salt`` 32 random bytes drawn per sealing):

* ``key_id = HKDF-SHA256(K, info="medclave-sealed-model-v1/key-id")[:16]`` in hex: a commitment
  to ``K`` (AES-GCM alone is not key-committing), so a wrong key is refused as such
  (``model.key_invalid``) before any chunk is tried.
* ``chunk_key = HKDF-SHA256(K, salt, info="medclave-sealed-model-v1/chunk-key")``.
* ``nonce_i = 0x00000000 || u64be(i)``: unique per chunk by construction, with no birthday bound
  as random nonces would have. Deriving a fresh ``chunk_key`` from a per-sealing salt keeps
  (key, nonce) pairs unique even if a caller seals two files with the same ``K``, which a bare
  ``K`` with index nonces would not.
* ``aad_i = "medclave-sealed-model-v1" || 0x00 || SHA-256(manifest) || u64be(i) || final_i``
  where ``final_i`` is 1 for the last chunk only. Moving a chunk changes its index, cutting the
  file removes the final flag, a chunk from another sealed file (another manifest, salt and key)
  fails, and editing any manifest field changes the digest every chunk is bound to.

The manifest records the SHA-256 of the plaintext, which is what attestation reports as the model
digest; it is recomputed while decrypting and compared before any plaintext is handed out. Since
the manifest digest is bound into every chunk, sealing reads the source twice (digest first).

Decryption streams with constant memory: large reads into reused buffers, ``decrypt_into``, and
the SHA-256 computed on a helper thread (``hashlib`` releases the GIL) so it overlaps with AES-GCM
and the writes. :func:`open_to_memfd` writes plaintext only to an anonymous memory file (Linux
``memfd_create``), sealed read-only once verified; elsewhere it refuses rather than touch disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medclave.crypto import hpke
from medclave.crypto.canonical import canonical_json
from medclave.crypto.jose import reject_duplicate_members
from medclave.errors import InputError, ModelError
from medclave.util.files import write_atomic

FORMAT = "medclave-sealed-model-v1"
CIPHER = "AES-256-GCM"
MANIFEST_NAME = "manifest.json"
PAYLOAD_NAME = "model.sealed"
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_SIZE = 1 << 48
MAX_MANIFEST_BYTES = 64 * 1024
KEY_SIZE = 32
TAG_SIZE = 16
OWNER_KEY_INFO = b"medclave-sealed-model-v1/owner-key"

_LABEL = FORMAT.encode() + b"\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_MODEL_FORMAT = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_FIELDS = frozenset({"format", "cipher", "owner", "model_format", "key_id", "salt", "size",
                     "chunk_size", "chunk_count", "plaintext_sha256"})


def _bad_manifest(detail: str) -> ModelError:
    return ModelError("model.manifest_invalid", detail)


def chunk_count_for(size: int, chunk_size: int) -> int:
    """Number of chunks; an empty model still has one (empty, final) chunk."""
    return max(1, -(-size // chunk_size))


@dataclass(frozen=True)
class Manifest:
    owner: str
    model_format: str
    key_id: str
    salt: str
    size: int
    chunk_size: int
    chunk_count: int
    plaintext_sha256: str
    format: str = FORMAT
    cipher: str = CIPHER

    def __post_init__(self) -> None:
        if self.format != FORMAT or self.cipher != CIPHER:
            raise _bad_manifest(f"unsupported format {self.format!r}/{self.cipher!r}")
        if not isinstance(self.owner, str) or not 1 <= len(self.owner) <= 256 \
                or not self.owner.isprintable():
            raise _bad_manifest("owner must be 1..256 printable characters")
        if not isinstance(self.model_format, str) or not _MODEL_FORMAT.fullmatch(
                self.model_format):
            raise _bad_manifest("model_format must be a short lowercase name")
        for name, pattern in (("key_id", _HEX32), ("salt", _HEX64),
                              ("plaintext_sha256", _HEX64)):
            value = getattr(self, name)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise _bad_manifest(f"{name} is not lowercase hex of the right length")
        for name in ("size", "chunk_size", "chunk_count"):
            value = getattr(self, name)
            if type(value) is not int:
                raise _bad_manifest(f"{name} must be an integer")
        if not 0 <= self.size <= MAX_SIZE:
            raise _bad_manifest("size out of range")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise _bad_manifest("chunk_size out of range")
        if self.chunk_count != chunk_count_for(self.size, self.chunk_size):
            raise _bad_manifest("chunk_count does not match size and chunk_size")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> Manifest:
        if not isinstance(value, dict) or set(value) != _FIELDS:
            raise _bad_manifest(f"manifest must have exactly the fields {sorted(_FIELDS)}")
        return cls(**value)

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON: what every chunk's associated data binds."""
        return hashlib.sha256(self.canonical()).digest()

    @property
    def payload_size(self) -> int:
        return self.size + TAG_SIZE * self.chunk_count

    def chunk_plaintext_size(self, index: int) -> int:
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.size - self.chunk_size * (self.chunk_count - 1)


def key_id_for(key: bytes) -> str:
    _check_key_bytes(key)
    return _hkdf(key, None, b"medclave-sealed-model-v1/key-id", 16).hex()


def _check_key_bytes(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise ModelError("model.key_invalid", f"a model key is {KEY_SIZE} bytes")


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(bytes(ikm))


class _ChunkCipher:
    """Per-chunk nonce and associated data (see the module docstring)."""

    def __init__(self, manifest: Manifest, key: bytes) -> None:
        _check_key_bytes(key)
        if key_id_for(key) != manifest.key_id:
            raise ModelError("model.key_invalid", "the key does not match the manifest key_id")
        chunk_key = _hkdf(key, bytes.fromhex(manifest.salt),
                          b"medclave-sealed-model-v1/chunk-key", 32)
        self.aead = AESGCM(chunk_key)
        self._aad_prefix = _LABEL + manifest.digest
        self._last = manifest.chunk_count - 1

    def nonce(self, index: int) -> bytes:
        return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")

    def aad(self, index: int) -> bytes:
        return self._aad_prefix + index.to_bytes(8, "big") + (b"\x01" if index == self._last
                                                              else b"\x00")


class _Hasher:
    """SHA-256 over a sequence of buffers on a worker thread, with a small pool of buffers.

    The caller takes a buffer with :meth:`buffer`, fills it, hands it over with :meth:`feed`; the
    worker returns it to the pool once hashed. Used as a context manager so the thread always ends.
    """

    def __init__(self, size: int, depth: int = 3) -> None:
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(depth):
            self._free.put(bytearray(size))
        self._work: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._sha = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="medclave-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            buf, size = item
            with memoryview(buf) as view:
                self._sha.update(view[:size])
            self._free.put(buf)

    def buffer(self) -> bytearray:
        return self._free.get()

    def feed(self, buf: bytearray, size: int) -> None:
        self._work.put((buf, size))

    def hexdigest(self) -> str:
        self._stop()
        return self._sha.hexdigest()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()

    def __enter__(self) -> _Hasher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()


def _read_full(f: io.FileIO, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _advise_sequential(f: io.FileIO) -> None:
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)


# ---------------------------------------------------------------------------------------------
# sealing (the model owner's side)


def _sha256_file(f: io.FileIO, chunk_size: int) -> str:
    sha = hashlib.sha256()
    buf = bytearray(chunk_size)
    with memoryview(buf) as view:
        while n := f.readinto(view):
            sha.update(view[:n])
    return sha.hexdigest()


def seal_file(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, owner: str,
              key: bytes | None = None, model_format: str = "gguf",
              chunk_size: int = DEFAULT_CHUNK_SIZE,
              salt: bytes | None = None) -> tuple[Manifest, bytes]:
    """Seal ``src`` into ``out_dir`` (created if needed); returns the manifest and the key.

    Memory use is a few chunks whatever the file size. The key is fresh unless given; hand it to
    the key broker or :func:`seal_key_to_owner`, never store it beside the sealed model.
    ``salt`` exists so the known-answer vectors (tests/vectors/) can be reproduced byte for byte;
    production callers leave it unset: one salt used twice with one key repeats AES-GCM nonces.
    """
    key = os.urandom(KEY_SIZE) if key is None else bytes(key)
    _check_key_bytes(key)
    if salt is None:
        salt = os.urandom(32)
    elif not isinstance(salt, bytes | bytearray) or len(salt) != 32:
        raise InputError("input.malformed", "the sealing salt is 32 bytes")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InputError("input.malformed", "chunk_size out of range")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST_NAME).exists() or (out / PAYLOAD_NAME).exists():
        raise InputError("input.malformed", f"{out} already holds a sealed model")
    with open(src, "rb", buffering=0) as f:  # raw FileIO: readinto, one syscall
        _advise_sequential(f)
        size = os.fstat(f.fileno()).st_size
        if size > MAX_SIZE:
            raise InputError("input.too_large", "model file too large")
        manifest = Manifest(owner=owner, model_format=model_format, key_id=key_id_for(key),
                            salt=salt.hex(), size=size, chunk_size=chunk_size,
                            chunk_count=chunk_count_for(size, chunk_size),
                            plaintext_sha256=_sha256_file(f, chunk_size))
        f.seek(0)
        write_atomic(out / PAYLOAD_NAME, lambda w: _encrypt_stream(manifest, key, f, w))
    write_atomic(out / MANIFEST_NAME, lambda w: w.write(manifest.canonical() + b"\n"))
    return manifest, key


def _encrypt_stream(manifest: Manifest, key: bytes, f: io.FileIO, w: IO[bytes]) -> None:
    cipher = _ChunkCipher(manifest, key)
    out = bytearray(manifest.chunk_size + TAG_SIZE)
    changed = InputError("input.malformed", "the source file changed while it was being sealed")
    with _Hasher(manifest.chunk_size) as hasher, memoryview(out) as out_view:
        for index in range(manifest.chunk_count):
            size = manifest.chunk_plaintext_size(index)
            buf = hasher.buffer()
            with memoryview(buf) as view:
                if _read_full(f, view[:size]) != size:
                    raise changed
                cipher.aead.encrypt_into(cipher.nonce(index), view[:size], cipher.aad(index),
                                         out_view[:size + TAG_SIZE])
            hasher.feed(buf, size)
            w.write(out_view[:size + TAG_SIZE])
        if f.read(1) or hasher.hexdigest() != manifest.plaintext_sha256:
            raise changed


def seal_key_to_owner(key: bytes, owner_public_x25519: bytes) -> bytes:
    """The model key HPKE-sealed to its owner, for owners who keep keys without a broker."""
    _check_key_bytes(key)
    return hpke.seal(owner_public_x25519, bytes(key), info=OWNER_KEY_INFO)


def open_owner_key(sealed_key: bytes, owner_private_key: X25519PrivateKey | bytes) -> bytes:
    key = hpke.open(owner_private_key, sealed_key, info=OWNER_KEY_INFO)
    _check_key_bytes(key)
    return key


# ---------------------------------------------------------------------------------------------
# reading


def load_manifest(sealed_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(sealed_dir) / MANIFEST_NAME
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise _bad_manifest(f"cannot read {MANIFEST_NAME}: {exc.strerror}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _bad_manifest("manifest too large")
    try:
        value = json.loads(raw, object_pairs_hook=reject_duplicate_members, parse_float=_no_float,
                           parse_constant=_no_float)
    except (ValueError, RecursionError) as exc:
        raise _bad_manifest(f"manifest is not valid JSON: {exc}") from None
    return Manifest.from_json(value)


def _no_float(text: str) -> Any:
    raise ValueError(f"non-integer number {text}")


def inspect(sealed_dir: str | os.PathLike[str]) -> Manifest:
    """The validated manifest, after checking the payload has exactly the expected length."""
    manifest = load_manifest(sealed_dir)
    with _open_payload(sealed_dir, manifest):
        pass
    return manifest


def _open_payload(sealed_dir: str | os.PathLike[str], manifest: Manifest) -> io.FileIO:
    try:
        f = open(Path(sealed_dir) / PAYLOAD_NAME, "rb", buffering=0)  # noqa: SIM115
    except OSError as exc:
        raise ModelError("model.truncated", f"cannot read {PAYLOAD_NAME}: {exc.strerror}") from None
    actual = os.fstat(f.fileno()).st_size
    if actual != manifest.payload_size:
        f.close()
        if actual < manifest.payload_size:
            raise ModelError("model.truncated",
                             f"payload is {actual} bytes, the manifest implies "
                             f"{manifest.payload_size}")
        raise ModelError("model.chunk_invalid", "payload has bytes past its last chunk")
    return f


def _decrypt_stream(sealed_dir: str | os.PathLike[str], key: bytes, fd: int) -> Manifest:
    """Decrypt into ``fd``, verify every chunk and then the plaintext digest."""
    manifest = load_manifest(sealed_dir)
    cipher = _ChunkCipher(manifest, key)
    ct = bytearray(manifest.chunk_size + TAG_SIZE)
    with _open_payload(sealed_dir, manifest) as f, memoryview(ct) as ct_view, \
            _Hasher(manifest.chunk_size) as hasher:
        _advise_sequential(f)
        for index in range(manifest.chunk_count):
            size = manifest.chunk_plaintext_size(index)
            if _read_full(f, ct_view[:size + TAG_SIZE]) != size + TAG_SIZE:
                raise ModelError("model.truncated", f"payload ends inside chunk {index}")
            buf = hasher.buffer()
            with memoryview(buf) as view:
                try:
                    cipher.aead.decrypt_into(cipher.nonce(index), ct_view[:size + TAG_SIZE],
                                             cipher.aad(index), view[:size])
                except InvalidTag:
                    raise ModelError("model.chunk_invalid",
                                     f"chunk {index} is altered, moved or from another "
                                     "sealed model") from None
                _write_all(fd, view[:size])
            hasher.feed(buf, size)
        if f.read(1):
            raise ModelError("model.chunk_invalid", "payload grew while it was being read")
        digest = hasher.hexdigest()
    if digest != manifest.plaintext_sha256:
        raise ModelError("model.digest_mismatch",
                         f"plaintext sha256 {digest} differs from the manifest")
    return manifest


def open_to_memfd(sealed_dir: str | os.PathLike[str], key: bytes, *,
                  name: str = "medclave-model") -> tuple[int, str]:
    """Decrypt into an anonymous in-memory file: ``(fd, "/proc/self/fd/N")``.

    The digest is verified before returning; on any failure the memory file is closed (and its
    pages freed) and the error raised. The fd is close-on-exec and, once verified, sealed against
    writes, shrinking and growing, so the engine maps exactly the bytes that were checked. The
    caller owns the fd and closes it.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        # Never fall back to a temporary file: plaintext weights must not reach a disk.
        raise ModelError("model.unsupported_platform", "os.memfd_create is unavailable")
    fd: int = memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        _decrypt_stream(sealed_dir, key, fd)
        _seal_memfd(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd, f"/proc/self/fd/{fd}"


def _seal_memfd(fd: int) -> None:
    import fcntl  # Linux only, like memfd itself

    seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)


def unseal_to(sealed_dir: str | os.PathLike[str], key: bytes,
              out: str | os.PathLike[str]) -> Manifest:
    """For the owner: decrypt to ``out`` (mode 0600), which appears only once verified."""
    target = Path(out)
    if target.exists():
        raise InputError("input.malformed", f"{target} already exists")
    opened: list[Manifest] = []
    write_atomic(target, lambda fh: opened.append(_decrypt_stream(sealed_dir, key, fh.fileno())))
    return opened[0]
