"""One entry point over every platform: raw evidence or a Medclave evidence bundle in, a
:class:`Verification` out. The CLI, the key broker and the client SDK all go through here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from medclave.attestation import registry
from medclave.attestation.binding import gpu_nonce_for, verify_binding
from medclave.attestation.core import (
    Check,
    Endorsements,
    Verification,
    VerifyOptions,
    require_size,
)
from medclave.attestation.x509chain import load_certificates
from medclave.errors import AttestationError, MedclaveError
from medclave.protocol.evidence import EvidenceBundle, GpuEvidence

BUNDLE = "bundle"


def detect(data: bytes) -> str:
    """The platform name of raw evidence, or ``"bundle"`` for a Medclave evidence bundle."""
    require_size(data, maximum=4 * 1024 * 1024)
    if _looks_like_bundle(data):
        return BUNDLE
    return registry.detect(data)


def _looks_like_bundle(data: bytes) -> bool:
    head = data.lstrip()[:1]
    if head != b"{":
        return False
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(obj, dict) and {"platform", "evidence", "runtime"} <= obj.keys()


def parse_bundle(data: bytes) -> EvidenceBundle:
    try:
        return EvidenceBundle.model_validate_json(data)
    except ValidationError as exc:
        raise AttestationError("attestation.malformed", f"evidence bundle: {exc.errors()[0]['msg']}") from exc


def split_trust_files(blobs: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The caller's ``--cert`` files as (certificates, keys): JSON (a JWKS, a ``tastore.json``)
    and PEM public keys are trust-anchor keys (``Endorsements.keys``), anything else must be
    an X.509 certificate. Only for files the relying party itself names, never for evidence."""
    certs: list[bytes] = []
    keys: list[bytes] = []
    for blob in blobs:
        head = blob.lstrip()[:1]
        if b"CERTIFICATE-----" not in blob and (head in (b"{", b"[")
                                                 or b"-----BEGIN PUBLIC KEY-----" in blob):
            keys.append(blob)
        else:
            certs.append(blob)
    return certs, keys


def verify_raw(
    data: bytes,
    *,
    now: datetime,
    platform: str | None = None,
    certificates: Sequence[bytes] = (),
    collateral: Sequence[bytes] = (),
    keys: Sequence[bytes] = (),
    nonce: bytes | None = None,
    trusted_roots: frozenset[str] | None = None,
    sim_roots: frozenset[str] = frozenset(),
    online: Any = None,
) -> Verification:
    """Verify raw hardware evidence. ``nonce`` is checked by the platform where it carries one
    (NVIDIA, TPM, GCE vTPM, Nitro, CCA, Confidential Space); for SNP, TDX and SGX it must equal
    report_data (zero-padded to 64 bytes)."""
    if nonce is not None and not 1 <= len(nonce) <= 64:
        # An empty nonce would "match" any all-zero report_data: freshness must be claimed, not implied.
        raise AttestationError("attestation.nonce_mismatch", "a nonce is 1 to 64 bytes")
    name = platform or registry.detect(data)
    certs = tuple(c for blob in certificates for c in load_certificates(blob))
    options = VerifyOptions(
        now=now,
        endorsements=Endorsements(certificates=certs, collateral=tuple(collateral),
                                  keys=tuple(keys)),
        trusted_roots=trusted_roots,
        sim_roots=sim_roots,
        expected_nonce=nonce,
        online=online,
    )
    result = registry.get(name).verify(data, options)
    if result.platform != name:
        # A module serves several platforms (vtpm, gcp) and reads the evidence for what it is:
        # evidence declared as one platform (a bundle's "platform") is never accepted as another.
        raise AttestationError("attestation.unknown_platform",
                               f"the evidence is {result.platform}, not {name}",
                               checks=(*result.checks, Check("platform", False,
                                                             f"declared {name}")))
    if nonce is not None and "report_data" in result.claims and name in ("sev-snp", "tdx", "sgx",
                                                                          "sim"):
        expected = nonce.ljust(64, b"\0")
        if not hmac.compare_digest(bytes.fromhex(result.claims["report_data"]), expected):
            raise AttestationError(
                "attestation.nonce_mismatch", "report_data does not carry the expected nonce",
                checks=(*result.checks, Check("nonce", False, "report_data != nonce")),
            )
        result = replace(result, checks=(*result.checks, Check("nonce", True, "report_data = nonce")))
    return result


def verify_bundle(
    bundle: EvidenceBundle,
    *,
    now: datetime,
    expected_nonce: bytes | None,
    certificates: Sequence[bytes] = (),
    collateral: Sequence[bytes] = (),
    keys: Sequence[bytes] = (),
    trusted_roots: frozenset[str] | None = None,
    sim_roots: frozenset[str] = frozenset(),
    online: Any = None,
) -> Verification:
    """Verify the hardware evidence in ``bundle``, then that its report_data binds the bundle's
    nonce and runtime (docs/architecture.md, "Evidence bundle"), then every GPU beside it.
    ``expected_nonce`` is the nonce this relying party issued; None only for offline inspection,
    where freshness is not claimed.

    Each ``bundle.gpu`` entry is verified by the NVIDIA verifier with its own certificates and
    collateral, and with ``expected_nonce = SHA-256("medclave-gpu-v1" || report_data)``
    (:func:`~medclave.attestation.binding.gpu_nonce_for`): the GPU answered a challenge only this
    CPU report could have posed. A GPU that fails refuses the whole bundle with the NVIDIA code;
    its claims go in ``claims["gpu"]`` (a list), its checks in as ``gpu[i] ...``, and ``secure``
    holds only when the CPU and every GPU chain to their vendors' roots."""
    try:
        raw = bundle.evidence_bytes()
        bundle_nonce = bytes.fromhex(bundle.nonce)
        coll = [*collateral, *(base64.b64decode(c, validate=True) for c in bundle.endorsements.collateral)]
    except (binascii.Error, ValueError) as exc:
        raise AttestationError("attestation.malformed", "bundle field is not valid base64/hex") from exc
    certs = [*certificates, *(c.encode() for c in bundle.endorsements.certificates)]
    # ``keys`` are the caller's alone: the bundle's certificates stay X.509 (verify_raw refuses
    # anything else), so an enclave cannot hand in the key its own evidence is checked against.
    result = verify_raw(raw, now=now, platform=bundle.platform, certificates=certs, collateral=coll,
                        keys=keys, trusted_roots=trusted_roots, sim_roots=sim_roots,
                        online=online)
    checks = list(result.checks)
    if expected_nonce is not None and not hmac.compare_digest(expected_nonce, bundle_nonce):
        checks.append(Check("nonce", False, "bundle nonce differs from the one issued"))
        raise AttestationError("attestation.nonce_mismatch", "the bundle answers another nonce",
                               checks=tuple(checks))
    report_data = _report_data(result)
    try:
        verify_binding(report_data, bundle_nonce, bundle.runtime)
    except MedclaveError as exc:
        checks.append(Check("binding", False, exc.detail))
        raise AttestationError("attestation.binding_mismatch", exc.detail, checks=tuple(checks)) from exc
    checks.append(Check("binding", True, "report_data = SHA-512(label || nonce || SHA-256(runtime))"))
    gpus = [_verify_gpu(i, entry, report_data, now=now, trusted_roots=trusted_roots, online=online,
                        checks=checks) for i, entry in enumerate(bundle.gpu)]
    if len({g.evidence_digest for g in gpus}) != len(gpus):
        # One GPU's answer listed twice would count as two attested GPUs; compared by signed
        # bytes, as (r, n - s) or a trailing byte makes a second byte form of the same answer.
        checks.append(Check("gpu", False, "the same GPU evidence appears twice"))
        raise AttestationError("attestation.malformed", "the same GPU evidence appears twice",
                               checks=tuple(checks))
    claims = {**result.claims, "runtime": dict(bundle.runtime), "nonce": bundle.nonce}
    if gpus:
        claims["gpu"] = [{**g.claims, "secure": g.secure, "evidence_sha256": g.evidence_sha256,
                          "evidence_digest": g.evidence_digest} for g in gpus]
    secure = result.secure and all(g.secure for g in gpus)
    return replace(result, claims=claims, checks=tuple(checks), secure=secure)


def _verify_gpu(index: int, entry: GpuEvidence, report_data: bytes, *, now: datetime,
                trusted_roots: frozenset[str] | None, online: Any,
                checks: list[Check]) -> Verification:
    """One GPU entry, its SPDM nonce bound to ``report_data``; appends its checks to ``checks``."""
    prefix = f"gpu[{index}]"
    try:
        raw = base64.b64decode(entry.evidence, validate=True)
        collateral = [base64.b64decode(c, validate=True) for c in entry.collateral]
    except (binascii.Error, ValueError) as exc:
        checks.append(Check(f"{prefix} evidence", False, "not valid base64"))
        raise AttestationError("attestation.malformed", f"{prefix}: evidence is not valid base64",
                               checks=tuple(checks)) from exc
    nonce = gpu_nonce_for(report_data)
    try:
        # platform pinned to nvidia: an entry is never sniffed into another verifier.
        result = verify_raw(raw, now=now, platform=entry.platform,
                            certificates=[c.encode() for c in entry.certificates],
                            collateral=collateral, nonce=nonce, trusted_roots=trusted_roots,
                            online=online)
    except AttestationError as exc:
        checks.extend(_prefixed(prefix, exc.checks))
        if not checks or checks[-1].ok:
            checks.append(Check(prefix, False, exc.detail))
        raise AttestationError(exc.code, f"{prefix}: {exc.detail}", checks=tuple(checks)) from exc
    checks.extend(_prefixed(prefix, result.checks))
    checks.append(Check(f"{prefix} binding", True,
                        "SPDM nonce = SHA-256(\"medclave-gpu-v1\" || report_data)"))
    return result


def _prefixed(prefix: str, checks: Sequence[Check]) -> list[Check]:
    return [Check(f"{prefix} {c.name}", c.ok, c.detail) for c in checks]


def _report_data(result: Verification) -> bytes:
    claims = result.claims
    hw = claims.get("hardware")
    value = claims.get("report_data") or (hw.get("report_data") if isinstance(hw, dict) else None)
    if not isinstance(value, str):
        raise AttestationError("attestation.binding_mismatch",
                               f"{result.platform} evidence has no report_data")
    return bytes.fromhex(value)
