"""Evidence JSON as the Confidential Containers attestation agent emits it, decoded strictly.

Formats (CoCo guest-components attesters, as the trustee verifiers read them):

* ``az-snp-vtpm`` v0: ``{"quote": Q0, "report": [bytes], "vcek": "PEM"}``
* ``az-snp-vtpm`` v1/v2: ``{"version": 1|2, "tpm_quote": Q1, "hcl_report": b64url,
  "vcek": b64url DER}`` (v2 puts the caller's report_data in the variable data's user-data)
* ``az-tdx-vtpm`` v0: ``{"tpm_quote": Q0, "hcl_report": [bytes], "td_quote": [bytes]}``
* ``az-tdx-vtpm`` v1: ``{"version": 1, "tpm_quote": Q1, "hcl_report": b64url, "td_quote": b64url}``
* ``tpm``: ``{"ak_public": b64 SPKI DER, "tpm_quote": {"signature": b64 TPMT_SIGNATURE,
  "message": b64 TPMS_ATTEST, "pcrs": [hex]}}``

where Q0 holds ``signature``, ``message`` and ``pcrs`` as byte arrays and Q1 as hex strings. The
Azure quote signature is the bare RSASSA-PKCS1-v1_5/SHA-256 signature of the vTPM AK; the plain
TPM one is a marshalled TPMT_SIGNATURE naming its own scheme. Unknown members are refused: two
verifiers must never disagree on what a piece of evidence says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography import x509

from medclave.attestation.core import MAX_EVIDENCE_BYTES
from medclave.attestation.vtpm import hcl, tpm2
from medclave.attestation.vtpm._codec import (
    b64_bytes,
    b64url_bytes,
    byte_list,
    hex_bytes,
    malformed,
    strict_json,
)
from medclave.attestation.x509chain import load_certificates

AzureKind = Literal["az-snp-vtpm", "az-tdx-vtpm"]
Kind = Literal["az-snp-vtpm", "az-tdx-vtpm", "tpm"]
AZ_SNP: Final = "az-snp-vtpm"
AZ_TDX: Final = "az-tdx-vtpm"
TPM: Final = "tpm"

MAX_TD_QUOTE_BYTES = 64 * 1024
MAX_CERT_BYTES = 64 * 1024
MAX_AK_BYTES = 4096

_SNP_V0 = frozenset({"quote", "report", "vcek"})
_SNP_V1 = frozenset({"version", "tpm_quote", "hcl_report", "vcek"})
_TDX_V0 = frozenset({"tpm_quote", "hcl_report", "td_quote"})
_TDX_V1 = frozenset({"version", "tpm_quote", "hcl_report", "td_quote"})
_TPM = frozenset({"ak_public", "tpm_quote"})
_QUOTE = frozenset({"signature", "message", "pcrs"})


@dataclass(frozen=True)
class Quote:
    """A TPM quote as carried: the signed TPMS_ATTEST, its signature, the quoted PCR values."""

    message: bytes
    signature: tpm2.TpmSignature
    pcrs: tuple[bytes, ...]


@dataclass(frozen=True)
class AzureEvidence:
    kind: AzureKind
    version: int
    quote: Quote
    hcl_report: bytes
    certificates: tuple[x509.Certificate, ...] = ()  # SNP: the VCEK (and any chain sent along)
    td_quote: bytes = b""  # TDX: the quote the TD report was turned into


@dataclass(frozen=True)
class TpmEvidence:
    ak_public: bytes  # SubjectPublicKeyInfo DER
    quote: Quote


Evidence = AzureEvidence | TpmEvidence


def classify(obj: object) -> Kind | None:
    """Which evidence format a decoded JSON value is in, by its exact set of members."""
    if not isinstance(obj, dict):
        return None
    keys = frozenset(obj)
    if keys in (_SNP_V0, _SNP_V1):
        return AZ_SNP
    if keys in (_TDX_V0, _TDX_V1):
        return AZ_TDX
    if keys == _TPM:
        return TPM
    return None


def load(data: bytes) -> Any:
    return strict_json(data, what="vTPM evidence", maximum=MAX_EVIDENCE_BYTES)


Decoder = Callable[..., bytes]


def _quote(obj: object, *, blob: Decoder, pcr: Decoder, raw_signature: bool) -> Quote:
    if not isinstance(obj, dict) or frozenset(obj) != _QUOTE:
        raise malformed("TPM quote must have exactly signature, message and pcrs")
    pcrs = obj["pcrs"]
    if not isinstance(pcrs, list) or len(pcrs) > tpm2.MAX_PCRS:
        raise malformed(f"TPM quote pcrs is not a list of at most {tpm2.MAX_PCRS}")
    sig = blob(obj["signature"], what="quote signature", maximum=tpm2.MAX_SIGNATURE_BYTES)
    return Quote(
        message=blob(obj["message"], what="quote message", maximum=tpm2.MAX_ATTEST_BYTES),
        signature=tpm2.rsassa_sha256(sig) if raw_signature else tpm2.parse_signature(sig),
        pcrs=tuple(pcr(p, what=f"PCR value {i}", maximum=64) for i, p in enumerate(pcrs)),
    )


def _version(obj: Mapping[str, Any], allowed: tuple[int, ...]) -> int:
    version = obj["version"]
    if type(version) is not int or version not in allowed:
        raise malformed(f"evidence version {version!r} is not one of {allowed}")
    return version


def _vcek_pem(value: object) -> tuple[x509.Certificate, ...]:
    if not isinstance(value, str) or len(value) > MAX_CERT_BYTES:
        raise malformed("vcek is not a PEM string")
    if "-----BEGIN CERTIFICATE-----" not in value:
        raise malformed("vcek holds no PEM certificate")
    return tuple(load_certificates(value.encode("ascii", "replace")))


def _vcek_der(value: object) -> tuple[x509.Certificate, ...]:
    der = b64url_bytes(value, what="vcek", maximum=MAX_CERT_BYTES)
    if b"-----BEGIN" in der:
        raise malformed("vcek must be base64url DER")
    return tuple(load_certificates(der))


def decode(data: bytes) -> Evidence:
    """Decode evidence JSON into typed fields; no cryptography, every field bounded."""
    obj = load(data)
    kind = classify(obj)
    if kind is None:
        raise malformed("JSON is not az-snp-vtpm, az-tdx-vtpm or tpm evidence")
    if kind == TPM:
        quote = _quote(obj["tpm_quote"], blob=b64_bytes, pcr=hex_bytes, raw_signature=False)
        return TpmEvidence(
            ak_public=b64_bytes(obj["ak_public"], what="ak_public", maximum=MAX_AK_BYTES),
            quote=quote,
        )
    if "version" in obj:
        version = _version(obj, (1, 2) if kind == AZ_SNP else (1,))
        quote = _quote(obj["tpm_quote"], blob=hex_bytes, pcr=hex_bytes, raw_signature=True)
        report = b64url_bytes(obj["hcl_report"], what="hcl_report", maximum=hcl.MAX_HCL_BYTES)
    else:
        version = 0
        quote_obj = obj["quote"] if kind == AZ_SNP else obj["tpm_quote"]
        quote = _quote(quote_obj, blob=byte_list, pcr=byte_list, raw_signature=True)
        report_obj = obj["report"] if kind == AZ_SNP else obj["hcl_report"]
        report = byte_list(report_obj, what="HCL report", maximum=hcl.MAX_HCL_BYTES)
    if kind == AZ_SNP:
        certs = _vcek_pem(obj["vcek"]) if version == 0 else _vcek_der(obj["vcek"])
        return AzureEvidence(kind=AZ_SNP, version=version, quote=quote, hcl_report=report,
                             certificates=certs)
    decoder: Decoder = byte_list if version == 0 else b64url_bytes
    td_quote = decoder(obj["td_quote"], what="td_quote", maximum=MAX_TD_QUOTE_BYTES)
    return AzureEvidence(kind=AZ_TDX, version=version, quote=quote, hcl_report=report,
                         td_quote=td_quote)
