"""NVIDIA reference integrity manifests: TCG RIM SWID tags (ISO/IEC 19770-2) with XML-DSig.

NVIDIA publishes one RIM per driver version and one per VBIOS build. Each is a ``SoftwareIdentity``
whose ``Meta/@colloquialVersion`` names the version and whose ``Payload/Resource`` elements hold
the golden SHA-384 value(s) of each measurement index, signed with an enveloped XML signature
(ecdsa-sha384, C14N 1.1) whose ``KeyInfo/X509Data`` carries the chain HCC RIM L4 Signer ->
Reference Value L3 -> Reference Value GH100 CA -> NVIDIA CoRIM signing Root CA.

A RIM verifies when: the document is plain XML (no DTD, no entities, bounded size), it holds one
signature, a child of the root, over the whole document (``Reference URI=""``); the embedded chain
verifies at the injected time to the pinned CoRIM root; and ``signxml`` verifies the signature with
that leaf at the same time. Reference values are read only from what ``signxml`` returns as signed
("see what is signed"). Any failure is ``attestation.rim_invalid``.

Comparison follows nvtrust ``verifier.Verifier``: RIM index ``i`` is SPDM block ``i + 1``; only
active entries count; a runtime value must equal one of the alternatives and have the stated
size; the driver and VBIOS RIMs must not both claim an index; RIM index 35 (block 36, NVDEC) is
compared only when the report says NVDEC0 is enabled. A verified RIM that is not for the GPU's
version, or any differing value, is ``attestation.measurement_mismatch``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from lxml import etree
from signxml import SignatureConfiguration, XMLVerifier  # type: ignore[attr-defined]
from signxml.algorithms import DigestAlgorithm, SignatureMethod

from medclave.attestation.core import CheckLog, sha256_hex
from medclave.attestation.x509chain import load_certificates, verify_chain
from medclave.errors import AttestationError

# SHA-256 of the DER of "NVIDIA CoRIM signing Root CA" (P-384, valid to 2053), from NVIDIA nvtrust
# local_gpu_verifier/src/verifier/certs/verifier_RIM_root.pem.
RIM_ROOT_FINGERPRINTS: frozenset[str] = frozenset({
    "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1",
})

MAX_RIM_BYTES = 256 * 1024
MAX_RIMS = 8
MAX_RESOURCES = 256
MAX_ALTERNATIVES = 16
MAX_CHAIN = 6
NVDEC_RIM_INDEX = 35

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
_NS = {"s": SWID_NS, "ds": DSIG_NS}

_VBIOS_VERSION = re.compile(r"\A[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}\Z")
_DRIVER_VERSION = re.compile(r"\A\d{1,4}(\.\d{1,4}){1,3}\Z")
_HEX = re.compile(r"\A[0-9a-fA-F]*\Z")


@dataclass(frozen=True)
class ReferenceMeasurement:
    index: int  # RIM index, 0-based; SPDM block index + 1
    name: str
    size: int
    active: bool
    alternatives: tuple[bytes, ...]


@dataclass(frozen=True)
class VerifiedRim:
    kind: str  # "driver" | "vbios"
    version: str  # colloquialVersion, lower case
    tag_id: str
    signer: str
    measurements: tuple[ReferenceMeasurement, ...]
    chain: tuple[x509.Certificate, ...]
    sha256: str

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, "tag_id": self.tag_id,
                "signer": self.signer, "sha256": self.sha256}


@dataclass(frozen=True)
class Mismatch:
    """One difference between the report and its references. ``index`` is the SPDM block index."""

    index: int
    kind: str
    name: str
    expected: tuple[str, ...]
    actual: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "rim": self.kind, "name": self.name,
                "expected": list(self.expected), "actual": self.actual}


def is_rim(data: bytes) -> bool:
    """Sniff: a SWID ``SoftwareIdentity`` root near the start (collateral holds other files too)."""
    return b"<SoftwareIdentity" in data[:1024] or b":SoftwareIdentity" in data[:1024]


def _parser() -> etree.XMLParser:
    # A parser per call: lxml parsers are not shared across threads. No DTDs, no entity
    # expansion, no network, no huge trees (XXE and billion-laughs).
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_pis=False)


def _invalid(log: CheckLog, name: str, detail: str) -> AttestationError:
    return log.fail(name, "attestation.rim_invalid", detail)


def _parse_document(data: bytes, log: CheckLog, name: str) -> Any:
    if len(data) > MAX_RIM_BYTES:
        raise _invalid(log, name, f"RIM is {len(data)} bytes, over {MAX_RIM_BYTES}")
    try:
        root = etree.fromstring(data, parser=_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise _invalid(log, name, f"RIM is not well-formed XML: {exc}") from exc
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.externalDTD is not None \
            or tree.docinfo.doctype:
        raise _invalid(log, name, "RIM declares a DTD")
    if any(True for _ in root.iter(etree.Entity)):
        raise _invalid(log, name, "RIM contains entity references")
    if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise _invalid(log, name, f"root element {root.tag!r} is not a SWID SoftwareIdentity")
    return root


def _embedded_chain(root: Any, log: CheckLog, name: str) -> list[x509.Certificate]:
    signatures = root.findall(".//ds:Signature", _NS)
    direct = root.findall("ds:Signature", _NS)
    if len(signatures) != 1 or len(direct) != 1:
        raise _invalid(log, name, "RIM must hold exactly one ds:Signature, a child of the root")
    references = direct[0].findall("ds:SignedInfo/ds:Reference", _NS)
    if len(references) != 1 or references[0].get("URI") != "":
        raise _invalid(log, name, "the signature must have one Reference over the whole document")
    texts = direct[0].findall("ds:KeyInfo/ds:X509Data/ds:X509Certificate", _NS)
    if not 1 <= len(texts) <= MAX_CHAIN:
        raise _invalid(log, name, f"{len(texts)} embedded certificates; expected 1..{MAX_CHAIN}")
    chain: list[x509.Certificate] = []
    for element in texts:
        try:
            der = base64.b64decode("".join((element.text or "").split()), validate=True)
            chain.extend(load_certificates(der))
        except (binascii.Error, ValueError, AttestationError) as exc:
            raise _invalid(log, name, f"embedded certificate does not decode: {exc}") from exc
    return chain


def _check_signer(leaf: x509.Certificate, log: CheckLog, name: str) -> None:
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise _invalid(log, name, f"RIM signer lacks {exc.oid.dotted_string}") from exc
    except ValueError as exc:
        raise _invalid(log, name, f"RIM signer extensions: {exc}") from exc
    if not usage.digital_signature or constraints.ca:
        raise _invalid(log, name, "RIM signer is not an end-entity signing certificate")


def _signed_root(data: bytes, leaf: x509.Certificate, now: datetime, log: CheckLog,
                 name: str) -> Any:
    config = SignatureConfiguration(
        require_x509=True,
        location="./",
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=now,
    )
    try:
        result = XMLVerifier().verify(data, x509_cert=leaf, parser=_parser(), expect_config=config)
    # signxml raises its own, cryptography's and lxml's exceptions (and, on hostile input, the
    # odd KeyError or AttributeError); every one of them means "not verified".
    except Exception as exc:
        raise _invalid(log, name, f"XML signature does not verify: {type(exc).__name__}: {exc}") \
            from exc
    signed = result.signed_xml if not isinstance(result, list) else None
    if signed is None or signed.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise _invalid(log, name, "the signed content is not the SoftwareIdentity document")
    return signed


def _int_attr(element: Any, attr: str, low: int, high: int, log: CheckLog, name: str) -> int:
    text = element.get(attr)
    if text is None or not text.isdigit() or not low <= int(text) <= high:
        raise _invalid(log, name, f"Resource @{attr}={text!r} is not in {low}..{high}")
    return int(text)


def _measurements(signed: Any, log: CheckLog, name: str) -> tuple[ReferenceMeasurement, ...]:
    payload = signed.findall("s:Payload", _NS)
    if len(payload) != 1:
        raise _invalid(log, name, "RIM must have exactly one Payload")
    resources = payload[0].findall("s:Resource", _NS)
    if not 1 <= len(resources) <= MAX_RESOURCES:
        raise _invalid(log, name, f"{len(resources)} Resources; expected 1..{MAX_RESOURCES}")
    out: dict[int, ReferenceMeasurement] = {}
    for res in resources:
        if res.get("type") != "Measurement":
            continue
        index = _int_attr(res, "index", 0, 253, log, name)
        size = _int_attr(res, "size", 1, 64, log, name)
        count = _int_attr(res, "alternatives", 1, MAX_ALTERNATIVES, log, name)
        active = res.get("active")
        if active not in ("True", "False"):
            raise _invalid(log, name, f"Resource {index} @active={active!r}")
        values: list[bytes] = []
        for i in range(count):
            text = res.get(f"{{{SHA384_NS}}}Hash{i}")
            if text is None or len(text) != 2 * size or not _HEX.match(text):
                raise _invalid(log, name, f"Resource {index} Hash{i} missing or not {size} bytes")
            values.append(bytes.fromhex(text))
        if index in out:
            raise _invalid(log, name, f"Resource index {index} repeated")
        out[index] = ReferenceMeasurement(index, res.get("name") or "", size, active == "True",
                                          tuple(values))
    if not out:
        raise _invalid(log, name, "RIM has no Measurement resources")
    return tuple(out[i] for i in sorted(out))


def verify_rim(
    data: bytes,
    *,
    now: datetime,
    trusted_roots: frozenset[str] = RIM_ROOT_FINGERPRINTS,
    log: CheckLog | None = None,
    name: str = "5. RIM",
) -> VerifiedRim:
    """One RIM: XML hygiene, embedded chain to the pinned root at ``now``, XML-DSig, contents."""
    log = log if log is not None else CheckLog()
    root = _parse_document(data, log, name)
    chain = _embedded_chain(root, log, name)
    chain_log = CheckLog()
    try:
        verify_chain(chain, trusted_roots=trusted_roots, now=now, log=chain_log, name=name)
    except AttestationError as exc:
        raise _invalid(log, name, f"signer chain: {exc.code}: {exc.detail}") from exc
    _check_signer(chain[0], log, name)
    signed = _signed_root(data, chain[0], now, log, name)

    meta = signed.findall("s:Meta", _NS)
    version = meta[0].get("colloquialVersion") if len(meta) == 1 else None
    if not version:
        raise _invalid(log, name, "RIM has no Meta/@colloquialVersion")
    if _VBIOS_VERSION.match(version):
        kind = "vbios"
    elif _DRIVER_VERSION.match(version):
        kind = "driver"
    else:
        raise _invalid(log, name, f"colloquialVersion {version!r} is neither driver nor VBIOS")
    measurements = _measurements(signed, log, name)
    signer = chain[0].subject.rfc4514_string()
    log.ok(f"{name} ({kind} {version.lower()})", f"XML-DSig ecdsa-sha384 by {signer}, "
           f"chain to the CoRIM root valid at {now:%Y-%m-%d}")
    return VerifiedRim(
        kind=kind,
        version=version.lower(),
        tag_id=signed.get("tagId") or "",
        signer=signer,
        measurements=measurements,
        chain=tuple(chain),
        sha256=sha256_hex(data),
    )


def verify_collateral(
    collateral: Sequence[bytes],
    *,
    now: datetime,
    trusted_roots: frozenset[str],
    log: CheckLog,
) -> tuple[VerifiedRim, ...]:
    """Every RIM among ``collateral`` (other files are another platform's); each must verify."""
    rims = [c for c in collateral if is_rim(c)]
    if len(rims) > MAX_RIMS:
        raise log.fail("5. RIM", "attestation.rim_invalid", f"{len(rims)} RIMs; at most {MAX_RIMS}")
    return tuple(verify_rim(r, now=now, trusted_roots=trusted_roots, log=log) for r in rims)


def compare_measurements(
    measurements: Mapping[int, bytes],
    references: Sequence[VerifiedRim],
    *,
    nvdec0_enabled: bool,
) -> tuple[Mismatch, ...]:
    """Differences between the report's blocks and the active reference values (nvtrust rules).

    Raises ``attestation.rim_invalid`` when two manifests claim the same index.
    """
    golden: dict[int, tuple[str, ReferenceMeasurement]] = {}
    for ref in references:
        for m in ref.measurements:
            if not m.active:
                continue
            if m.index in golden:
                raise AttestationError(
                    "attestation.rim_invalid",
                    f"{golden[m.index][0]} and {ref.kind} RIMs both set index {m.index}",
                )
            golden[m.index] = (ref.kind, m)
    out: list[Mismatch] = []
    for index in sorted(golden):
        kind, ref_m = golden[index]
        if index == NVDEC_RIM_INDEX and not nvdec0_enabled:
            continue
        actual = measurements.get(index + 1)
        if actual is None or len(actual) != ref_m.size or actual not in ref_m.alternatives:
            out.append(Mismatch(
                index=index + 1,
                kind=kind,
                name=ref_m.name,
                expected=tuple(v.hex() for v in ref_m.alternatives),
                actual=None if actual is None else actual.hex(),
            ))
    return tuple(out)


def appraise(
    report: Any,
    claims: Mapping[str, Any],
    manifests: Sequence[VerifiedRim],
    log: CheckLog,
) -> None:
    """Check 5b: each kind given has a RIM for the GPU's version, and every value matches."""
    name = "5. measurements vs RIM"
    reported = {"driver": str(claims.get("driver_version", "")).lower(),
                "vbios": str(claims.get("vbios_version", "")).lower()}
    chosen: list[VerifiedRim] = []
    problems: list[str] = []
    for kind in ("driver", "vbios"):
        of_kind = [m for m in manifests if m.kind == kind]
        if not of_kind:
            continue
        matching = [m for m in of_kind if m.version == reported[kind]]
        if not matching:
            problems.append(f"{kind} RIM is for {of_kind[0].version}, the GPU reports "
                            f"{reported[kind] or '(none)'}")
        chosen.append((matching or of_kind)[0])
    try:
        mismatches = compare_measurements(report.measurements, chosen,
                                          nvdec0_enabled=bool(claims.get("nvdec0_enabled")))
    except AttestationError as exc:
        raise log.fail(name, exc.code, exc.detail) from exc
    if mismatches:
        problems.append("blocks " + ", ".join(str(m.index) for m in mismatches)
                        + " differ from the reference values")
    if problems:
        error = log.fail(name, "attestation.measurement_mismatch", "; ".join(problems))
        error.context["mismatches"] = tuple(m.to_dict() for m in mismatches)
        raise error
    kinds = "+".join(m.kind for m in chosen)
    log.ok(name, f"every active {kinds} reference value matches")
