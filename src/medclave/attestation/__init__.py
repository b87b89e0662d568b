"""Attestation: evidence parsing and verification per platform, the report_data binding,
appraisal policy and attestation results. A pure library: no web framework, database driver or
HTTP client (the online fetchers in :mod:`.online` are loaded only by whoever builds one).

The public surface is what is re-exported here; other layers and applications import these
names. The rest (``core``, ``registry``, the platform packages ``sevsnp``, ``tdx``, ``nvidia``,
``vtpm`` and ``sim``, ``cache``, ``x509chain``, ``platform_rules``) is the library's inside:
stable enough to read and test, not an interface. Two words, used one way: *verify* checks
signatures, chains and collateral (raising :class:`medclave.errors.AttestationError`);
*appraise* applies a relying party's policy to what verified (RATS, RFC 9334).

    verification = verify_bundle(bundle, now=now, expected_nonce=nonce)
    appraise(verification, load_policy(path), now=now)  # raises PolicyError listing every rule
"""

from medclave.attestation.binding import gpu_nonce_for, report_data_for, verify_binding
from medclave.attestation.core import Check, Verification, VerifyOptions, Violation
from medclave.attestation.ear import issue_ear, verify_ear
from medclave.attestation.policy import (
    Appraisal,
    AppraisalPolicy,
    appraisal_of,
    appraise,
    default_policy,
    load_policy,
    parse_policy,
)
from medclave.attestation.providers import EndorsementProvider
from medclave.attestation.registry import evidence_digest
from medclave.attestation.verifier import detect, parse_bundle, verify_bundle, verify_raw

__all__ = [
    "Appraisal",
    "AppraisalPolicy",
    "Check",
    "EndorsementProvider",
    "Verification",
    "VerifyOptions",
    "Violation",
    "appraisal_of",
    "appraise",
    "default_policy",
    "detect",
    "evidence_digest",
    "gpu_nonce_for",
    "issue_ear",
    "load_policy",
    "parse_bundle",
    "parse_policy",
    "report_data_for",
    "verify_binding",
    "verify_bundle",
    "verify_ear",
    "verify_raw",
]
