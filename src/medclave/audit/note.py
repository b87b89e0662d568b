"""C2SP signed notes, tlog checkpoints and tlog cosignatures (Ed25519 only).

- signed-note (c2sp.org/signed-note@v1.0.0): text, a blank line, ``— <name> base64(keyID||sig)``
  lines; key ID = SHA-256(name || 0x0A || type || pubkey)[:4]; type 0x01 = Ed25519 over the text.
- tlog-checkpoint (c2sp.org/tlog-checkpoint@v1.0.0): origin, decimal size, base64 root, then
  optional extension lines.
- tlog-cosignature (c2sp.org/tlog-cosignature@v1.0.0): type 0x04, signature = u64 timestamp ||
  Ed25519 over ``cosignature/v1\\ntime <ts>\\n`` + the whole checkpoint body.

Notes are untrusted input: every size and count is bounded before anything is decoded, and
parsing raises ``audit.checkpoint_invalid``; a signature that does not verify raises
``audit.checkpoint_signature_invalid`` (log key) or ``audit.cosignature_invalid`` (witness).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medclave.audit.merkle import HASH_SIZE, MAX_TREE_SIZE
from medclave.errors import AuditError, CryptoError
from medclave.util.b64 import b64decode

# Bounds: the spec asks verifiers to accept at least 16 signatures.
MAX_NOTE_BYTES = 16 * 1024
MAX_SIGNATURES = 32
MAX_EXTENSION_LINES = 8

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
_ED25519_SIG = 64
_COSIG_PREFIX = "cosignature/v1\n"
_SIG_DASH = "\u2014 "
_INVALID = "audit.checkpoint_invalid"
# Key names: non-empty, no Unicode spaces, no '+'. str.split() with no argument splits on
# exactly the Unicode whitespace set, so a name is valid iff it survives that unchanged.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_KEY_ID = re.compile(r"[0-9a-f]{8}")


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and name.split() == [name] and name.isprintable()


def key_id(name: str, alg: int, public: bytes) -> bytes:
    """SHA-256(name || 0x0A || alg || public key)[:4] (signed-note §Signatures)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 (one text per value, so a signature line cannot be altered
    without altering the signature)."""
    try:
        return b64decode(text, padding="required")
    except ValueError as exc:
        raise AuditError(_INVALID, f"{what} is not canonical base64") from exc


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes_raw()


# --- keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted Ed25519 key under a name: the log's key (0x01) or a witness's (0x04)."""

    name: str
    public_key: bytes
    alg: int = ALG_ED25519

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise CryptoError("crypto.bad_key", "key name is empty or has spaces or '+'")
        if len(self.public_key) != 32 or self.alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise CryptoError("crypto.bad_key", "only 32-byte Ed25519 keys (types 0x01, 0x04)")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public_key)

    def vkey(self) -> str:
        """``<name>+<hex key ID>+<base64(type || key)>``, the usual verifier-key text."""
        blob = base64.b64encode(bytes([self.alg]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @classmethod
    def from_vkey(cls, text: str) -> NoteVerifier:
        # The name has no '+', the key ID is hex; the base64 after them may contain '+'.
        parts = text.strip().split("+", 2)
        if len(parts) != 3 or len(text) > 512:
            raise CryptoError("crypto.bad_key", "a verifier key is name+keyid+base64")
        name, hexid, blob = parts
        if not _KEY_ID.fullmatch(hexid):
            raise CryptoError("crypto.bad_key", "a key ID is 8 lower-case hex digits")
        try:
            raw = b64decode(blob)
            want = bytes.fromhex(hexid)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise CryptoError("crypto.bad_key", "verifier key is not well encoded") from exc
        if len(raw) != 33:
            raise CryptoError("crypto.bad_key", "verifier key is not an Ed25519 key")
        verifier = cls(name, raw[1:], raw[0])
        if verifier.key_id != want:
            raise CryptoError("crypto.bad_key", "verifier key ID does not match its key")
        return verifier

    def _ed25519(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)


@dataclass(frozen=True)
class NoteSigner:
    """An Ed25519 signing key under a name. ``alg`` 0x01 signs notes, 0x04 cosigns checkpoints."""

    name: str
    private_key: Ed25519PrivateKey
    alg: int = ALG_ED25519

    def __post_init__(self) -> None:
        NoteVerifier(self.name, _raw_public(self.private_key.public_key()), self.alg)

    @classmethod
    def generate(cls, name: str, alg: int = ALG_ED25519) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate(), alg)

    @classmethod
    def from_seed(cls, name: str, seed: bytes, alg: int = ALG_ED25519) -> NoteSigner:
        """The key whose 32-byte RFC 8032 seed is ``seed`` (e.g. released by the key broker),
        so one secret gives one key on every boot."""
        if not isinstance(seed, bytes | bytearray) or len(seed) != 32:
            raise CryptoError("crypto.bad_key", "an Ed25519 seed is exactly 32 bytes")
        return cls(name, Ed25519PrivateKey.from_private_bytes(bytes(seed)), alg)

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, _raw_public(self.private_key.public_key()), self.alg)

    def skey(self) -> str:
        """``PRIVATE+KEY+<name>+<hex key ID>+<base64(type || seed)>``: keep it secret."""
        seed = self.private_key.private_bytes_raw()
        blob = base64.b64encode(bytes([self.alg]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id.hex()}+{blob}"

    @classmethod
    def from_skey(cls, text: str) -> NoteSigner:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise CryptoError("crypto.bad_key", "a signer key is PRIVATE+KEY+name+keyid+base64")
        if not _KEY_ID.fullmatch(parts[3]):
            raise CryptoError("crypto.bad_key", "a key ID is 8 lower-case hex digits")
        try:
            raw = b64decode(parts[4])
            want = bytes.fromhex(parts[3])
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise CryptoError("crypto.bad_key", "signer key is not well encoded") from exc
        if len(raw) != 33:
            raise CryptoError("crypto.bad_key", "signer key is not an Ed25519 seed")
        signer = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]), raw[0])
        if signer.verifier.key_id != want:
            raise CryptoError("crypto.bad_key", "signer key ID does not match its key")
        return signer


# --- signed notes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes  # after the 4-byte key ID

    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.signature).decode()
        return f"{_SIG_DASH}{self.name} {blob}\n"


@dataclass(frozen=True)
class Note:
    text: str  # ends with a newline
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()


def parse_note(data: bytes) -> Note:
    """Split a signed note into text and signature lines; no signature is checked here."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_NOTE_BYTES:
        raise AuditError(_INVALID, f"a note is bytes of at most {MAX_NOTE_BYTES}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuditError(_INVALID, "a note must be UTF-8") from exc
    if any(ch < " " and ch != "\n" for ch in text):
        raise AuditError(_INVALID, "a note must not hold control characters")
    if not text.endswith("\n"):
        raise AuditError(_INVALID, "a note ends with a newline")
    # The text is separated from the signatures by the last blank line.
    cut = text.rfind("\n\n")
    if cut < 0:
        raise AuditError(_INVALID, "a note has no signature block")
    body, block = text[: cut + 1], text[cut + 2 :]
    lines = block.split("\n")[:-1]
    if not lines or len(lines) > MAX_SIGNATURES:
        raise AuditError(_INVALID, f"a note carries 1 to {MAX_SIGNATURES} signatures")
    sigs = []
    for line in lines:
        if not line.startswith(_SIG_DASH):
            raise AuditError(_INVALID, "a signature line starts with an em dash and a space")
        fields = line[len(_SIG_DASH) :].split(" ")
        if len(fields) != 2 or not _valid_name(fields[0]):
            raise AuditError(_INVALID, "a signature line is '— <name> <base64>'")
        raw = _b64decode(fields[1], "signature")
        if len(raw) < 5:
            raise AuditError(_INVALID, "a signature is a key ID and at least one byte")
        sigs.append(Signature(fields[0], raw[:4], raw[4:]))
    return Note(body, tuple(sigs))


def sign_note(text: str, signer: NoteSigner) -> Signature:
    if signer.alg != ALG_ED25519:
        raise CryptoError("crypto.bad_key", "a note is signed with an Ed25519 (0x01) key")
    return Signature(signer.name, signer.verifier.key_id, signer.private_key.sign(text.encode()))


def _matching(note: Note, verifier: NoteVerifier) -> list[Signature]:
    """Signature lines of ``verifier``: name and key ID both match (others MUST be ignored)."""
    kid = verifier.key_id
    return [s for s in note.signatures if s.name == verifier.name and s.key_id == kid]


def verify_note(note: Note, verifier: NoteVerifier) -> None:
    """Raise unless ``verifier`` signed ``note``; a failing line of a known key rejects the note."""
    code = "audit.checkpoint_signature_invalid"
    mine = _matching(note, verifier)
    if not mine:
        raise AuditError(code, f"the note carries no signature by {verifier.name}")
    for sig in mine:
        try:
            if len(sig.signature) != _ED25519_SIG:
                raise InvalidSignature
            verifier._ed25519().verify(sig.signature, note.text.encode())
        except InvalidSignature as exc:
            raise AuditError(code, f"the signature by {verifier.name} does not verify") from exc


# --- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "\n".join([*lines, *self.extensions]) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "" or len(lines) - 4 > MAX_EXTENSION_LINES:
        raise AuditError(_INVALID, "a checkpoint is origin, size, root and few extension lines")
    origin, size, root, *ext = lines[:-1]
    if not origin:
        raise AuditError(_INVALID, "the checkpoint origin is empty")
    if not _DECIMAL.fullmatch(size) or int(size) > MAX_TREE_SIZE:
        raise AuditError(_INVALID, "the checkpoint size is not a canonical decimal uint64")
    raw = _b64decode(root, "root hash")
    if len(raw) != HASH_SIZE:
        raise AuditError(_INVALID, "the checkpoint root is not a 32-byte hash")
    if any(not line for line in ext):
        raise AuditError(_INVALID, "checkpoint extension lines must not be empty")
    return Checkpoint(origin, int(size), raw, tuple(ext))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> bytes:
    """The signed note; the log key name should match the origin (tlog-checkpoint §Signatures)."""
    body = checkpoint.body()
    parse_checkpoint(body)  # refuse to sign what a verifier would refuse to read
    return Note(body, (sign_note(body, signer),)).to_bytes()


@dataclass(frozen=True)
class Cosignature:
    name: str
    timestamp: int


@dataclass(frozen=True)
class VerifiedCheckpoint:
    checkpoint: Checkpoint
    note: bytes
    cosignatures: tuple[Cosignature, ...] = ()


def _cosigned_message(body: str, timestamp: int) -> bytes:
    return f"{_COSIG_PREFIX}time {timestamp}\n{body}".encode()


def cosign(note: bytes, signer: NoteSigner, timestamp: int) -> bytes:
    """Append a cosignature/v1 line to ``note`` (already checked by the caller: see witness)."""
    if signer.alg != ALG_COSIGNATURE_V1:
        raise CryptoError("crypto.bad_key", "cosignatures use a type 0x04 key")
    if not 0 <= timestamp < 1 << 63:
        raise AuditError("audit.cosignature_invalid", "timestamp must be in [0, 2^63)")
    parsed = parse_note(note)
    parse_checkpoint(parsed.text)
    sig = signer.private_key.sign(_cosigned_message(parsed.text, timestamp))
    line = Signature(signer.name, signer.verifier.key_id, timestamp.to_bytes(8, "big") + sig)
    return Note(parsed.text, (*parsed.signatures, line)).to_bytes()


def verify_cosignature(note: Note, verifier: NoteVerifier) -> Cosignature:
    """Check the cosignature of ``verifier`` on ``note``; return its timestamp."""
    code = "audit.cosignature_invalid"
    if verifier.alg != ALG_COSIGNATURE_V1:
        raise AuditError(code, f"{verifier.name} is not a cosigner (type 0x04) key")
    mine = _matching(note, verifier)
    if not mine:
        raise AuditError(code, f"no cosignature by {verifier.name}")
    stamps = []
    for sig in mine:
        if len(sig.signature) != 8 + _ED25519_SIG:
            raise AuditError(code, f"the cosignature by {verifier.name} has the wrong length")
        ts = int.from_bytes(sig.signature[:8], "big")
        if ts >= 1 << 63:
            raise AuditError(code, "cosignature timestamp exceeds 2^63 - 1")
        try:
            verifier._ed25519().verify(sig.signature[8:], _cosigned_message(note.text, ts))
        except InvalidSignature as exc:
            raise AuditError(code, f"the cosignature by {verifier.name} does not verify") from exc
        stamps.append(ts)
    return Cosignature(verifier.name, max(stamps))


def verify_checkpoint(
    data: bytes,
    log_key: NoteVerifier,
    *,
    origin: str | None = None,
    witnesses: Sequence[NoteVerifier] = (),
    quorum: int = 0,
) -> VerifiedCheckpoint:
    """Open a checkpoint signed by ``log_key`` and cosigned by ``quorum`` of ``witnesses``.

    ``origin`` defaults to the log key's name (tlog-checkpoint: the key name matches the origin).
    A witness whose line is present but does not verify rejects the note (signed-note
    §Signatures: SHOULD reject); a missing one only counts against the quorum.
    """
    if log_key.alg != ALG_ED25519:
        raise AuditError("audit.checkpoint_signature_invalid", "the log key must be type 0x01")
    if quorum > len(witnesses) or quorum < 0:
        raise AuditError("audit.cosignature_invalid", "quorum exceeds the witnesses configured")
    note = parse_note(data)
    verify_note(note, log_key)
    checkpoint = parse_checkpoint(note.text)
    want = log_key.name if origin is None else origin
    if checkpoint.origin != want:
        raise AuditError(_INVALID, f"checkpoint origin {checkpoint.origin!r} is not {want!r}")
    cosigs = []
    for witness in witnesses:
        if _matching(note, witness):
            cosigs.append(verify_cosignature(note, witness))
    if len(cosigs) < quorum:
        raise AuditError(
            "audit.cosignature_invalid", f"{len(cosigs)} witness cosignatures, {quorum} required"
        )
    return VerifiedCheckpoint(checkpoint, bytes(data), tuple(cosigs))
