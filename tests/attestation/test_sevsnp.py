"""SEV-SNP against the real vectors (MANIFEST.md rows S1..S9): every verdict the manifest
states, the claims, and a one-byte-flipped twin of every valid report."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from medclave.attestation import registry, sevsnp
from medclave.attestation.core import CheckLog, Endorsements, VerifyOptions
from medclave.attestation.sevsnp import abi
from medclave.attestation.sevsnp.certs import kds_extensions
from medclave.attestation.x509chain import fingerprint, load_certificates
from medclave.errors import AttestationError
from tests.attestation._ecdsa import snp_high_s
from tests.conftest import at, flip

NOW = at("2025-07-01")  # inside every vector certificate's validity (the S4 VLEK: 2024-12..2025-12)
SNP = "sev-snp"


def read(vectors: Path, rel: str) -> bytes:
    return (vectors / SNP / rel).read_bytes()


def certs(vectors: Path, *rels: str) -> tuple[x509.Certificate, ...]:
    return tuple(c for rel in rels for c in load_certificates(read(vectors, rel)))


def opts(vectors: Path, *rels: str, now: str | None = None, **kw: object) -> VerifyOptions:
    return VerifyOptions(now=at(now) if now else NOW,
                         endorsements=Endorsements(certificates=certs(vectors, *rels)),
                         **kw)  # type: ignore[arg-type]


def refused(code: str, data: bytes, options: VerifyOptions) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        sevsnp.verify(data, options)
    assert info.value.code == code, info.value.detail
    assert info.value.checks and not info.value.checks[-1].ok
    return info.value


@dataclass(frozen=True)
class Case:
    name: str
    report: str
    chain: tuple[str, ...]
    product: str
    tcb: dict[str, int]
    fw: str
    policy: str
    report_data: tuple[str, str]  # hex prefix, suffix
    measurement: tuple[str, str]


CASES = [
    Case("S1", "go-sev-guest/attestation.bin",
         ("go-sev-guest/vcek.testcer", "amd-roots/ask_ark_milan.pem"), "Milan",
         {"bl": 2, "tee": 0, "snp": 5, "ucode": 68}, "1.49.3", "00000000000b0000",
         ("0102030405" + "00" * 59, ""), ("b07af962", "e4872b01")),
    Case("S2", "virtee-sev/report_milan.hex",
         ("virtee-sev/vcek_milan.der", "virtee-sev/cert_chain_milan"), "Milan",
         {"bl": 3, "tee": 0, "snp": 8, "ucode": 115}, "1.52.4", "0000000000030000",
         ("d447b55d", "6a93ebfd"), ("7a1e5c26", "cd81841f")),
    Case("S3", "trustee/test-report.bin",
         ("trustee/test-vcek.der", "amd-roots/ask_ark_milan.pem"), "Milan",
         {"bl": 3, "tee": 0, "snp": 8, "ucode": 115}, "1.52.4", "000000000003001f",
         ("ec6c52d7", "400ad7e2" + "00" * 32), ("a1f39304", "50d3d38c")),
    Case("S4", "trustee/test-vlek-report.bin",
         ("trustee/test-vlek.der", "amd-roots/ask_ark_milan_vlek.pem"), "Milan",
         {"bl": 4, "tee": 0, "snp": 24, "ucode": 217}, "1.55.29", "0000000000030000",
         ("819770b7", "a7bc27ca"), ("", "")),
    Case("S5", "trustee/e2e-genoa-report.DERIVED.bin",
         ("trustee/e2e-genoa-vcek.DERIVED.der", "amd-roots/ask_ark_genoa.pem"), "Genoa",
         {"bl": 10, "tee": 0, "snp": 23, "ucode": 25}, "1.55.40", "0000000000030000",
         ("7e732088", "150cf9b0"), ("6a6519d7", "5506e73e")),
]
IDS = [c.name for c in CASES]


def raw_report(vectors: Path, case: Case) -> bytes:
    return abi.report_bytes(read(vectors, case.report))


# --- the valid rows -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_valid_vectors_verify_with_claims(vectors: Path, case: Case) -> None:
    data = read(vectors, case.report)
    assert sevsnp.detect(data) == SNP
    result = sevsnp.verify(data, opts(vectors, *case.chain))
    c = result.claims
    assert result.platform == SNP and result.secure
    assert c["product"] == case.product
    assert c["reported_tcb_parts"] == case.tcb
    assert c["current_fw"] == case.fw
    assert c["policy"] == case.policy
    assert c["report_data"].startswith(case.report_data[0])
    assert c["report_data"].endswith(case.report_data[1])
    assert c["measurement"].startswith(case.measurement[0])
    assert c["measurement"].endswith(case.measurement[1])
    assert re.fullmatch(r"[0-9a-f]{96}", c["measurement"])
    assert [ch.name for ch in result.checks] == [
        "report structure", f"{c['signing_key'].upper()} chain", "product", "report signature",
        "reported TCB", "chip id"]
    assert all(ch.ok for ch in result.checks)
    assert result.evidence_sha256 and result.to_dict()["verified"] is True
    # parse() gives the same claims without cryptography (product needs CPUID, v3+).
    parsed = dict(sevsnp.parse(data))
    if c["version"] == 2:
        assert parsed.pop("product") is None and c["product"] == case.product
        c = {k: v for k, v in c.items() if k != "product"}
        parsed = {k: v for k, v in parsed.items() if not k.endswith("_parts")}
        c = {k: v for k, v in c.items() if not k.endswith("_parts")}
    assert parsed == c


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_high_s_twin_verifies_but_is_the_same_evidence(vectors: Path, case: Case) -> None:
    """ECDSA allows (r, n - s) beside (r, s) (SEC 1 §4.1.4; AMD's spec asks for no low s), so a
    second byte string of every real report verifies: a hash of the evidence bytes does not
    identify it. The evidence digest, over the signed bytes [0, 0x2A0), does (issue 9, part 6)."""
    raw = raw_report(vectors, case)
    twin = snp_high_s(raw)
    assert twin != raw and twin[:0x2A0] == raw[:0x2A0]
    original = sevsnp.verify(raw, opts(vectors, *case.chain))
    malleated = sevsnp.verify(twin, opts(vectors, *case.chain))
    assert malleated.claims == original.claims and all(c.ok for c in malleated.checks)
    expected = hashlib.sha256(raw[:0x2A0]).hexdigest()  # AMD spec 56860: the signed range
    assert original.evidence_digest == malleated.evidence_digest == expected
    assert original.evidence_sha256 != malleated.evidence_sha256
    # Parse-only, as the enclave computes it; hex text gives the same digest.
    assert registry.evidence_digest(SNP, twin) == expected
    assert registry.evidence_digest(SNP, read(vectors, case.report)) == expected
    assert registry.evidence_digest(SNP, raw.hex().encode()) == expected


def test_s1_claims_in_detail(vectors: Path) -> None:
    c = sevsnp.verify(read(vectors, CASES[0].report), opts(vectors, *CASES[0].chain)).claims
    assert int(c["reported_tcb"], 16) == 4901323769462652930
    assert c["chip_id"].startswith("3ac3fe21") and c["chip_id"].endswith("8b006b5d")
    assert c["report_id"].startswith("8edc638e")
    assert c["debug"] is True and c["policy_bits"]["debug"] is True
    assert c["policy_bits"]["smt"] is True and c["policy_bits"]["migrate_ma"] is False
    assert c["signing_key"] == "vcek" and c["vmpl"] == 0 and c["version"] == 2
    assert c["platform_info_bits"]["smt_enabled"] is True
    assert "cpuid" not in c and "launch_mit_vector" not in c


def test_s3_current_tcb_differs_from_reported(vectors: Path) -> None:
    c = sevsnp.verify(read(vectors, CASES[2].report), opts(vectors, *CASES[2].chain)).claims
    assert c["guest_svn"] == 4
    assert c["current_tcb_parts"]["ucode"] == 206
    assert c["policy_bits"]["abi_minor"] == 0x1F and c["debug"] is False


def test_s4_vlek_vmpl_and_masked_chip_id(vectors: Path) -> None:
    result = sevsnp.verify(read(vectors, CASES[3].report), opts(vectors, *CASES[3].chain))
    c = result.claims
    assert c["signing_key"] == "vlek" and c["vmpl"] == 1 and c["version"] == 3
    assert c["mask_chip_id"] is True and c["chip_id"] == "00" * 64
    assert c["cpuid"] == {"family": 0x19, "model": 0x01, "stepping": 0x01}
    assert "not chip-bound" in result.checks[-1].detail
    bits = c["platform_info_bits"]
    assert bits["smt_enabled"] and bits["tsme_enabled"] and bits["alias_check_complete"]


def test_s5_genoa_cpuid(vectors: Path) -> None:
    c = sevsnp.verify(read(vectors, CASES[4].report), opts(vectors, *CASES[4].chain)).claims
    assert c["cpuid"] == {"family": 0x19, "model": 0xA0, "stepping": 2}
    assert sevsnp.parse(read(vectors, CASES[4].report))["product"] == "Genoa"


@pytest.mark.parametrize("chain", [
    ("go-sev-guest/milan.testcer",),
    ("virtee-sev/builtin_milan_ask.pem", "virtee-sev/builtin_milan_ark.pem"),
    ("virtee-sev/cert_chain_milan",),
])
def test_s1_with_every_copy_of_the_milan_chain(vectors: Path, chain: tuple[str, ...]) -> None:
    sevsnp.verify(read(vectors, CASES[0].report),
                  opts(vectors, "go-sev-guest/vcek.testcer", *chain))


def test_s4_with_go_sev_guest_vlek_chain_copy(vectors: Path) -> None:
    sevsnp.verify(read(vectors, CASES[3].report),
                  opts(vectors, "trustee/test-vlek.der", "go-sev-guest/milanvlek.testcer"))


# --- flipped twins --------------------------------------------------------------------------------

# report_data, measurement, guest_svn, REPORTED_TCB, CHIP_ID, family_id, report_id, LAUNCH_TCB,
# current build: all inside [0, 0x2A0) and outside reserved bytes (those fail parsing first).
FLIP_OFFSETS = [0x50, 0x90, 0x04, 0x180, 0x1A0, 0x10, 0x140, 0x1F7, 0x1E8]


@pytest.mark.parametrize("offset", FLIP_OFFSETS, ids=hex)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_flipped_signed_byte_is_refused(vectors: Path, case: Case, offset: int) -> None:
    twin = flip(raw_report(vectors, case), offset)
    refused("attestation.signature_invalid", twin, opts(vectors, *case.chain))


def test_flipped_hex_text_twin_is_refused(vectors: Path) -> None:
    raw = raw_report(vectors, CASES[1])
    refused("attestation.signature_invalid", flip(raw, 0x50).hex().encode(),
            opts(vectors, *CASES[1].chain))


def test_s2_upstream_negative_bit_0x80_of_byte_21(vectors: Path) -> None:
    twin = flip(raw_report(vectors, CASES[1]), 21, 0x80)
    refused("attestation.signature_invalid", twin, opts(vectors, *CASES[1].chain))


def test_flipped_signature_is_refused(vectors: Path) -> None:
    twin = flip(raw_report(vectors, CASES[0]), 0x2A0)  # r, outside the signed bytes
    refused("attestation.signature_invalid", twin, opts(vectors, *CASES[0].chain))


# --- wrong chains, missing pieces, time -----------------------------------------------------------


def test_s3_with_genoa_chain_is_refused(vectors: Path) -> None:
    err = refused("attestation.chain_invalid", read(vectors, CASES[2].report),
                  opts(vectors, "trustee/test-vcek.der", "amd-roots/ask_ark_genoa.pem"))
    assert "wrong product" in err.detail


def test_s5_genoa_report_with_milan_chain_is_refused(vectors: Path) -> None:
    refused("attestation.chain_invalid", read(vectors, CASES[4].report),
            opts(vectors, "trustee/e2e-genoa-vcek.DERIVED.der", "amd-roots/ask_ark_milan.pem"))


def test_milan_ask_under_genoa_ark_is_refused(vectors: Path) -> None:
    milan_ask = certs(vectors, "virtee-sev/builtin_milan_ask.pem")
    genoa_ark = certs(vectors, "virtee-sev/builtin_genoa_ark.pem")
    vcek = certs(vectors, "go-sev-guest/vcek.testcer")
    options = VerifyOptions(now=NOW, endorsements=Endorsements(
        certificates=vcek + milan_ask + genoa_ark))
    refused("attestation.chain_invalid", read(vectors, CASES[0].report), options)


def test_s4_with_genoa_vlek_chain_is_refused(vectors: Path) -> None:
    refused("attestation.chain_invalid", read(vectors, CASES[3].report),
            opts(vectors, "trustee/test-vlek.der", "amd-roots/ask_ark_genoa_vlek.pem"))


def test_s4_vlek_report_with_only_a_vcek_is_refused(vectors: Path) -> None:
    err = refused("attestation.certificate_missing", read(vectors, CASES[3].report),
                  opts(vectors, "trustee/test-vcek.der", "amd-roots/ask_ark_milan.pem"))
    assert "VLEK" in err.detail


def test_vcek_report_with_vlek_chain_is_refused(vectors: Path) -> None:
    refused("attestation.certificate_missing", read(vectors, CASES[2].report),
            opts(vectors, "trustee/test-vlek.der", "amd-roots/ask_ark_milan_vlek.pem"))


def test_vcek_of_another_chip_is_refused(vectors: Path) -> None:
    # S2's VCEK (same TCB as S3, other chip): the S3 report is not signed by it.
    refused("attestation.signature_invalid", read(vectors, CASES[2].report),
            opts(vectors, "virtee-sev/vcek_milan.der", "amd-roots/ask_ark_milan.pem"))


@pytest.mark.parametrize("vcek", ["trustee/test-vcek-invalid-legacy.der",
                                  "trustee/test-vcek-invalid-new.der"])
def test_s3n_tampered_vceks_are_refused_but_parse(vectors: Path, vcek: str) -> None:
    ext = kds_extensions(certs(vectors, vcek)[0])
    assert ext.hwid == bytes(range(64)) and ext.product == "Milan"
    refused("attestation.chain_invalid", read(vectors, CASES[2].report),
            opts(vectors, vcek, "amd-roots/ask_ark_milan.pem"))


def test_s3n_hwid_encodings_and_tcb(vectors: Path) -> None:
    legacy = kds_extensions(certs(vectors, "trustee/test-vcek-invalid-legacy.der")[0])
    new = kds_extensions(certs(vectors, "trustee/test-vcek-invalid-new.der")[0])
    assert legacy.tcb.to_dict() == {"bl": 3, "tee": 0, "snp": 10, "ucode": 169}
    assert new.tcb.to_dict() == {"bl": 0, "tee": 0, "snp": 0, "ucode": 30}


def test_vcek_alone_is_missing_its_chain(vectors: Path) -> None:
    refused("attestation.certificate_missing", read(vectors, CASES[0].report),
            opts(vectors, "go-sev-guest/vcek.testcer"))


def test_no_certificates_at_all(vectors: Path) -> None:
    err = refused("attestation.certificate_missing", read(vectors, CASES[0].report),
                  VerifyOptions(now=NOW))
    assert "online" in err.detail


def test_root_not_pinned_is_refused(vectors: Path) -> None:
    genoa_ark = certs(vectors, "virtee-sev/builtin_genoa_ark.pem")[0]
    refused("attestation.root_untrusted", read(vectors, CASES[0].report),
            opts(vectors, *CASES[0].chain, trusted_roots=frozenset({fingerprint(genoa_ark)})))


def test_explicit_amd_root_still_secure(vectors: Path) -> None:
    ark = certs(vectors, "virtee-sev/builtin_milan_ark.pem")[0]
    result = sevsnp.verify(read(vectors, CASES[0].report),
                           opts(vectors, *CASES[0].chain,
                                trusted_roots=frozenset({fingerprint(ark)})))
    assert result.secure


@pytest.mark.parametrize(("when", "case"),
                         [("2026-01-01", 3), ("2021-06-01", 0), ("2046-01-01", 2)])
def test_outside_validity_is_refused(vectors: Path, when: str, case: int) -> None:
    refused("attestation.certificate_expired", read(vectors, CASES[case].report),
            opts(vectors, *CASES[case].chain, now=when))


def test_cached_chain_still_checks_time(vectors: Path) -> None:
    data = read(vectors, CASES[3].report)
    sevsnp.verify(data, opts(vectors, *CASES[3].chain))
    again = sevsnp.verify(data, opts(vectors, *CASES[3].chain))
    assert again.checks[1].detail.endswith("(cached)")
    refused("attestation.certificate_expired", data, opts(vectors, *CASES[3].chain,
                                                          now="2026-01-01"))


def test_pinned_ark_fingerprints_match_the_manifest(vectors: Path) -> None:
    for name, product in [("milan", "Milan"), ("genoa", "Genoa"), ("turin", "Turin")]:
        ark = certs(vectors, f"virtee-sev/builtin_{name}_ark.pem")[0]
        assert sevsnp.PINNED_ARKS[fingerprint(ark)] == product
    assert {fp[:16] for fp in sevsnp.PINNED_ARKS} == {
        "69d063b45344d26a", "4c6598d19c18719c", "1f084161a44bb6d9"}


# --- S9: Turin VCEK -------------------------------------------------------------------------------


def test_s9_turin_vcek_chain_and_extensions(vectors: Path) -> None:
    vcek = certs(vectors, "virtee-sev/vcek_turin.der")
    log = CheckLog()
    chain = sevsnp.verify_endorsements(
        vcek + certs(vectors, "virtee-sev/cert_chain_turin"), kind="vcek",
        options=VerifyOptions(now=NOW), log=log)
    assert chain.pinned_product == "Turin" and all(c.ok for c in log.checks)
    ext = chain.extensions
    assert ext.hwid is not None and ext.hwid.hex() == "1e550a8ee5cf9f4d"
    assert ext.product == "Turin" and ext.struct_version == 1
    assert ext.tcb.fmc == 0 and ext.tcb.ucode == 9
    assert ext.tcb_raw == 0x0900000000000000
    assert abi.decode_tcb(ext.tcb_raw, "Turin") == ext.tcb


def test_s9_turin_vcek_with_milan_chain_is_refused(vectors: Path) -> None:
    with pytest.raises(AttestationError) as info:
        sevsnp.verify_endorsements(
            certs(vectors, "virtee-sev/vcek_turin.der", "amd-roots/ask_ark_milan.pem"),
            kind="vcek", options=VerifyOptions(now=NOW), log=CheckLog())
    assert info.value.code == "attestation.chain_invalid"


# --- extended report (report || certificate table) ------------------------------------------------


def test_extended_report_carries_its_certificates(vectors: Path) -> None:
    from medclave.attestation.sevsnp.certs import (
        GUID_ARK,
        GUID_ASK,
        GUID_VCEK,
        encode_cert_table,
    )
    from medclave.attestation.x509chain import cert_der

    vcek, (ask, ark) = certs(vectors, "go-sev-guest/vcek.testcer")[0], certs(
        vectors, "amd-roots/ask_ark_milan.pem")
    table = encode_cert_table(((GUID_VCEK, cert_der(vcek)), (GUID_ASK, cert_der(ask)),
                               (GUID_ARK, cert_der(ark))))
    data = raw_report(vectors, CASES[0]) + table
    assert sevsnp.detect(data) == SNP
    result = sevsnp.verify(data, VerifyOptions(now=NOW))
    assert result.claims["measurement"].startswith("b07af962")
    assert "3 certificate(s) attached" in result.checks[0].detail
    refused("attestation.signature_invalid", flip(raw_report(vectors, CASES[0]), 0x50) + table,
            VerifyOptions(now=NOW))


# --- structure ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_encode_is_byte_exact(vectors: Path, case: Case) -> None:
    raw = raw_report(vectors, case)
    report = abi.parse_report(raw)
    assert abi.encode_report(report) == raw and report.signed_bytes == raw[:0x2A0]


def test_hex_text_with_whitespace(vectors: Path) -> None:
    raw = raw_report(vectors, CASES[0])
    text = raw.hex().upper()
    spaced = "\n".join(text[i:i + 64] for i in range(0, len(text), 64)).encode() + b"\n"
    assert abi.parse_report(spaced) == abi.parse_report(raw)
    assert sevsnp.detect(spaced) == SNP


def _mutated(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value):]


@pytest.mark.parametrize(("offset", "value", "code"), [
    (0x00, (4).to_bytes(4, "little"), "attestation.unsupported_version"),
    (0x00, (1).to_bytes(4, "little"), "attestation.unsupported_version"),
    (0x34, (2).to_bytes(4, "little"), "attestation.malformed"),
    (0x0A, b"\x00", "attestation.malformed"),  # policy bit 17 (must be one) cleared
    (0x0B, b"\x04", "attestation.reserved_nonzero"),  # policy bit 26
    (0x30, (4).to_bytes(4, "little"), "attestation.malformed"),  # VMPL 4
    (0x48, (0x20).to_bytes(4, "little"), "attestation.reserved_nonzero"),
    (0x48, (2 << 2).to_bytes(4, "little"), "attestation.malformed"),  # SIGNING_KEY 2
    (0x4C, b"\x01", "attestation.reserved_nonzero"),
    (0x188, b"\x19", "attestation.reserved_nonzero"),  # CPUID bytes in a v2 report
    (0x19F, b"\x01", "attestation.reserved_nonzero"),
    (0x1EB, b"\x01", "attestation.reserved_nonzero"),
    (0x1EF, b"\x01", "attestation.reserved_nonzero"),
    (0x1F8, b"\x01", "attestation.reserved_nonzero"),  # mitigation vector in a v2 report
    (0x29F, b"\x01", "attestation.reserved_nonzero"),
    (0x330, b"\x01", "attestation.reserved_nonzero"),  # signature tail
    (0x49F, b"\x01", "attestation.reserved_nonzero"),
])
def test_structural_refusals(vectors: Path, offset: int, value: bytes, code: str) -> None:
    data = _mutated(raw_report(vectors, CASES[0]), offset, value)
    with pytest.raises(AttestationError) as info:
        sevsnp.parse(data)
    assert info.value.code == code
    refused(code, data, opts(vectors, *CASES[0].chain))


def test_wrong_sizes_and_junk(vectors: Path) -> None:
    raw = raw_report(vectors, CASES[0])
    for data in (raw[:-1], raw + b"\x00", b"", b"zz" * 1184, raw.hex().encode()[:-2]):
        with pytest.raises(AttestationError) as info:
            sevsnp.parse(data)
        assert info.value.code in ("attestation.malformed", "attestation.unsupported_version")
    assert sevsnp.detect(raw[:-1]) is None and sevsnp.detect(b"\x00" * 1184) is None
    assert sevsnp.detect(b"{}") is None


def test_v3_cpuid_product_mapping() -> None:
    assert abi.product_from_cpuid(0x19, 0x01) == "Milan"
    assert abi.product_from_cpuid(0x19, 0x11) == "Genoa"
    assert abi.product_from_cpuid(0x19, 0xA0) == "Genoa"
    assert abi.product_from_cpuid(0x1A, 0x02) == "Turin"
    assert abi.product_from_cpuid(0x1A, 0x11) == "Turin"
    assert abi.product_from_cpuid(0x17, 0x31) is None
    assert abi.product_from_cpuid(0x19, 0x50) is None


def test_tcb_layouts() -> None:
    raw = 0x4405000000000002
    milan = abi.decode_tcb(raw, "Milan")
    assert milan.to_dict() == {"bl": 2, "tee": 0, "snp": 5, "ucode": 0x44}
    assert milan.encode() == raw
    turin = abi.decode_tcb(0x0901000000040302 | 0x1F << 24, "Turin")
    assert turin.to_dict() == {"fmc": 2, "bl": 3, "tee": 4, "snp": 0x1F, "ucode": 9}
    assert turin.encode() == 0x0901000000040302 | 0x1F << 24 and turin.reserved == (0, 0, 1)


def test_policy_decoding_all_bits() -> None:
    bits = abi.decode_policy(0x3FF << 16 | 0x0102).to_dict()  # bits 16..25, ABI 1.2
    assert bits["abi_major"] == 1 and bits["abi_minor"] == 2
    assert all(bits[k] for k in ("smt", "migrate_ma", "debug", "single_socket", "cxl_allow",
                                 "mem_aes_256_xts", "rapl_dis", "ciphertext_hiding",
                                 "page_swap_disable"))
