"""One exception hierarchy for every refusal a user can meet.

Each error carries a stable dotted ``code`` (``attestation.signature_invalid``) that scripts and
clients may depend on, an HTTP status for the services, and a public message that says what to do.
The ``detail`` given at the raise site is for the operator's log and the CLI; services send only
the public message (so "not found" and "not permitted" look the same from outside).

Codes live in :data:`CATALOGUE`; raising an unknown code is a programming error and fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class ErrorSpec:
    status: int
    message: str


_NOT_FOUND = "The resource does not exist or you are not permitted to use it."

CATALOGUE: dict[str, ErrorSpec] = {
    # --- input and usage -------------------------------------------------------------------
    "input.unrecognized": ErrorSpec(400, "The input is not in a format Medclave recognises."),
    "input.malformed": ErrorSpec(400, "The input is malformed; check the file or request body."),
    "input.too_large": ErrorSpec(413, "The input exceeds the size limit."),
    "input.missing": ErrorSpec(400, "A required input is missing."),
    "input.no_route": ErrorSpec(404, "There is no such route."),
    "input.method_not_allowed": ErrorSpec(405, "The route does not take this method."),
    "input.incomplete": ErrorSpec(
        400, "The request ended before its body was complete; send it again whole."
    ),
    # --- audio (the scribe: decoded in enclave memory only) ----------------------------------
    "input.audio_too_large": ErrorSpec(413, "The audio file exceeds the size limit."),
    "input.audio_too_long": ErrorSpec(413, "The audio is longer than the duration limit."),
    "input.audio_unreadable": ErrorSpec(
        400, "The audio could not be decoded; send WAV, FLAC, MP3, Ogg/Opus or WebM/Opus."
    ),
    "config.invalid": ErrorSpec(500, "The service configuration is invalid; check its settings."),
    # The inference engine runs inside the TEE boundary (docs/engines.md).
    "config.engine_not_local": ErrorSpec(
        500, "The engine URL must be a loopback IP address or a Unix socket inside this VM."
    ),
    # --- crypto / protocol -----------------------------------------------------------------
    "crypto.decrypt_failed": ErrorSpec(400, "The message could not be decrypted or authenticated."),
    "crypto.signature_invalid": ErrorSpec(400, "The signature does not verify."),
    "crypto.bad_key": ErrorSpec(400, "The key is malformed or of an unsupported type."),
    "crypto.algorithm_forbidden": ErrorSpec(400, "The signature algorithm is not allowed."),
    "crypto.unsupported_suite": ErrorSpec(400, "The HPKE suite or key configuration is unsupported."),
    "crypto.key_unknown": ErrorSpec(
        400, "The key identifier is unknown; fetch the current key configuration."
    ),
    "crypto.truncated": ErrorSpec(400, "The encrypted stream ended before its final chunk."),
    "crypto.share_invalid": ErrorSpec(
        400, "A secret share is malformed, of another split, or does not fit the others."
    ),
    "protocol.bad_message": ErrorSpec(400, "The message does not follow the wire format."),
    "protocol.unsupported_version": ErrorSpec(400, "The format version is not supported."),
    "protocol.replayed": ErrorSpec(
        400, "This encapsulated request was already received; each one is accepted once."
    ),
    # --- attestation: parsing ----------------------------------------------------------------
    "attestation.malformed": ErrorSpec(400, "The evidence is malformed and cannot be parsed."),
    "attestation.unsupported_version": ErrorSpec(400, "The evidence version is not supported."),
    "attestation.unknown_platform": ErrorSpec(400, "The evidence platform is not supported."),
    "attestation.reserved_nonzero": ErrorSpec(400, "The evidence has non-zero reserved fields."),
    # --- attestation: verification -------------------------------------------------------------
    "attestation.certificate_missing": ErrorSpec(
        400, "A certificate needed to verify the evidence was not supplied."
    ),
    "attestation.chain_invalid": ErrorSpec(
        403, "The certificate chain does not lead to a trusted root."
    ),
    "attestation.root_untrusted": ErrorSpec(403, "The root certificate is not a pinned trust anchor."),
    "attestation.certificate_expired": ErrorSpec(
        403, "A certificate is not valid at the verification time."
    ),
    "attestation.certificate_revoked": ErrorSpec(403, "A certificate in the chain is revoked."),
    "attestation.signature_invalid": ErrorSpec(403, "The evidence signature does not verify."),
    "attestation.tcb_mismatch": ErrorSpec(
        403, "The TCB in the evidence does not match its signing certificate."
    ),
    "attestation.chip_id_mismatch": ErrorSpec(
        403, "The chip identifier does not match its signing certificate."
    ),
    "attestation.binding_mismatch": ErrorSpec(
        403, "The evidence does not bind the expected nonce and runtime."
    ),
    "attestation.nonce_mismatch": ErrorSpec(403, "The evidence does not carry the expected nonce."),
    "attestation.evidence_expired": ErrorSpec(
        403, "The evidence is not valid at the verification time."
    ),
    "attestation.pcr_mismatch": ErrorSpec(
        403, "The PCR values do not match the digest signed in the TPM quote."
    ),
    "attestation.collateral_invalid": ErrorSpec(
        403, "The verification collateral is invalid, expired or not signed by a trusted issuer."
    ),
    "attestation.tcb_no_match": ErrorSpec(403, "No TCB level in the collateral matches the platform."),
    "attestation.qe_identity_mismatch": ErrorSpec(
        403, "The quoting enclave does not match its identity collateral."
    ),
    "attestation.rim_invalid": ErrorSpec(403, "The reference integrity manifest does not verify."),
    "attestation.measurement_mismatch": ErrorSpec(
        403, "A measurement differs from the reference value."
    ),
    "attestation.provider_offline": ErrorSpec(
        503, "An online endorsement provider is needed but was not enabled."
    ),
    # --- appraisal policy ------------------------------------------------------------------
    "policy.invalid": ErrorSpec(400, "The appraisal policy is invalid."),
    "policy.empty": ErrorSpec(400, "The appraisal policy accepts nothing; name at least one platform."),
    "policy.refused": ErrorSpec(403, "The evidence does not satisfy the appraisal policy."),
    "policy.platform_not_allowed": ErrorSpec(403, "The policy does not accept this platform."),
    "policy.debug_forbidden": ErrorSpec(403, "Debug-enabled guests are forbidden by the policy."),
    "policy.tcb_too_low": ErrorSpec(403, "The platform TCB is below the policy minimum."),
    "policy.evidence_stale": ErrorSpec(403, "The evidence is older than the policy allows."),
    "policy.model_not_allowed": ErrorSpec(403, "The model digest is not allowed by the policy."),
    "policy.token_issuer_not_allowed": ErrorSpec(
        403, "The enclave accepts tokens from an identity provider the policy does not name."
    ),
    "policy.kbs_key_not_allowed": ErrorSpec(
        403, "The enclave trusts a key broker the policy does not name."
    ),
    "policy.speech_not_allowed": ErrorSpec(
        403, "The enclave's speech model, audio retention or sandbox is not what the policy requires."
    ),
    "policy.smt_forbidden": ErrorSpec(403, "The policy forbids SMT on the platform."),
    "policy.release_not_logged": ErrorSpec(
        403, "The enclave's build is not a release published in the policy's release log."
    ),
    "policy.measurement_revoked": ErrorSpec(
        403, "The enclave's measurement is on the relying party's revocation list."
    ),
    "policy.migration_agent_forbidden": ErrorSpec(
        403, "The policy forbids guests that allow a migration agent."
    ),
    "policy.vmpl_not_allowed": ErrorSpec(403, "The report's VMPL is not allowed by the policy."),
    "policy.host_data_mismatch": ErrorSpec(403, "The host data is not an accepted value."),
    "policy.signing_key_not_allowed": ErrorSpec(
        403, "The report's signing key kind is not allowed by the policy."
    ),
    # --- audit ---------------------------------------------------------------------------
    "audit.release_invalid": ErrorSpec(
        400, "The release statement or its proof of publication does not verify."
    ),
    "audit.proof_invalid": ErrorSpec(400, "The Merkle proof does not verify."),
    "audit.inclusion_invalid": ErrorSpec(400, "The inclusion proof does not verify."),
    "audit.consistency_invalid": ErrorSpec(400, "The consistency proof does not verify."),
    "audit.checkpoint_invalid": ErrorSpec(400, "The checkpoint is malformed."),
    "audit.checkpoint_signature_invalid": ErrorSpec(400, "The checkpoint signature does not verify."),
    "audit.cosignature_invalid": ErrorSpec(400, "A witness cosignature does not verify."),
    "audit.entry_tampered": ErrorSpec(400, "A log entry does not match the tree."),
    "audit.node_tampered": ErrorSpec(400, "A stored tree node does not match its children."),
    "audit.entry_missing": ErrorSpec(400, "The log is missing an entry."),
    "audit.index_out_of_range": ErrorSpec(404, "The log has no entry at that index."),
    "audit.receipt_invalid": ErrorSpec(400, "The receipt does not verify."),
    "audit.replay_mismatch": ErrorSpec(400, "The replayed answer does not match the recorded commitment."),
    "audit.entry_invalid": ErrorSpec(400, "The audit entry is malformed or not canonical JSON."),
    "audit.commitment_mismatch": ErrorSpec(400, "The data does not open the recorded commitment."),
    "audit.replay_engine_mismatch": ErrorSpec(
        400, "Replay needs the model and engine build recorded in the entry."
    ),
    "audit.log_conflict": ErrorSpec(409, "The log changed underneath this writer; reopen it."),
    "audit.rollback": ErrorSpec(
        400, "The log is shorter than a checkpoint it signed earlier: history was removed."
    ),
    "audit.log_inconsistent": ErrorSpec(
        500, "The stored audit log does not match its own latest signed checkpoint; the enclave "
        "will not extend it."
    ),
    "audit.commitment_key_unavailable": ErrorSpec(
        503, "The tenant's audit commitment key is not available to this enclave; its owner must "
        "register it with the key broker under a release policy this enclave meets."
    ),
    # --- identity and authorization ----------------------------------------------------------
    "auth.token_missing": ErrorSpec(401, "A bearer token is required."),
    "auth.token_malformed": ErrorSpec(401, "The token is malformed."),
    "auth.token_expired": ErrorSpec(401, "The token has expired; obtain a new one."),
    "auth.token_not_yet_valid": ErrorSpec(401, "The token is not valid yet; check clocks."),
    "auth.token_lifetime_too_long": ErrorSpec(401, "The token lifetime exceeds the allowed maximum."),
    "auth.audience_mismatch": ErrorSpec(401, "The token is not for this audience."),
    "auth.issuer_untrusted": ErrorSpec(401, "The token issuer is not trusted."),
    "auth.algorithm_forbidden": ErrorSpec(401, "The token algorithm is not allowed."),
    "auth.signature_invalid": ErrorSpec(401, "The token signature does not verify."),
    "auth.key_unknown": ErrorSpec(401, "The token signing key is unknown."),
    "auth.jwks_unavailable": ErrorSpec(
        503, "The token issuer's keys could not be fetched; retry later."
    ),
    "auth.dpop_invalid": ErrorSpec(401, "The DPoP proof is invalid for this token or request."),
    "auth.invalid_credentials": ErrorSpec(401, "The credentials are invalid."),
    "auth.forbidden": ErrorSpec(403, "The request is not permitted by policy."),
    "auth.exchange_forbidden": ErrorSpec(
        403, "This client may not obtain tokens for that user (token exchange)."
    ),
    "auth.exchange_subject_invalid": ErrorSpec(
        400, "The token exchange names no valid subject token or user."
    ),
    "auth.scope_exceeded": ErrorSpec(403, "The requested roles exceed what the user is granted."),
    "auth.break_glass_expired": ErrorSpec(403, "The break-glass grant has expired."),
    "auth.break_glass_reason_missing": ErrorSpec(400, "Break-glass access requires a stated reason."),
    "auth.rate_limited": ErrorSpec(429, "Too many requests; retry later."),
    # Shared authentication state (replay cache, API keys in PostgreSQL, issue 17) did not
    # answer: the request is refused, never let through.
    "auth.state_unavailable": ErrorSpec(
        503, "The service cannot check this request's credentials right now; retry later."
    ),
    # --- key broker ------------------------------------------------------------------------
    "kbs.not_found": ErrorSpec(404, _NOT_FOUND),
    "kbs.nonce_unknown": ErrorSpec(400, "The nonce is unknown or already used; request a new challenge."),
    "kbs.nonce_expired": ErrorSpec(400, "The nonce has expired; request a new challenge."),
    "kbs.nonce_replayed": ErrorSpec(400, "The nonce is unknown or already used; request a new challenge."),
    "kbs.ephemeral_key_missing": ErrorSpec(400, "The evidence runtime carries no ephemeral key."),
    "kbs.unauthorized": ErrorSpec(404, _NOT_FOUND),
    "kbs.conflict": ErrorSpec(409, "The resource changed concurrently; retry."),
    "kbs.unavailable": ErrorSpec(503, "The key broker is unavailable."),
    "kbs.answer_unauthenticated": ErrorSpec(
        502, "The key broker's answer is not signed by a broker this enclave trusts; "
        "check the broker keys the enclave is configured with."
    ),
    "kbs.policy_missing": ErrorSpec(
        403, "The resource has no release policy; its owner must set one before any release."
    ),
    "kbs.requester_not_allowed": ErrorSpec(
        403, "The requester identity is not allowed by the resource's release policy."
    ),
    "kbs.threshold_not_met": ErrorSpec(
        403, "Fewer key brokers than the threshold released their share of the key."
    ),
    "kbs.revoked": ErrorSpec(
        403, "The enclave's measurement, chip, TCB level or GPU is on the owner's revocation list."
    ),
    # --- attested micro-segmentation (mesh/) ------------------------------------------------
    "mesh.identity_invalid": ErrorSpec(400, "The workload identity is not medclave://TENANT/ROLE/NAME."),
    "mesh.csr_invalid": ErrorSpec(400, "The certificate request is malformed or its signature is invalid."),
    "mesh.key_not_bound": ErrorSpec(
        400, "The certificate request's key is not the key the workload's evidence binds."
    ),
    "mesh.peer_unauthenticated": ErrorSpec(
        403, "The peer presented no valid workload certificate from this mesh's CA."
    ),
    "mesh.peer_not_allowed": ErrorSpec(
        403, "The segmentation policy does not allow this workload to reach this service."
    ),
    "mesh.peer_revoked": ErrorSpec(403, "The peer workload's identity is revoked."),
    "mesh.peer_unexpected": ErrorSpec(
        502, "The peer is not the workload this connection was for (a balancer routed it "
        "elsewhere); nothing was sent."
    ),
    "mesh.handshake_failed": ErrorSpec(
        502, "The mutual TLS handshake with the peer service failed."
    ),
    "mesh.denylist_stale": ErrorSpec(
        503, "The mesh deny list could not be refreshed in time; peers are refused until it is."
    ),
    # --- sealed models ---------------------------------------------------------------------
    "model.manifest_invalid": ErrorSpec(400, "The sealed model manifest is invalid."),
    "model.chunk_invalid": ErrorSpec(400, "A sealed model chunk is missing, reordered or altered."),
    "model.truncated": ErrorSpec(400, "The sealed model is truncated."),
    "model.digest_mismatch": ErrorSpec(400, "The model digest does not match its manifest."),
    "model.engine_mismatch": ErrorSpec(
        500, "The engine serves a model other than the measured one."
    ),
    "model.key_invalid": ErrorSpec(400, "The model key does not open this sealed model."),
    "model.unsupported_platform": ErrorSpec(
        500, "Sealed models open only into memory (Linux memfd); this platform has none."
    ),
    # --- enclave and client ----------------------------------------------------------------
    "enclave.not_ready": ErrorSpec(503, "The enclave is not ready yet."),
    "enclave.revoked": ErrorSpec(
        503, "The enclave was revoked by its key broker and has dropped its keys; it serves nothing."
    ),
    "enclave.engine_failed": ErrorSpec(500, "The inference engine failed."),
    "enclave.engine_unavailable": ErrorSpec(
        503, "The inference engine is unreachable; retry later."
    ),
    "enclave.bad_request": ErrorSpec(400, "The inference request is invalid."),
    "enclave.context_length_exceeded": ErrorSpec(
        400, "The prompt and the completion it asks for do not fit the model's context; "
        "shorten the messages or lower max_tokens."
    ),
    "enclave.model_not_found": ErrorSpec(404, "The model does not exist here."),
    "enclave.no_route": ErrorSpec(404, "The enclave serves no such path."),
    "enclave.method_not_allowed": ErrorSpec(405, "The path does not take this method."),
    "enclave.speech_unavailable": ErrorSpec(
        503, "Speech recognition is not enabled in this enclave."
    ),
    "enclave.busy": ErrorSpec(
        429, "Too many inferences are in progress; retry after the Retry-After interval."
    ),
    "enclave.queue_full": ErrorSpec(
        429, "Too many requests are waiting for the engine; retry after the Retry-After interval."
    ),
    # Answered to nobody (the client had gone): it names the case in the operator's log.
    "enclave.client_gone": ErrorSpec(499, "The client left before its answer was ready."),
    # The same for a response another user owns: its existence is not disclosed.
    "enclave.response_not_found": ErrorSpec(
        404, "The previous response does not exist, has expired, or is not yours."
    ),
    # --- sealed state (enclave/sealing): conversations only their owner reopens -----------
    # Another user's conversation, one that does not exist, and one the share given does not
    # open all read alike: existence is not disclosed.
    "sealing.not_found": ErrorSpec(404, _NOT_FOUND),
    "sealing.share_missing": ErrorSpec(
        400, "Send the client share your app holds for sealed conversations (32 bytes)."
    ),
    "sealing.integrity_failed": ErrorSpec(
        409, "The sealed conversation failed its integrity check: a stored turn was dropped, "
        "reordered, replayed or altered."
    ),
    "sealing.root_unavailable": ErrorSpec(
        503, "The tenant's sealing root is not available to this enclave; retry later."
    ),
    "sealing.too_large": ErrorSpec(413, "The conversation has reached its size limit."),
    "client.attestation_refused": ErrorSpec(
        502, "The server's attestation was refused; no data was sent."
    ),
    "client.key_changed": ErrorSpec(502, "The server's key changed; re-attestation failed."),
    "client.reattestation_failed": ErrorSpec(
        503, "The enclave failed its latest re-attestation; no request is sent to it until it "
        "passes again (see /medclave/status)."
    ),
    "client.upstream_failed": ErrorSpec(502, "The upstream enclave could not be reached."),
    "client.upstream_lost": ErrorSpec(
        502, "The enclave replica failed after the request was sent; it was not retried, as it "
        "may have been served (see the audit log)."
    ),
    "client.no_replica": ErrorSpec(
        503, "No attested enclave replica could be reached; nothing was sent (see "
        "/medclave/status)."
    ),
    "client.idp_unavailable": ErrorSpec(
        502, "The proxy could not obtain a token from the identity provider; retry later."
    ),
    "client.busy": ErrorSpec(429, "The proxy is serving as many requests as it allows; retry."),
    # --- confidential retrieval over FHIR records ----------------------------------------------
    "records.invalid_resource": ErrorSpec(
        400, "A FHIR resource is invalid (its path is in the detail); nothing of the request "
        "was stored."
    ),
    "records.reference_unresolved": ErrorSpec(
        400, "A FHIR reference cannot be resolved; nothing of the request was stored."
    ),
    "records.store_tampered": ErrorSpec(
        500, "The encrypted records store failed authentication; it was not loaded."
    ),
    "records.store_conflict": ErrorSpec(
        409, "Another enclave replica changed this tenant's records since this one loaded them; "
        "nothing of the request was stored. Retry on the replica that ingests, or after a "
        "restart of this one."
    ),
    "records.key_unavailable": ErrorSpec(
        503, "The tenant's records data key was not released; retry later."
    ),
    "service.start_failed": ErrorSpec(503, "The service did not start; check its log."),
    "service.alert_undelivered": ErrorSpec(
        503, "An access alert could not be delivered; check the alert sink (webhook or file)."
    ),
    "service.schema_newer": ErrorSpec(
        503, "The database was written by a newer Medclave release; run that release or restore "
        "the backup taken before upgrading (docs/operations.md)."
    ),
    # --- federated learning ----------------------------------------------------------------
    "fl.node_key_mismatch": ErrorSpec(
        403, "The evidence binds another node key than the one presented; no admission."
    ),
    "fl.nonce_unknown": ErrorSpec(
        400, "The federation nonce is unknown, expired or already used; request a new one."
    ),
    "fl.site_unknown": ErrorSpec(404, "The site is not a member of this federation."),
    "fl.update_unbound": ErrorSpec(
        403, "The evidence does not bind this round's nonce and this update's digest."
    ),
    "fl.site_excluded": ErrorSpec(
        403, "The site was excluded from the federation after failing verification."
    ),
    "fl.aggregator_refused": ErrorSpec(
        502, "The aggregator's attestation was refused; the site did not train."
    ),
    "fl.run_failed": ErrorSpec(500, "The federated run failed; check the run's log."),
    "fl.too_few_sites": ErrorSpec(
        409, "Too few verified sites remain for secure aggregation to proceed."
    ),
    "internal": ErrorSpec(500, "Internal error."),
}


class MedclaveError(Exception):
    """Base of every refusal. ``code`` must be in :data:`CATALOGUE` under ``family``."""

    family: ClassVar[tuple[str, ...]] = ()

    def __init__(self, code: str, detail: str | None = None, **context: Any) -> None:
        if code not in CATALOGUE:
            raise ValueError(f"unknown error code {code!r}: add it to medclave.errors.CATALOGUE")
        if self.family and code.split(".", 1)[0] not in self.family:
            raise ValueError(f"{type(self).__name__} cannot carry code {code!r}")
        self.code = code
        self.detail = detail or CATALOGUE[code].message
        self.context = context
        super().__init__(f"{code}: {self.detail}")

    @property
    def status(self) -> int:
        return CATALOGUE[self.code].status

    @property
    def public_message(self) -> str:
        return CATALOGUE[self.code].message

    def to_public(self) -> dict[str, dict[str, str]]:
        """The body a service returns: never the detail, which may name internal state."""
        return {"error": {"code": self.code, "message": self.public_message}}

    def to_dict(self) -> dict[str, str]:
        """For the CLI and local tools, where the caller owns the data: detail included."""
        return {"code": self.code, "message": self.detail}


class InputError(MedclaveError):
    family = ("input", "config")


class CryptoError(MedclaveError):
    family = ("crypto", "protocol")


class AttestationError(MedclaveError):
    """Evidence could not be parsed or did not verify.

    ``checks`` holds the verification steps done before the failure, the last one failed.
    """

    family = ("attestation",)

    def __init__(
        self, code: str, detail: str | None = None, *, checks: tuple[Any, ...] = (), **context: Any
    ) -> None:
        super().__init__(code, detail, **context)
        self.checks = checks


class PolicyError(MedclaveError):
    """Appraisal refused the evidence. ``violations`` lists every broken rule, not only the first."""

    # attestation.measurement_mismatch is an appraisal refusal too (docs/architecture.md names it).
    family = ("policy", "attestation")

    def __init__(
        self, code: str, detail: str | None = None, *, violations: tuple[Any, ...] = (),
        **context: Any,
    ) -> None:
        super().__init__(code, detail, **context)
        self.violations = violations


class AuditError(MedclaveError):
    family = ("audit",)


class AuthError(MedclaveError):
    family = ("auth",)


class KbsError(MedclaveError):
    family = ("kbs",)


class ModelError(MedclaveError):
    family = ("model",)


class EnclaveError(MedclaveError):
    family = ("enclave", "internal")


class SealingError(MedclaveError):
    family = ("sealing",)


class ClientError(MedclaveError):
    family = ("client",)


class RecordsError(MedclaveError):
    family = ("records",)


class ServiceError(MedclaveError):
    family = ("service",)


class FederationError(MedclaveError):
    family = ("fl",)


class MeshError(MedclaveError):
    family = ("mesh",)
