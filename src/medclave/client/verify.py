"""What the client trusts, and why: verify an enclave's evidence and appraise it, locally.

One function, :func:`verify_enclave`, turns the bytes the operator's network handed back into a
:class:`VerifiedEnclave`, or raises. In order: the bundle parses (bounded); the hardware
evidence verifies to a pinned root (AMD, Intel, NVIDIA; sim only with its fingerprint given);
the bundle answers *our* nonce (a replayed answer is stale); report_data binds the nonce and the
whole runtime, hence the OHTTP key configuration (a key swapped on the way is refused as
``attestation.binding_mismatch``); every GPU in the bundle verifies to NVIDIA's root and answered
the SPDM nonce derived from that report_data; the caller's policy accepts the platform,
measurement, TCB, GPUs (``require_gpu``, ``[platform.nvidia]`` rules) and model digest. Only
then is the key configuration pinned and a prompt may be encapsulated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from medclave.attestation import Verification, verify_bundle
from medclave.attestation.collateral import Collateral, apply_collateral
from medclave.attestation.policy import AppraisalPolicy, appraise, gpu_claims
from medclave.audit.note import ALG_ED25519, NoteVerifier
from medclave.audit.release import check_release
from medclave.crypto.ohttp import KeyConfig
from medclave.errors import AttestationError, PolicyError
from medclave.protocol.evidence import MAX_BUNDLE_BYTES, EvidenceBundle
from medclave.protocol.inference import EnclaveRuntime

log = logging.getLogger("medclave.client")

MAX_ATTESTATION_BYTES = MAX_BUNDLE_BYTES + 512 * 1024
SIM_WARNING = ("SIM: the enclave attested on the software 'sim' platform. It is NOT a real TEE "
               "and protects NOTHING; accepted only because the policy names sim and its root "
               "was pinned.")


@dataclass(frozen=True)
class VerifiedEnclave:
    """An attested enclave: the key to encapsulate to, and what the evidence proved."""

    platform: str
    secure: bool
    measurement: str | None
    runtime: EnclaveRuntime
    key_config: KeyConfig
    verified_at: datetime
    nonce: str
    evidence_sha256: str
    tcb_status: str
    policy_name: str
    policy_digest: str
    # One summary per GPU verified beside the CPU report, bound to it (verifier.verify_bundle).
    gpus: tuple[dict[str, Any], ...] = ()
    release: str | None = None  # the published release the build was found in, if asked

    @property
    def model_digest(self) -> str:
        return self.runtime.model_digest

    def audit_verifier(self) -> NoteVerifier:
        """The key the enclave signs audit checkpoints with, as its attestation states it."""
        return NoteVerifier(self.runtime.audit_origin, self.runtime.audit_key(), ALG_ED25519)

    def summary(self) -> dict[str, Any]:
        """What ``/medclave/status`` and the demo show."""
        out: dict[str, Any] = {
            "platform": self.platform,
            "secure": self.secure,
            "measurement": self.measurement,
            "model_id": self.runtime.model_id,
            "model_digest": self.runtime.model_digest,
            "engine": self.runtime.engine,
            "engine_build": self.runtime.engine_build,
            "authorization_policy_digest": self.runtime.policy_digest,
            "kbs_keys": list(self.runtime.kbs_keys),
            "token_issuers": [dict(t) for t in self.runtime.token_issuers],
            "ohttp_key_id": self.key_config.key_id,
            "tcb_status": self.tcb_status,
            "evidence_sha256": self.evidence_sha256,
            "appraisal_policy": {"name": self.policy_name, "digest": self.policy_digest},
            "verified_at": self.verified_at.isoformat(),
        }
        if self.runtime.speech_model_digest is not None:
            out["speech"] = {"model_id": self.runtime.speech_model_id,
                             "model_digest": self.runtime.speech_model_digest,
                             "engine_build": self.runtime.speech_engine_build,
                             "audio_retention": self.runtime.audio_retention,
                             "sandbox": self.runtime.speech_sandbox}
        if self.gpus:
            out["gpus"] = [dict(g) for g in self.gpus]
        if self.release is not None:
            out["release"] = self.release
        if not self.secure:
            out["warning"] = SIM_WARNING
        return out


def parse_attestation(data: bytes) -> EvidenceBundle:
    if len(data) > MAX_ATTESTATION_BYTES:
        raise AttestationError("attestation.malformed", "attestation response too large")
    try:
        return EvidenceBundle.model_validate_json(data)
    except ValidationError as exc:
        raise AttestationError("attestation.malformed", "the response is not an evidence bundle"
                               ) from exc


def _measurement(verification: Verification) -> str | None:
    claims = verification.claims
    value = claims.get("measurement")
    if isinstance(value, str):
        return value
    for key in ("mr_td", "mrtd"):
        if isinstance(claims.get(key), str):
            return str(claims[key])
    return None


def verify_enclave(data: bytes, *, nonce: bytes, policy: AppraisalPolicy, now: datetime,
                   nonce_issued: datetime | None = None,
                   sim_roots: frozenset[str] = frozenset(),
                   trusted_roots: frozenset[str] | None = None,
                   collateral: Collateral | None = None) -> VerifiedEnclave:
    """Verify and appraise; raises ``attestation.*`` or ``policy.*``, never returns a refusal.

    The evidence answers ``nonce``, so it is no older than ``nonce_issued``: that is the time a
    policy's ``max_evidence_age_seconds`` is checked against (unset: the policy refuses)."""
    bundle = parse_attestation(data)
    verification = verify_bundle(bundle, now=now, expected_nonce=nonce, sim_roots=sim_roots,
                                 trusted_roots=trusted_roots)
    # The relying party's own, changing view (TCB baseline, revoked measurements).
    verification = apply_collateral(verification, collateral)
    runtime = EnclaveRuntime.from_runtime(dict(bundle.runtime))
    key_config = runtime.key_config()
    runtime.audit_key()
    release = None
    if policy.release_log is not None:
        # The release log replaces a list of measurements: the build must be published.
        release = check_release(policy.release_log, platform=verification.platform,
                                measurement=_measurement(verification),
                                runtime=dict(bundle.runtime)).release
    appraisal = appraise(verification, policy, now=now, model_digest=runtime.model_digest,
                         evidence_time=nonce_issued, kbs_keys=list(runtime.kbs_keys),
                         token_issuers=[dict(t) for t in runtime.token_issuers],
                         release_proven=release is not None)
    check_speech(policy, runtime)
    if not verification.secure:
        log.warning(SIM_WARNING)
    return VerifiedEnclave(
        platform=verification.platform,
        secure=verification.secure,
        measurement=_measurement(verification),
        runtime=runtime,
        key_config=key_config,
        verified_at=now,
        nonce=bundle.nonce,
        evidence_sha256=verification.evidence_sha256,
        tcb_status=verification.tcb_status,
        policy_name=appraisal.policy_name,
        policy_digest=appraisal.policy_digest,
        gpus=tuple(_gpu_summary(g) for g in gpu_claims(verification)),
        release=release,
    )


def check_speech(policy: AppraisalPolicy, runtime: EnclaveRuntime) -> None:
    """The policy's speech requirements (issue 14) against what the runtime states: each set
    requirement must be stated exactly, so an enclave that states nothing is refused."""
    wrong: list[str] = []
    if policy.audio_retention is not None and runtime.audio_retention != policy.audio_retention:
        wrong.append(f"audio_retention is {runtime.audio_retention!r}")
    if policy.speech_sandbox is not None and runtime.speech_sandbox != policy.speech_sandbox:
        wrong.append(f"speech_sandbox is {runtime.speech_sandbox!r}")
    if policy.speech_model_digests and (runtime.speech_model_digest
                                        not in policy.speech_model_digests):
        wrong.append(f"speech model {runtime.speech_model_digest!r} is not allowed")
    if wrong:
        raise PolicyError("policy.speech_not_allowed", "; ".join(wrong))


def _gpu_summary(claims: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("driver_version", "vbios_version", "rim_kinds", "secure", "evidence_sha256")
    return {k: claims[k] for k in keys if k in claims}
