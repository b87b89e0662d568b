"""The broker's checks on what a release request carries: the nonce, the ephemeral key, a
new secret's size, and the appraisal of verified evidence against a release policy (the
appraisal policy plus the broker's own rules: model digests, requesters)."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from medclave.attestation.core import Verification, Violation
from medclave.attestation.policy import appraisal_of, raise_refusal
from medclave.audit.release import check_release
from medclave.crypto import hpke
from medclave.errors import CryptoError, InputError, KbsError
from medclave.kbs.models import MAX_SECRET_BYTES, ReleasePolicy

NONCE_BYTES = 32
GENERATED_SECRET_BYTES = 32


def nonce_bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        raw = value
    else:
        try:
            raw = bytes.fromhex(value)
        except ValueError as exc:
            raise InputError("input.malformed", "nonce is not hex") from exc
    if len(raw) != NONCE_BYTES:
        raise KbsError("kbs.nonce_unknown", f"a broker nonce is {NONCE_BYTES} bytes")
    return raw


def ephemeral_key(runtime: Mapping[str, Any]) -> bytes:
    value = runtime.get("ephemeral_key")
    if not isinstance(value, str) or not value:
        raise KbsError("kbs.ephemeral_key_missing")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("crypto.bad_key", "ephemeral_key is not base64") from exc
    if len(raw) != hpke.NPK:
        raise CryptoError("crypto.bad_key", f"ephemeral_key is not a {hpke.NPK}-byte X25519 key")
    return raw


def new_secret(value: bytes | None) -> bytes:
    if value is None:
        return os.urandom(GENERATED_SECRET_BYTES)
    if not 1 <= len(value) <= MAX_SECRET_BYTES:
        raise InputError(
            "input.too_large" if value else "input.missing",
            f"a secret is 1 to {MAX_SECRET_BYTES} bytes",
        )
    return value


def appraise(
    verification: Verification, policy: ReleasePolicy, runtime: Mapping[str, Any], now: datetime,
    *, evidence_time: datetime,
) -> None:
    """Every rule of the appraisal policy plus the broker's own (model digests, requesters)."""
    model = runtime.get("model_digest")
    model_digest = model.lower() if isinstance(model, str) else None
    rule = policy.appraisal.release_log
    if rule is not None:  # the build must be a published release (audit/release.py)
        claims = verification.claims
        measurement = claims.get("measurement", claims.get("mr_td"))
        check_release(rule, platform=verification.platform,
                      measurement=measurement if isinstance(measurement, str) else None,
                      runtime=runtime)
    result = appraisal_of(verification, policy.appraisal, now=now, model_digest=model_digest,
                      evidence_time=evidence_time, kbs_keys=runtime.get("kbs_keys"),
                      token_issuers=runtime.get("token_issuers"),
                      release_proven=rule is not None)
    violations = list(result.violations)
    if policy.model_digests and model_digest not in policy.model_digests:
        violations.append(
            Violation(
                "policy.model_not_allowed",
                "model_digest",
                f"model {model_digest or '(none)'} is not released this key",
            ).to_dict()
        )
    if violations:
        raise_refusal(violations)
    requester = runtime.get("requester")
    if policy.requesters and requester not in policy.requesters:
        raise KbsError(
            "kbs.requester_not_allowed", f"requester {requester!r} is not in the release policy"
        )
