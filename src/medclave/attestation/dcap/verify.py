"""DCAP quote verification shared by SGX and TDX: signatures, the PCK chain and the collateral
(go-tdx-guest ``verify``; Intel's QVL for SGX).

The steps, as numbered in the checks a caller sees, follow Intel's "ECDSA Quote Library API"
(quote format, Appendix A; the verification flow of its Quote Verification Library, §4.1.2.4)
and the "TDX DCAP Quoting Library API" (Appendix A) for TDX:

0. parse the quote, bounded by its length fields (the platform's ``abi``);
1. the PCK chain of the certification data (type 5, nested in type 6 for v4+ quotes) leads from
   the PCK leaf through the Intel SGX PCK Platform/Processor CA to the Intel SGX Root CA, pinned
   by fingerprint, valid at ``options.now``, and not revoked by any supplied PCK or root CRL;
2. the QE report is signed by the PCK leaf key (ECDSA P-256/SHA-256);
3. QE report_data = SHA-256(attestation key || QE authentication data) || 32 zero bytes: the QE
   vouches for the attestation key; without QE identity collateral the QE must be Intel's QE
   for the platform (:class:`Profile`) by its pinned identity (MRSIGNER, ISVPRODID, not DEBUG);
4. the quote signature by the attestation key covers the header and the body;
5. with collateral: the tcbInfo and QE identity are signed by the Intel SGX TCB Signing
   certificate chained to the same root, current at ``options.now``, for this platform (FMSPC,
   PCE-ID of the PCK certificate) and of this platform's kind (tcbInfo id "SGX"/"TDX", QE
   identity "QE"/"TD_QE"); the TCB level (and for TDX the module) and the QE identity are then
   matched (``tcb``) into one TCB status.

Without collateral the TCB status is "unknown". No matching TCB level is not an error here:
it is reported as "NoMatch", which the default appraisal policy refuses.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from medclave.attestation.core import CheckLog, Verification, VerifyOptions, sha256_hex
from medclave.attestation.dcap import collateral, tcb
from medclave.attestation.dcap.collateral import CollateralSet, SignedDocument
from medclave.attestation.dcap.pck import PckTcb, pck_tcb
from medclave.attestation.dcap.pcs import TcbInfo
from medclave.attestation.dcap.report import ATTRIBUTE_DEBUG, EnclaveReport
from medclave.attestation.x509chain import MAX_CHAIN_LENGTH, fingerprint, verify_chain
from medclave.errors import AttestationError, InputError
from medclave.util.lru import Lru

# Intel SGX Root CA (P-256, valid 2018-05-21..2049-12-31): SHA-256 of its DER encoding, as
# published in Intel's "Intel SGX PCK Certificate and CRL Profile" and go-tdx-guest.
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
TRUSTED_ROOTS: frozenset[str] = frozenset({INTEL_SGX_ROOT_CA_SHA256})


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_MAX_POOL = 32


class DcapQuote(Protocol):
    """What verification reads of a parsed SGX or TDX quote."""

    @property
    def signed(self) -> bytes: ...
    @property
    def signature(self) -> bytes: ...
    @property
    def attestation_key(self) -> bytes: ...
    @property
    def qe_report(self) -> EnclaveReport: ...
    @property
    def qe_report_signature(self) -> bytes: ...
    @property
    def qe_auth_data(self) -> bytes: ...
    @property
    def pck_chain_pem(self) -> bytes: ...


@dataclass(frozen=True)
class Profile:
    """What differs between SGX and TDX quotes: the parser, the collateral kinds and Intel's
    Quoting Enclave for the platform (pinned for quotes verified without QE identity)."""

    name: str
    parse: Callable[[bytes], Any]
    describe: Callable[[Any], str]
    tcb_info_id: str  # "SGX" | "TDX"
    qe_identity_id: str  # "QE" | "TD_QE"
    qe_mrsigner: bytes
    qe_isvprodid: int
    match: Callable[[TcbInfo, PckTcb, Any], tcb.TcbMatch]


@dataclass(frozen=True)
class QuoteVerification:
    """A quote whose every check passed: what ``sgx``, ``tdx`` and the vTPM flow build on."""

    quote: Any
    pck: PckTcb
    chain: tuple[x509.Certificate, ...]
    tcb_status: str
    advisory_ids: tuple[str, ...]
    revocation_checked: bool
    collateral_checked: bool


# Parsed PCK chains by SHA-256 of their PEM, PCK extensions by leaf fingerprint, and the
# (document digest, signature, signer fingerprint) triples whose signature verified. None of
# them depends on the time, which is checked again on every call.
_CHAINS: Lru[str, tuple[x509.Certificate, ...]] = Lru(256)
_PCK: Lru[str, PckTcb] = Lru(256)
_DOC_SIGNATURES: Lru[str, bool] = Lru(256)


def clear_caches() -> None:
    """Forget every memoised parse and signature (benchmarks measure the cold path with it)."""
    _CHAINS.clear()
    _PCK.clear()
    _DOC_SIGNATURES.clear()
    collateral.clear_cache()


def _der_signature(raw: bytes) -> bytes:
    """Intel's raw r||s (32 bytes each, big-endian) as the DER that ``cryptography`` takes."""
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _ecdsa_ok(key: Any, signature: bytes, message: bytes) -> bool:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    try:
        key.verify(_der_signature(signature), message, _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


def pck_chain(quote: DcapQuote) -> tuple[x509.Certificate, ...]:
    """The PCK chain carried in the quote, leaf first (parsed once per distinct PEM)."""
    key = hashlib.sha256(quote.pck_chain_pem).hexdigest()
    chain: tuple[x509.Certificate, ...] | None = _CHAINS.get(key)
    if chain is None:
        pem = quote.pck_chain_pem.rstrip(b"\x00")  # C strings: some QEs count the terminator
        chain = collateral.load_certificates(pem)
        if not 2 <= len(chain) <= MAX_CHAIN_LENGTH:
            raise AttestationError(
                "attestation.chain_invalid", f"PCK chain has {len(chain)} certificates"
            )
        _CHAINS.put(key, chain)
    return chain


def leaf_tcb(leaf: x509.Certificate) -> PckTcb:
    key = fingerprint(leaf)
    value: PckTcb | None = _PCK.get(key)
    if value is None:
        value = pck_tcb(leaf)
        _PCK.put(key, value)
    return value


def _step(log: CheckLog, name: str, exc: AttestationError) -> AttestationError:
    """Record a parse-level failure as the failed step (keeps checks already recorded)."""
    if exc.checks:
        return exc
    return log.fail(name, exc.code, exc.detail)


def _check_qe_pin(qe: EnclaveReport, profile: Profile, log: CheckLog) -> None:
    """The QE report is from Intel's QE, not a debug build: checked from the pinned identity
    when no QE identity collateral is given. The PCK only says the PCE certified the enclave,
    and the PCE certifies any enclave the platform owner grants PROVISIONKEY (flexible launch
    control): without this, the host's owner could sign quotes with an enclave of its own."""
    step = "3b. QE identity (pinned)"
    wrong = [name for name, ok in (
        ("MRSIGNER", hmac.compare_digest(qe.mr_signer, profile.qe_mrsigner)),
        ("ISVPRODID", qe.isv_prod_id == profile.qe_isvprodid),
        ("ATTRIBUTES.DEBUG", not qe.attributes[0] & ATTRIBUTE_DEBUG),
    ) if not ok]
    if wrong:
        raise log.fail(step, "attestation.qe_identity_mismatch",
                       f"the QE report is not Intel's {profile.qe_identity_id} "
                       f"({', '.join(wrong)} differ)")
    log.ok(step, f"Intel {profile.qe_identity_id} (MRSIGNER, ISVPRODID {profile.qe_isvprodid}), "
                 "not debug")


def _verify_quote_signatures(
    quote: DcapQuote, chain: Sequence[x509.Certificate], log: CheckLog
) -> None:
    leaf = chain[0]
    if not _ecdsa_ok(leaf.public_key(), quote.qe_report_signature, quote.qe_report.raw):
        raise log.fail(
            "2. QE report signature", "attestation.signature_invalid",
            "the QE report is not signed by the PCK certificate key (A.3.10)",
        )
    log.ok("2. QE report signature", "ECDSA P-256 by the PCK leaf")

    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(quote.qe_report.report_data, expected):
        raise log.fail(
            "3. attestation key binding", "attestation.signature_invalid",
            "QE report_data is not SHA-256(attestation key || QE auth data) || 0 (A.3.11)",
        )
    log.ok("3. attestation key binding", "QE report_data = SHA-256(attestation key || auth data)")

    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + quote.attestation_key
        )
    except ValueError as exc:
        raise log.fail(
            "4. quote signature", "attestation.signature_invalid",
            "the attestation key is not a P-256 point",
        ) from exc
    if not _ecdsa_ok(att_key, quote.signature, quote.signed):
        raise log.fail(
            "4. quote signature", "attestation.signature_invalid",
            "the quote is not signed by its attestation key (A.3.8)",
        )
    log.ok("4. quote signature", f"ECDSA P-256 over header and body ({len(quote.signed)} bytes)")


def _pool(
    options: VerifyOptions, found: CollateralSet, chain: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    seen: set[str] = set()
    out: list[x509.Certificate] = []
    supplied = options.endorsements.certificates
    for n, cert in enumerate((*supplied, *found.certificates, *chain)):
        fp = fingerprint(cert)
        if fp not in seen:
            if n < len(supplied):  # parsed by the caller; the others were checked on loading
                collateral.check_certificate(cert)
            seen.add(fp)
            out.append(cert)
    if len(out) > _MAX_POOL:
        raise AttestationError("attestation.collateral_invalid", "too many certificates supplied")
    return out


def _build_chain(
    signer: x509.Certificate, pool: Sequence[x509.Certificate], roots: frozenset[str]
) -> list[x509.Certificate]:
    """signer -> ... -> a self-issued certificate, by names; ``verify_chain`` checks the rest."""
    chain = [signer]
    while chain[-1].issuer != chain[-1].subject and len(chain) < MAX_CHAIN_LENGTH:
        issuers = [c for c in pool if c.subject == chain[-1].issuer and c not in chain]
        if not issuers:
            break
        # Prefer a pinned root when two certificates share a name.
        issuers.sort(key=lambda c: fingerprint(c) not in roots)
        chain.append(issuers[0])
    return chain


def _verify_document(
    doc: SignedDocument[Any],
    *,
    step: str,
    pool: Sequence[x509.Certificate],
    roots: frozenset[str],
    found: CollateralSet,
    pck_chain_certs: Sequence[x509.Certificate],
    now: datetime,
    log: CheckLog,
    verified_chains: set[tuple[str, ...]],
) -> None:
    """Signature by a certificate chained to the root, and the document current at ``now``."""
    digest = hashlib.sha256(doc.body).hexdigest() + doc.signature.hex()
    # The PCK chain's own certificates never sign PCS documents; the pool holds them only so
    # that the signer's chain can end at the root the quote carried.
    candidates = [c for c in pool if c.issuer != c.subject and c not in pck_chain_certs]
    # A renewed TCB Signing certificate keeps its key: try the ones valid now first.
    candidates.sort(key=lambda c: not c.not_valid_before_utc <= now <= c.not_valid_after_utc)
    signer = None
    for cert in candidates:
        memo = f"{digest}:{fingerprint(cert)}"
        if _DOC_SIGNATURES.get(memo) or _ecdsa_ok(cert.public_key(), doc.signature, doc.body):
            _DOC_SIGNATURES.put(memo, True)
            signer = cert
            break
    if signer is None:
        code = "attestation.collateral_invalid" if candidates else "attestation.certificate_missing"
        raise log.fail(
            step, code, f"the {doc.kind} signature does not verify with any supplied certificate"
        )
    chain = _build_chain(signer, pool, roots)
    # Intel signs PCS documents with the TCB Signing certificate, issued by the Root CA itself
    # (PCK Certificate and CRL Profile §1.2; QVL checks the same two-certificate chain). PCK
    # certificates are end entities under the root too, one CA lower: without this a PCK key
    # (extracted from an out-of-date machine) could sign a tcbInfo calling any platform UpToDate.
    if len(chain) != 2:
        raise log.fail(
            step, "attestation.collateral_invalid",
            f"the {doc.kind} signer {signer.subject.rfc4514_string()} is not issued directly by "
            "the root (only the TCB Signing certificate signs PCS documents)",
        )
    key = tuple(fingerprint(c) for c in chain)
    if key not in verified_chains:
        verify_chain(chain, trusted_roots=roots, now=now, log=log,
                     name=f"{step}: signing chain", crls=found.crls)
        verified_chains.add(key)
    content = doc.content
    if not content.issue_date <= now <= content.next_update:
        raise log.fail(
            step, "attestation.collateral_invalid",
            f"{doc.kind} is valid {content.issue_date:%Y-%m-%dT%H:%M}Z.."
            f"{content.next_update:%Y-%m-%dT%H:%M}Z, not at {now:%Y-%m-%dT%H:%M}Z",
        )
    log.ok(step, f"signed by {signer.subject.rfc4514_string()}, current until "
                 f"{content.next_update:%Y-%m-%d}")


def _appraise_tcb(
    quote: Any,
    pck: PckTcb,
    found: CollateralSet,
    profile: Profile,
    log: CheckLog,
) -> tuple[str, tuple[str, ...]]:
    status: str = "unknown"
    advisories: tuple[str, ...] = ()
    if found.tcb_info is not None:
        info = found.tcb_info.content
        if info.id != profile.tcb_info_id:
            raise log.fail("5c. TCB level", "attestation.collateral_invalid",
                           f"tcbInfo is for {info.id}, the quote is {profile.name}")
        if info.fmspc != pck.fmspc or info.pce_id != pck.pce_id:
            raise log.fail(
                "5c. TCB level", "attestation.collateral_invalid",
                f"tcbInfo is for FMSPC {info.fmspc.hex()} / PCE-ID {info.pce_id.hex()}, the PCK "
                f"certificate for {pck.fmspc.hex()} / {pck.pce_id.hex()}",
            )
        try:
            match = profile.match(info, pck, quote)
        except AttestationError as exc:
            raise _step(log, "5c. TCB level", exc) from exc
        status, advisories = match.status, match.advisory_ids
        log.ok("5c. TCB level", f"{match.status}: {match.detail}")
    if found.qe_identity is not None:
        if found.qe_identity.content.id != profile.qe_identity_id:
            raise log.fail("5d. QE identity", "attestation.collateral_invalid",
                           f"the QE identity is {found.qe_identity.content.id}, the quote's QE "
                           f"is {profile.qe_identity_id}")
        try:
            qe_level = tcb.match_qe(found.qe_identity.content, quote.qe_report)
        except AttestationError as exc:
            raise _step(log, "5d. QE identity", exc) from exc
        qe_status = tcb.NO_MATCH if qe_level is None else qe_level.status
        log.ok("5d. QE identity",
               f"{profile.qe_identity_id} isvsvn {quote.qe_report.isv_svn}: {qe_status}")
        if status != "unknown":
            status = tcb.converge(status, qe_status)
        if qe_level is not None:
            advisories = tuple(dict.fromkeys((*advisories, *qe_level.advisory_ids)))
    return status, advisories


def verify_quote(
    data: bytes, options: VerifyOptions, *, profile: Profile, log: CheckLog | None = None
) -> QuoteVerification:
    """Verify a raw quote of ``profile``'s kind and its collateral; raise on the first failed step.

    ``options.endorsements.collateral`` may hold PCS tcbInfo / QE identity responses, PCK and
    root CRLs (DER or PEM), PEM issuer chains and dcap-qvl collateral bundles, in any order;
    ``options.endorsements.certificates`` may add the TCB signing chain.
    """
    log = log if log is not None else CheckLog()
    now = options.now
    if now.tzinfo is None:
        raise InputError("input.malformed", "the verification time must carry a time zone")
    roots = frozenset(options.trusted_roots) if options.trusted_roots is not None else TRUSTED_ROOTS
    try:
        quote = profile.parse(data)
        log.ok("0. parse quote", profile.describe(quote))
        chain = pck_chain(quote)
        found = collateral.gather(options.endorsements.collateral)
    except AttestationError as exc:
        raise _step(log, "0. parse quote", exc) from exc

    verify_chain(chain, trusted_roots=roots, now=now, log=log,
                 name="1. PCK certificate chain", crls=found.crls)
    chain_issuers = {c.subject for c in chain}
    revocation_checked = any(crl.issuer == chain[0].issuer for crl in found.crls)
    try:
        pck = leaf_tcb(chain[0])
    except AttestationError as exc:
        raise _step(log, "1. PCK certificate chain", exc) from exc
    _verify_quote_signatures(quote, chain, log)
    if found.qe_identity is None:
        _check_qe_pin(quote.qe_report, profile, log)

    if found.empty:
        return QuoteVerification(quote, pck, chain, "unknown", (), False, False)

    log.ok("5. collateral", (
        f"tcbInfo {'yes' if found.tcb_info else 'no'}, QE identity "
        f"{'yes' if found.qe_identity else 'no'}, {len(found.crls)} CRL(s) "
        f"({sum(1 for c in found.crls if c.issuer in chain_issuers)} for the PCK chain), "
        f"PCK revocation {'checked' if revocation_checked else 'NOT checked (no PCK CRL)'}, "
        f"{found.ignored} item(s) ignored"
    ))
    try:
        pool = _pool(options, found, chain)
    except AttestationError as exc:
        raise _step(log, "5. collateral", exc) from exc
    verified: set[tuple[str, ...]] = set()
    for doc, step in ((found.tcb_info, "5a. tcbInfo"), (found.qe_identity, "5b. QE identity")):
        if doc is not None:
            _verify_document(doc, step=step, pool=pool, roots=roots, found=found,
                             pck_chain_certs=chain, now=now, log=log, verified_chains=verified)
    status, advisories = _appraise_tcb(quote, pck, found, profile, log)
    return QuoteVerification(
        quote, pck, chain, status, advisories, revocation_checked,
        found.tcb_info is not None or found.qe_identity is not None,
    )


def verification_of(platform: str, data: bytes, result: QuoteVerification,
                    claims: dict[str, Any], log: CheckLog) -> Verification:
    """A verified quote as the platform-neutral result: the platform's ``claims`` with the TCB
    advisories and whether PCK revocation was checked added, the digests of the evidence and of
    its signed bytes (ECDSA signatures are malleable)."""
    claims["advisory_ids"] = list(result.advisory_ids)
    claims["revocation_checked"] = result.revocation_checked
    return Verification(
        platform=platform,
        claims=claims,
        checks=log.checks,
        tcb_status=result.tcb_status,
        # Only Intel's root makes this hardware evidence; a chain to a caller's trusted_roots
        # (tests, a lab PKI) verifies the same way but protects nothing.
        secure=fingerprint(result.chain[-1]) in TRUSTED_ROOTS,
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(result.quote.signed),
    )
