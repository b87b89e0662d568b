"""The key broker: releases a secret only to evidence its owner's policy accepts.

Release (docs/architecture.md, "Key release"; the flow of the IETF RATS background-check model with a
broker-issued nonce): spend the nonce first, so every attempt burns it whatever the outcome;
verify the evidence and that its report_data binds this nonce and this runtime (so the ephemeral
key); appraise it against the resource's release policy; then HPKE-seal the secret to the
ephemeral key, with the resource, version and nonce as AAD so the answer fits one request only.
Every decision, release or refusal with its code, is recorded before the answer leaves.

The owner API and the decision record are :class:`~medclave.kbs.owner_api.OwnerApi`, which
:class:`KeyBroker` extends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from medclave.attestation import Check, Verification, verify_bundle
from medclave.crypto import hpke
from medclave.errors import AttestationError, InputError, KbsError, MedclaveError
from medclave.kbs.checks import NONCE_BYTES
from medclave.kbs.checks import appraise as _appraise
from medclave.kbs.checks import ephemeral_key as _ephemeral_key
from medclave.kbs.checks import nonce_bytes as _nonce
from medclave.kbs.keywrap import KeyWrapper
from medclave.kbs.models import RELEASE_INFO, ReleasePolicy, release_aad
from medclave.kbs.names import ResourceName
from medclave.kbs.owner_api import OwnerApi, Trace, wrap_aad
from medclave.kbs.revocation import first_match, identities
from medclave.kbs.signing import (
    BrokerSigner,
    bundle_digest,
    release_statement,
    standing_statement,
)
from medclave.kbs.store import Decision, KbsStore, NonceState
from medclave.protocol.evidence import EvidenceBundle
from medclave.util.clock import system_clock

__all__ = ["DEFAULT_NONCE_TTL", "Challenge", "KeyBroker", "Release", "Standing", "wrap_aad"]

DEFAULT_NONCE_TTL = timedelta(seconds=60)


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    expires_at: datetime


@dataclass(frozen=True)
class Release:
    resource: str
    version: int
    sealed: bytes  # HPKE enc || ciphertext of the secret
    key_id: str  # fingerprint of the broker key that signed the answer
    signature: bytes  # Ed25519 over signing.release_statement(...)


@dataclass(frozen=True)
class Standing:
    resource: str
    standing: Literal["good", "revoked"]
    key_id: str
    signature: bytes  # Ed25519 over signing.standing_statement(...)


class KeyBroker(OwnerApi):
    """The broker's logic: the release protocol here, the owner API and the decision record
    from :class:`~medclave.kbs.owner_api.OwnerApi`; the HTTP layer (``kbs.app``) only translates
    to and from it."""

    def __init__(
        self,
        store: KbsStore,
        wrapper: KeyWrapper,
        *,
        signer: BrokerSigner,
        sim_roots: frozenset[str] = frozenset(),
        trusted_roots: frozenset[str] | None = None,
        nonce_ttl: timedelta = DEFAULT_NONCE_TTL,
        clock: Callable[[], datetime] = system_clock,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        if nonce_ttl <= timedelta(0):
            raise InputError("config.invalid", "nonce lifetime must be positive")
        super().__init__(store, wrapper, clock=clock, on_decision=on_decision)
        self.signer = signer
        self._sim_roots = sim_roots
        self._trusted_roots = trusted_roots
        self._ttl = nonce_ttl

    # --- release protocol ------------------------------------------------------------------

    def challenge(self) -> Challenge:
        now = self._clock()
        nonce = os.urandom(NONCE_BYTES)
        expires = now + self._ttl
        self.store.add_nonce(nonce, expires, now)
        return Challenge(nonce, expires)

    def release(
        self,
        resource: str,
        nonce: str | bytes,
        bundle: EvidenceBundle,
        client_id: str,
        *,
        version: int | None = None,
    ) -> Release:
        """The secret named ``resource`` sealed to the bundle's ephemeral key, or a refusal."""
        now = self._clock()
        trace = Trace("release", resource if isinstance(resource, str) else "", client_id)
        try:
            name = ResourceName.parse(resource)
            nonce_bytes, verification = self._verified(nonce, bundle, now, trace)
            self._refuse_revoked(name.owner, verification, bundle)
            ephemeral = _ephemeral_key(bundle.runtime)
            secret = self.store.secret_version(name, version)
            trace.version = secret.version
            policy_record = self.store.policy_version(name)
            trace.policy_digest = policy_record.digest
            policy = ReleasePolicy.model_validate_json(policy_record.document)
            # The nonce was issued at most one TTL ago and the evidence is newer than the nonce:
            # the oldest the evidence can be is the bound the policy's max age is checked against.
            _appraise(verification, policy, bundle.runtime, now, evidence_time=now - self._ttl)
            plain = self._wrapper.unwrap(secret.wrapped, wrap_aad(name, secret.version))
            sealed = hpke.seal(
                ephemeral, plain, RELEASE_INFO, release_aad(str(name), secret.version, nonce_bytes)
            )
            # Signed over everything the answer says (signing.py): without it anyone on the
            # path could seal a key of their own to the (public) ephemeral key.
            signature = self.signer.sign(release_statement(
                resource=str(name), version=secret.version, nonce=nonce_bytes,
                ephemeral_key=ephemeral, evidence=bundle_digest(bundle), sealed=sealed))
        except MedclaveError as exc:
            self._decide(trace, now, "refused", exc.code, exc.detail)
            raise
        except Exception as exc:  # fail closed, and say so in the record
            self._decide(trace, now, "refused", "internal", type(exc).__name__)
            raise KbsError("kbs.unavailable", "internal error during release") from exc
        self._decide(trace, now, "allowed", None, "released")
        return Release(str(name), secret.version, sealed, self.signer.key_id, signature)

    def standing(self, resource: str, nonce: str | bytes, bundle: EvidenceBundle,
                 client_id: str) -> Standing:
        """Whether the enclave that sent ``bundle`` is still in good standing with the owner of
        ``resource`` (not on its revocation list): a signed answer either way, so the enclave
        can act on "revoked" and nobody can forge "good". Same nonce rules as a release."""
        now = self._clock()
        trace = Trace("standing", resource if isinstance(resource, str) else "", client_id)
        try:
            name = ResourceName.parse(resource)
            nonce_bytes, verification = self._verified(nonce, bundle, now, trace)
            if self.store.resource_info(name) is None:
                raise KbsError("kbs.not_found", f"no resource {name}")
            hit = first_match(self.store.revocations(name.owner),
                              identities(verification, bundle))
            result: Literal["good", "revoked"] = "good" if hit is None else "revoked"
            signature = self.signer.sign(standing_statement(
                resource=str(name), nonce=nonce_bytes, evidence=bundle_digest(bundle),
                standing=result))
        except MedclaveError as exc:
            self._decide(trace, now, "refused", exc.code, exc.detail)
            raise
        if hit is None:
            self._decide(trace, now, "allowed", None, "good standing")
        else:
            self._decide(trace, now, "refused", "kbs.revoked", f"revoked: {hit.kind}")
        return Standing(str(name), result, self.signer.key_id, signature)

    def now(self) -> datetime:
        return self._clock()

    @property
    def nonce_ttl(self) -> timedelta:
        return self._ttl

    def _verified(self, nonce: str | bytes, bundle: EvidenceBundle, now: datetime,
                  trace: Trace) -> tuple[bytes, Verification]:
        """Spend the nonce, then verify the bundle over it, the checks (passed or failed) and the
        evidence digest (of its signed bytes: ECDSA is malleable) noted in ``trace``."""
        nonce_bytes = _nonce(nonce)
        self._spend(nonce_bytes, now)
        try:
            verification = verify_bundle(bundle, now=now, expected_nonce=nonce_bytes,
                                         sim_roots=self._sim_roots,
                                         trusted_roots=self._trusted_roots)
        except AttestationError as exc:
            trace.checks = tuple(exc.checks)
            raise
        trace.checks = verification.checks
        trace.evidence_sha256 = verification.evidence_digest
        return nonce_bytes, verification

    def attested(self, nonce: str | bytes, bundle: EvidenceBundle, now: datetime) -> Verification:
        """Spend the nonce, then verify the bundle over it: how every attested call starts
        (the mesh CA's issuance too, kbs/mesh_ca.py)."""
        nonce_bytes = _nonce(nonce)
        self._spend(nonce_bytes, now)
        return verify_bundle(bundle, now=now, expected_nonce=nonce_bytes,
                             sim_roots=self._sim_roots, trusted_roots=self._trusted_roots)

    def record(self, action: str, resource: str, client_id: str, error: MedclaveError | None,
               detail: str, *, evidence_sha256: str = "", checks: tuple[Check, ...] = ()) -> None:
        """Record a decision made outside this class (the mesh CA's)."""
        trace = Trace(action, resource, client_id, evidence_sha256=evidence_sha256,
                       checks=checks)
        if error is None:
            self._decide(trace, self._clock(), "allowed", None, detail)
        else:
            self._decide(trace, self._clock(), "refused", error.code, error.detail)

    def _refuse_revoked(self, owner: str, verification: Verification,
                        bundle: EvidenceBundle) -> None:
        hit = first_match(self.store.revocations(owner), identities(verification, bundle))
        if hit is not None:
            raise KbsError("kbs.revoked", f"{hit.kind} {hit.value[:24]} revoked: {hit.reason}")

    def _spend(self, nonce: bytes, now: datetime) -> None:
        state = self.store.spend_nonce(nonce, now)
        if state is NonceState.UNKNOWN:
            raise KbsError("kbs.nonce_unknown", "this broker never issued that nonce")
        if state is NonceState.USED:
            raise KbsError("kbs.nonce_replayed", "the nonce was already spent")
        if state is NonceState.EXPIRED:
            raise KbsError("kbs.nonce_expired", "the nonce expired before it was used")
