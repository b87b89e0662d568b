"""Threshold key release: a secret split k-of-n across independent key brokers.

The owner (``split_to_brokers``, ``medclave kbs threshold split``, ``medclave model seal
--threshold``) splits the secret with Shamir sharing (``crypto.shamir``) and stores share x with
broker x, under the same resource name and that broker's own release policy. Each broker holds
one share and nothing else, so a broker that is fooled (or compromised) alone learns nothing
about the secret, and no k-1 brokers together can release it.

The enclave (``fetch_threshold``) runs the ordinary release protocol with each broker in turn
(challenge, fresh evidence over a fresh ephemeral key, signed answer): every share must be
signed by the very broker the descriptor names (``KbsClient(signer=...)``, a key the enclave is
configured to trust and states in its runtime), must be of this split and carry its index; it
stops as soon as k shares combine into the secret the descriptor commits to. Fewer than k
releases (brokers refusing on policy, unreachable, revoked) is ``kbs.threshold_not_met``, with
every broker's code in the detail.

The descriptor (``ThresholdRef``, in a sealed model's ``key.json``) is not secret and lies on
the operator's disk, so it is trusted for nothing: the shares carry their own split id,
threshold and index; the secret is checked against ``secret_digest`` (and a model key again
against the manifest's key id); broker keys must be among those the enclave pins.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medclave.crypto import shamir
from medclave.errors import InputError, KbsError, MedclaveError
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.names import ResourceName
from medclave.kbs.signing import fingerprint, parse_public_key

FORMAT = "medclave-threshold-v1"
MAX_BROKERS = 16
log = logging.getLogger("medclave.kbs.threshold")


def secret_digest(split_id: bytes, secret: bytes) -> str:
    """The descriptor's commitment to the secret (hex SHA-256, domain-separated, salted by the
    split id). For high-entropy secrets (keys) only: a guessable secret could be tested."""
    return hashlib.sha256(FORMAT.encode() + b"\x00" + split_id + secret).hexdigest()


class ShareRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kbs: str = Field(min_length=1, max_length=2048)
    broker_key: str = Field(pattern=r"^[0-9a-f]{64}$")  # fingerprint of the broker's Ed25519 key
    resource: str = Field(max_length=400)
    version: int = Field(ge=1)
    index: int = Field(ge=1, le=shamir.MAX_SHARES)


class ThresholdRef(BaseModel):
    """Where the shares live and what they must combine into (not secret)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = Field(pattern=f"^{FORMAT}$")
    threshold: int = Field(ge=2, le=MAX_BROKERS)
    split_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    secret_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    shares: tuple[ShareRef, ...] = Field(min_length=2, max_length=MAX_BROKERS)

    def check(self) -> ThresholdRef:
        """Structural rules pydantic cannot state: k <= n, distinct indices and brokers."""
        if self.threshold > len(self.shares):
            raise InputError("input.malformed", "threshold above the number of shares")
        if len({s.index for s in self.shares}) != len(self.shares):
            raise InputError("input.malformed", "two shares have the same index")
        if len({s.broker_key for s in self.shares}) != len(self.shares):
            # One broker holding two shares would let it alone count twice toward k.
            raise InputError("input.malformed", "two shares are held by the same broker")
        return self


@dataclass(frozen=True)
class BrokerTarget:
    """One broker the owner splits to: its URL, the owner's client of it, its key fingerprint."""

    url: str
    owner: OwnerClient
    broker_key: str


class BrokerEntry(BaseModel):
    """One line of the owner's brokers file: where, the owner token there, the broker's key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    token: str = Field(min_length=1, max_length=512)
    key: str = Field(min_length=1, max_length=128)  # base64 or hex (`medclave kbs key show`)


class BrokersFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    brokers: tuple[BrokerEntry, ...] = Field(min_length=2, max_length=MAX_BROKERS)


def load_brokers_file(path: Path) -> list[tuple[str, str, str]]:
    """``[(url, owner token, broker key fingerprint)]`` from a JSON brokers file. It holds
    owner tokens, so it must not be readable by others (like every secret file we read)."""
    try:
        if path.stat().st_mode & 0o077:
            raise InputError("config.invalid", f"{path.name} is readable by others; chmod 600 it")
        with path.open("rb") as fh:
            raw = fh.read(64 * 1024 + 1)
    except OSError as exc:
        raise InputError("input.missing", f"cannot read {path.name}") from exc
    if len(raw) > 64 * 1024:
        raise InputError("input.too_large", f"{path.name} is too large")
    try:
        parsed = BrokersFile.model_validate_json(raw)
    except ValidationError as exc:
        raise InputError("input.malformed", f"{path.name} is not a brokers file") from exc
    return [(b.url, b.token, fingerprint(parse_public_key(b.key))) for b in parsed.brokers]


def split_to_brokers(secret: bytes, threshold: int, targets: Sequence[BrokerTarget],
                     resource: str, *, rotate: bool = False) -> ThresholdRef:
    """Share ``secret`` k-of-n, one share per broker under ``resource``; the descriptor.

    If a broker refuses its share, the shares already stored are deleted (best effort), so no
    partial split is left behind; the refusal is raised.
    """
    name = str(ResourceName.parse(resource))
    if not 2 <= len(targets) <= MAX_BROKERS:
        raise InputError("input.malformed", f"a split needs 2 to {MAX_BROKERS} brokers")
    shares = shamir.split(secret, threshold, len(targets))
    refs: list[ShareRef] = []
    try:
        for target, share in zip(targets, shares, strict=True):
            data = share.encode()
            version = target.owner.rotate(name, data) if rotate else target.owner.put(name, data)
            refs.append(ShareRef(kbs=target.url, broker_key=target.broker_key, resource=name,
                                 version=version, index=share.index))
    except MedclaveError:
        if not rotate:
            for target, _ in zip(targets, refs, strict=False):
                try:
                    target.owner.delete(name)
                except MedclaveError as exc:
                    log.warning("could not remove a partial share: %s", exc.code)
        raise
    split_id = shares[0].split_id
    return ThresholdRef(format=FORMAT, threshold=threshold, split_id=split_id.hex(),
                        secret_digest=secret_digest(split_id, secret), shares=tuple(refs)).check()


# Opens the enclave's client of one broker, pinned to that broker's key (``signer``).
ClientFor = Callable[[ShareRef], KbsClient]


def fetch_threshold(ref: ThresholdRef, open_client: ClientFor) -> bytes:
    """Inside the enclave: release shares broker by broker until k combine into the secret."""
    ref.check()
    split_id = bytes.fromhex(ref.split_id)
    got: list[shamir.Share] = []
    outcomes: list[str] = []
    for share_ref in ref.shares:
        try:
            with open_client(share_ref) as client:
                released = client.fetch(share_ref.resource, version=share_ref.version)
            share = shamir.Share.decode(released)
            if (share.split_id, share.index, share.threshold) != (split_id, share_ref.index,
                                                                  ref.threshold):
                raise KbsError("kbs.answer_unauthenticated",
                               "the broker released a share of another split or index")
        except MedclaveError as exc:
            outcomes.append(f"{share_ref.broker_key[:12]}:{exc.code}")
            log.warning("share %d of %s refused: %s", share_ref.index, share_ref.resource,
                        exc.code)
            continue
        outcomes.append(f"{share_ref.broker_key[:12]}:released")
        got.append(share)
        secret = _combine_checked(got, ref.threshold, ref.secret_digest, split_id)
        if secret is not None:
            return secret
    raise KbsError("kbs.threshold_not_met",
                   f"{len(got)} of {ref.threshold} shares released ({', '.join(outcomes)})")


def _combine_checked(shares: Sequence[shamir.Share], k: int, digest: str,
                     split_id: bytes) -> bytes | None:
    """The secret from some k of ``shares`` that matches the commitment, if any does.

    Trying subsets means one broker answering a well-formed but wrong share cannot block the
    release when k honest shares exist (n <= 16, so the subsets stay few)."""
    if len(shares) < k:
        return None
    newest = shares[-1]
    for others in itertools.combinations(shares[:-1], k - 1):
        try:
            secret = shamir.combine([*others, newest])
        except MedclaveError:
            continue
        if secret_digest(split_id, secret) == digest:
            return secret
    return None
