"""vTPM platforms against the real vectors (MANIFEST rows V1, V3), each with refused twins."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from medclave.attestation import registry, verifier, vtpm
from medclave.attestation.core import (
    Check,
    CheckLog,
    Endorsements,
    Verification,
    VerifyOptions,
)
from medclave.attestation.vtpm import coco, flows, hcl, tpm2
from medclave.attestation.x509chain import load_certificates
from medclave.errors import AttestationError
from tests.attestation import _vtpm_helpers as h
from tests.conftest import at, flip

NOW = at("2025-06-01")  # inside both bundled VCEKs' validity (2023-05…2030, 2025-01…2032)
MILAN_TCB_V0 = {"bl": 4, "tee": 0, "snp": 24, "ucode": 219}
MILAN_TCB_BIN = {"bl": 3, "tee": 0, "snp": 8, "ucode": 115}
V3_NONCE = "a04182b5"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def milan(vectors: Path) -> tuple[x509.Certificate, ...]:
    return tuple(load_certificates((vectors / "sev-snp/amd-roots/ask_ark_milan.pem").read_bytes()))


@pytest.fixture(scope="module")
def snp_dir(vectors: Path) -> Path:
    return vectors / h.SNP_DIR


@pytest.fixture(scope="module")
def v0(snp_dir: Path) -> bytes:
    return (snp_dir / "evidence-v0.json").read_bytes()


@pytest.fixture(scope="module")
def v1(snp_dir: Path) -> bytes:
    return (snp_dir / "evidence-v1.json").read_bytes()


@pytest.fixture(scope="module")
def bin_v1(vectors: Path) -> bytes:
    return h.composed_v1(vectors)


@pytest.fixture(scope="module")
def tpm_ev(vectors: Path) -> bytes:
    return (vectors / "vtpm/other/trustee_tpm_evidence.json").read_bytes()


@pytest.fixture(scope="module")
def tpm_ak(tpm_ev: bytes) -> str:
    spki = base64.b64decode(json.loads(tpm_ev)["ak_public"])
    return hashlib.sha256(spki).hexdigest()


def opts(certs: tuple[x509.Certificate, ...] = (), nonce: bytes | None = h.CHALLENGE,
         **kw: Any) -> VerifyOptions:
    return VerifyOptions(now=kw.pop("now", NOW), endorsements=Endorsements(certificates=certs),
                         expected_nonce=nonce, **kw)


def refused(data: bytes, options: VerifyOptions, code: str) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        vtpm.verify(data, options)
    assert info.value.code == code, info.value
    checks = info.value.checks
    assert checks and not checks[-1].ok, "the failed step is recorded last"
    assert all(c.ok for c in checks[:-1])
    return info.value


@pytest.fixture(scope="module", params=["v0", "v1"])
def azure(request: pytest.FixtureRequest) -> bytes:
    data: bytes = request.getfixturevalue(request.param)
    return data


# --- detection -----------------------------------------------------------------------------------


def test_detect_names_every_format(v0: bytes, v1: bytes, bin_v1: bytes, tpm_ev: bytes,
                                   vectors: Path) -> None:
    for data in (v0, v1, bin_v1, h.composed_v0(vectors)):
        assert vtpm.detect(data) == "az-snp-vtpm"
        assert registry.detect(data) == "az-snp-vtpm"
    assert vtpm.detect(tpm_ev) == "tpm"
    assert vtpm.detect((vectors / h.SNP_DIR / "hcl-report.bin").read_bytes()) is None
    assert vtpm.detect((vectors / "sev-snp/trustee/test-report.bin").read_bytes()) is None
    assert vtpm.detect(b'{"platform": "sev-snp"}') is None
    assert vtpm.detect(b"{not json") is None
    assert vtpm.detect(b'{"a": 1, "a": 2}') is None


# --- V1: Azure SNP vTPM, valid -------------------------------------------------------------------


def _assert_azure_claims(result: Verification, tcb: dict[str, int]) -> None:
    claims = result.claims
    assert result.platform == "az-snp-vtpm"
    assert all(c.ok for c in result.checks)
    assert claims["nonce"] == h.CHALLENGE.hex() == claims["report_data"]
    assert set(claims["pcrs"]) == {str(i) for i in range(24)}
    digest = hashlib.sha256(b"".join(bytes.fromhex(claims["pcrs"][str(i)]) for i in range(24)))
    assert claims["pcr_digest"] == digest.hexdigest()
    assert len(claims["ak_public"]) == 64 and claims["ak_public"] == claims["hcl"]["ak_public"]
    assert claims["hardware_platform"] == "sev-snp"
    hardware = claims["hardware"]
    assert hardware["reported_tcb_parts"] == tcb
    assert hardware["vmpl"] == 0
    var_hash = bytes.fromhex(hardware["report_data"])
    assert var_hash[32:] == bytes(32)
    assert result.tcb_status == "unknown" or result.tcb_status
    names = [c.name for c in result.checks]
    for step in ("sev-snp: report signature", "HCL binding", "SNP report VMPL",
                 "TPM quote signature", "PCR digest", "nonce (extraData)"):
        assert step in names
    # Trust order: the hardware is verified before anything it vouches for is used.
    assert names.index("sev-snp: report signature") < names.index("HCL binding") \
        < names.index("TPM quote signature") < names.index("PCR digest")


def test_v1_evidence_v0_v1_valid(azure: bytes, milan: tuple[x509.Certificate, ...]) -> None:
    result = vtpm.verify(azure, opts(milan))
    _assert_azure_claims(result, MILAN_TCB_V0)
    assert result.claims["pcrs"]["0"] == h.PCR0_V0
    assert result.claims["hcl"]["vm_configuration"]["secure-boot"] is True
    assert result.evidence_sha256 == hashlib.sha256(azure).hexdigest()
    # Identified by its two signed parts: the TPMS_ATTEST (length first), then the SNP report's
    # signed bytes [0, 0x2A0) inside the HCL report (after its 32-byte header).
    ev = coco.decode(azure)
    assert isinstance(ev, coco.AzureEvidence)
    message, snp_signed = ev.quote.message, ev.hcl_report[32:32 + 0x2A0]
    expected = hashlib.sha256(len(message).to_bytes(4, "big") + message + snp_signed).hexdigest()
    assert result.evidence_digest == expected
    assert registry.evidence_digest("az-snp-vtpm", azure) == expected
    # The registry entry is the same module.
    assert registry.get("az-snp-vtpm").verify(azure, opts(milan)).claims == result.claims


def test_v1_hcl_report_bin_and_quote_valid(bin_v1: bytes, snp_dir: Path) -> None:
    ask_ark = tuple(load_certificates((snp_dir / "vcek.pem").read_bytes())[1:])
    result = vtpm.verify(bin_v1, opts(ask_ark))
    _assert_azure_claims(result, MILAN_TCB_BIN)
    assert result.claims["evidence_version"] == 1


def test_v0_vcek_field_may_carry_the_whole_chain(vectors: Path) -> None:
    result = vtpm.verify(h.composed_v0(vectors), opts())
    _assert_azure_claims(result, MILAN_TCB_BIN)
    assert result.claims["evidence_version"] == 0


def test_no_expected_nonce_is_reported_not_checked(v1: bytes, milan: Any) -> None:
    result = vtpm.verify(v1, opts(milan, nonce=None))
    nonce_check = next(c for c in result.checks if c.name == "nonce (extraData)")
    assert "not checked" in nonce_check.detail


def test_parse_reports_claims_without_cryptography(v0: bytes, tpm_ev: bytes) -> None:
    claims = vtpm.parse(v0)
    assert claims["pcrs"]["0"] == h.PCR0_V0
    assert claims["nonce"] == h.CHALLENGE.hex()
    assert claims["hardware"]["reported_tcb_parts"] == MILAN_TCB_V0
    assert vtpm.parse(tpm_ev)["nonce"].startswith(V3_NONCE)


def test_lead_verifier_entry_point(v0: bytes, vectors: Path) -> None:
    pem = (vectors / "sev-snp/amd-roots/ask_ark_milan.pem").read_bytes()
    result = verifier.verify_raw(v0, now=NOW, certificates=[pem], nonce=h.CHALLENGE)
    assert result.platform == "az-snp-vtpm"
    with pytest.raises(AttestationError) as info:
        verifier.verify_raw(v0, now=NOW, certificates=[pem], nonce=b"challengf")
    assert info.value.code == "attestation.nonce_mismatch"


# --- V1 twins: one signed byte flipped -----------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 5, 10, 45, 60, -1])
def test_flipped_quote_message_is_signature_invalid(azure: bytes, milan: Any, offset: int) -> None:
    obj = json.loads(azure)
    quote = obj["quote"] if "quote" in obj else obj["tpm_quote"]
    if isinstance(quote["message"], list):
        quote["message"][offset] ^= 0x01
    else:
        quote["message"] = flip(bytes.fromhex(quote["message"]), offset).hex()
    refused(h.dumps(obj), opts(milan), "attestation.signature_invalid")


def test_flipped_quote_signature_is_signature_invalid(v1: bytes, milan: Any) -> None:
    obj = json.loads(v1)
    obj["tpm_quote"]["signature"] = flip(bytes.fromhex(obj["tpm_quote"]["signature"]), 100).hex()
    refused(h.dumps(obj), opts(milan), "attestation.signature_invalid")


@pytest.mark.parametrize("needle", [b'"vmUniqueId":"', b'"user-data":"', b'"kid":"HCLEkPub'])
def test_flipped_var_data_is_binding_mismatch(v1: bytes, milan: Any, needle: bytes) -> None:
    _, report, _ = h.v1_fields(v1)
    at_ = h.var_data_offset(report, needle)
    tampered = h.with_hcl(v1, flip(report, at_ if needle.endswith(b'"') else at_ - 1))
    err = refused(tampered, opts(milan), "attestation.binding_mismatch")
    assert err.checks[-1].name == "HCL binding"


def test_flipped_ak_in_var_data_is_binding_mismatch(bin_v1: bytes, snp_dir: Path) -> None:
    _, report, _ = h.v1_fields(bin_v1)
    ask_ark = tuple(load_certificates((snp_dir / "vcek.pem").read_bytes())[1:])
    at_ = h.var_data_offset(report, b'"n":"') + 20
    refused(h.with_hcl(bin_v1, flip(report, at_)), opts(ask_ark), "attestation.binding_mismatch")


@pytest.mark.parametrize("snp_offset", [0x10, 0x90, 0xC0, 0x140, 0x2A0, 0x2A0 + 72])
def test_flipped_snp_report_is_signature_invalid(v1: bytes, milan: Any, snp_offset: int) -> None:
    """Family id, measurement, host data, report id, then signature R and S."""
    _, report, _ = h.v1_fields(v1)
    tampered = h.with_hcl(v1, flip(report, hcl.HW_REPORT_OFFSET + snp_offset))
    err = refused(tampered, opts(milan), "attestation.signature_invalid")
    assert err.checks[-1].name.startswith("sev-snp: ")


@pytest.mark.parametrize("snp_offset", [0x00, 0x08, 0x30, 0x1A0])
def test_flipped_snp_structure_is_refused_by_the_snp_verifier(
    v1: bytes, milan: Any, snp_offset: int
) -> None:
    """Version, policy, VMPL, chip id: the SNP verifier may refuse before the signature."""
    _, report, _ = h.v1_fields(v1)
    with pytest.raises(AttestationError) as info:
        vtpm.verify(h.with_hcl(v1, flip(report, hcl.HW_REPORT_OFFSET + snp_offset)), opts(milan))
    assert info.value.checks[-1].name.startswith("sev-snp: ")


def test_flipped_snp_report_data_is_refused(v1: bytes, milan: Any) -> None:
    _, report, _ = h.v1_fields(v1)
    tampered = h.with_hcl(v1, flip(report, hcl.HW_REPORT_OFFSET + hcl.SNP_REPORT_DATA_OFFSET + 3))
    refused(tampered, opts(milan), "attestation.signature_invalid")


@pytest.mark.parametrize("index", [0, 7, 23])
def test_wrong_pcr_value_is_pcr_mismatch(v1: bytes, milan: Any, index: int) -> None:
    obj = json.loads(v1)
    obj["tpm_quote"]["pcrs"][index] = flip(bytes.fromhex(obj["tpm_quote"]["pcrs"][index]), 31).hex()
    err = refused(h.dumps(obj), opts(milan), "attestation.pcr_mismatch")
    assert err.checks[-1].name == "PCR digest"


def test_missing_pcr_value_is_malformed(v0: bytes, milan: Any) -> None:
    obj = json.loads(v0)
    obj["quote"]["pcrs"].pop()
    refused(h.dumps(obj), opts(milan), "attestation.malformed")


def test_wrong_nonce_is_nonce_mismatch(azure: bytes, milan: Any) -> None:
    refused(azure, opts(milan, nonce=b"challengf"), "attestation.nonce_mismatch")
    refused(azure, opts(milan, nonce=h.CHALLENGE + b"\0"), "attestation.nonce_mismatch")


def test_vcek_outside_validity_is_refused(v1: bytes, milan: Any) -> None:
    refused(v1, opts(milan, now=at("2024-06-01")), "attestation.certificate_expired")


def test_missing_ask_ark_is_refused(v1: bytes) -> None:
    refused(v1, opts(()), "attestation.certificate_missing")


def test_foreign_root_is_refused(v1: bytes, milan: Any) -> None:
    pinned = frozenset({"00" * 32})
    with pytest.raises(AttestationError) as info:
        vtpm.verify(v1, opts(milan, trusted_roots=pinned))
    assert info.value.code in ("attestation.root_untrusted", "attestation.chain_invalid")


def test_hcl_of_the_wrong_kind_is_malformed(v1: bytes, milan: Any) -> None:
    _, report, _ = h.v1_fields(v1)
    bad = bytearray(report)
    bad[hcl.REQUEST_OFFSET + 8] = hcl.REPORT_TYPE_TDX
    refused(h.with_hcl(v1, bytes(bad)), opts(milan), "attestation.malformed")


def test_unknown_member_is_malformed(v1: bytes, milan: Any) -> None:
    obj = json.loads(v1)
    obj["extra"] = 1
    with pytest.raises(AttestationError) as info:
        vtpm.verify(h.dumps(obj), opts(milan))
    assert info.value.code == "attestation.malformed"
    obj = json.loads(v1)
    obj["version"] = 3
    with pytest.raises(AttestationError, match="version"):
        vtpm.verify(h.dumps(obj), opts(milan))


def test_vmpl_other_than_zero_is_binding_mismatch(v1: bytes) -> None:
    _, report, _ = h.v1_fields(v1)
    parsed = hcl.parse_hcl_report(report)
    log = CheckLog()
    hcl.check_snp_vmpl(parsed, log=log)
    raised = bytearray(parsed.hw_report)
    raised[hcl.SNP_VMPL_OFFSET] = 1
    with pytest.raises(AttestationError) as info:
        hcl.check_snp_vmpl(replace(parsed, hw_report=bytes(raised)), log=log)
    assert info.value.code == "attestation.binding_mismatch"


# --- V3: plain TPM2 quote ------------------------------------------------------------------------


def test_v3_plain_tpm_valid_with_pinned_ak(tpm_ev: bytes, tpm_ak: str) -> None:
    claims = vtpm.parse(tpm_ev)
    nonce = bytes.fromhex(claims["nonce"])
    result = vtpm.verify(tpm_ev, opts(nonce=nonce, trusted_roots=frozenset({tpm_ak})))
    assert result.platform == "tpm"
    assert all(c.ok for c in result.checks)
    assert result.claims["nonce"].startswith(V3_NONCE) and len(nonce) == 64
    assert result.claims["ak_public"] == tpm_ak
    pcrs = result.claims["pcrs"]
    assert len(pcrs) == 24
    joined = b"".join(bytes.fromhex(pcrs[str(i)]) for i in range(24))
    assert result.claims["pcr_digest"] == hashlib.sha256(joined).hexdigest()
    assert result.claims["pcr_digest"].startswith("019de64c")
    assert registry.get("tpm").verify(tpm_ev, opts(nonce=nonce, trusted_roots=frozenset({tpm_ak})))
    # Identified by the TPMS_ATTEST the AK signed.
    message = base64.b64decode(json.loads(tpm_ev)["tpm_quote"]["message"])
    assert result.evidence_digest == hashlib.sha256(message).hexdigest()
    assert registry.evidence_digest("tpm", tpm_ev) == result.evidence_digest


def test_v3_unpinned_ak_is_root_untrusted(tpm_ev: bytes) -> None:
    refused(tpm_ev, opts(nonce=None), "attestation.root_untrusted")
    refused(tpm_ev, opts(nonce=None, trusted_roots=frozenset({"ab" * 32})),
            "attestation.root_untrusted")


@pytest.mark.parametrize("offset", [0, 7, 40, 100, -1])
def test_v3_flipped_message_is_signature_invalid(tpm_ev: bytes, tpm_ak: str, offset: int) -> None:
    obj = json.loads(tpm_ev)
    message = base64.b64decode(obj["tpm_quote"]["message"])
    obj["tpm_quote"]["message"] = base64.b64encode(flip(message, offset)).decode()
    refused(h.dumps(obj), opts(nonce=None, trusted_roots=frozenset({tpm_ak})),
            "attestation.signature_invalid")


def test_v3_wrong_pcr_and_nonce_refused(tpm_ev: bytes, tpm_ak: str) -> None:
    pinned = frozenset({tpm_ak})
    obj = json.loads(tpm_ev)
    obj["tpm_quote"]["pcrs"][3] = "11" * 32
    refused(h.dumps(obj), opts(nonce=None, trusted_roots=pinned), "attestation.pcr_mismatch")
    refused(tpm_ev, opts(nonce=b"\xa0" * 64, trusted_roots=pinned), "attestation.nonce_mismatch")


# --- TPM 2.0 schemes beyond the vectors (synthetic, real signatures) -----------------------------


def _pcrs(n: int) -> list[bytes]:
    return [hashlib.sha256(bytes([i])).digest() for i in range(n)]


def _quote(values: list[bytes], *, selections: list[tuple[int, list[int]]] | None = None,
           digest_hash: str = "sha256", **kw: Any) -> bytes:
    selections = selections or [(tpm2.TPM_ALG_SHA256, list(range(len(values))))]
    digest = hashlib.new(digest_hash, b"".join(values)).digest()
    return h.marshal_attest(extra=b"nonce", selections=selections, pcr_digest=digest, **kw)


def _verify(message: bytes, sig: bytes, key: Any, values: list[bytes]) -> tpm2.VerifiedQuote:
    return tpm2.verify_quote(message, tpm2.parse_signature(sig), key, values,
                             expected_nonce=b"nonce", log=CheckLog())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rsapss_quote(rsa_key: rsa.RSAPrivateKey) -> None:
    values = _pcrs(24)
    message = _quote(values)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    sig = h.marshal_rsa_signature(tpm2.TPM_ALG_RSAPSS, tpm2.TPM_ALG_SHA256,
                                  rsa_key.sign(message, pss, hashes.SHA256()))
    result = _verify(message, sig, rsa_key.public_key(), values)
    assert result.pcr_banks["sha256"]["23"] == values[23].hex()
    # The same bytes claimed as PKCS#1 v1.5 do not verify: the scheme is bound.
    as_ssa = h.marshal_rsa_signature(tpm2.TPM_ALG_RSASSA, tpm2.TPM_ALG_SHA256, sig[6:])
    with pytest.raises(AttestationError, match="signature"):
        _verify(message, as_ssa, rsa_key.public_key(), values)


@pytest.mark.parametrize(("curve", "hash_cls", "alg", "size"), [
    (ec.SECP256R1(), hashes.SHA256, tpm2.TPM_ALG_SHA256, 32),
    (ec.SECP384R1(), hashes.SHA384, tpm2.TPM_ALG_SHA384, 48),
])
def test_ecdsa_quote(curve: ec.EllipticCurve, hash_cls: Any, alg: int, size: int) -> None:
    key = ec.generate_private_key(curve)
    values = _pcrs(3)
    digest_name = hash_cls.name
    message = _quote(values, selections=[(tpm2.TPM_ALG_SHA256, [0, 7, 14])],
                     digest_hash=digest_name)
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hash_cls())))
    sig = h.marshal_ecdsa_signature(alg, r, s, size)
    result = _verify(message, sig, key.public_key(), values)
    assert set(result.pcr_banks["sha256"]) == {"0", "7", "14"}
    with pytest.raises(AttestationError) as info:
        _verify(message, h.marshal_ecdsa_signature(alg, r, s ^ 1, size), key.public_key(), values)
    assert info.value.code == "attestation.signature_invalid"


def test_sha1_signatures_and_mismatched_keys_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    values = _pcrs(2)
    message = _quote(values)
    raw = rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    sha1 = h.marshal_rsa_signature(tpm2.TPM_ALG_RSASSA, tpm2.TPM_ALG_SHA1, raw)
    with pytest.raises(AttestationError) as info:
        _verify(message, sha1, rsa_key.public_key(), values)
    assert info.value.code == "attestation.signature_invalid"
    ok = h.marshal_rsa_signature(tpm2.TPM_ALG_RSASSA, tpm2.TPM_ALG_SHA256, raw)
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(AttestationError) as info:
        _verify(message, ok, ec_key, values)
    assert info.value.code == "attestation.signature_invalid"
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    small_sig = h.marshal_rsa_signature(
        tpm2.TPM_ALG_RSASSA, tpm2.TPM_ALG_SHA256,
        small.sign(message, padding.PKCS1v15(), hashes.SHA256()))
    with pytest.raises(AttestationError, match="below"):
        _verify(message, small_sig, small.public_key(), values)


def test_signed_non_quote_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    values = _pcrs(1)
    for kw in ({"attest_type": 0x8017}, {"magic": 0xFF544348}):
        message = _quote(values, **kw)
        sig = h.marshal_rsa_signature(tpm2.TPM_ALG_RSASSA, tpm2.TPM_ALG_SHA256,
                                      rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA256()))
        with pytest.raises(AttestationError) as info:
            _verify(message, sig, rsa_key.public_key(), values)
        assert info.value.code == "attestation.malformed"
        assert info.value.checks[-2].name == "TPM quote signature"  # signature held


def test_pcr_selection_rules() -> None:
    two_banks = h.marshal_attest(extra=b"", pcr_digest=b"",
                                 selections=[(tpm2.TPM_ALG_SHA256, [1]), (tpm2.TPM_ALG_SHA1, [2])])
    attest = tpm2.parse_attest(two_banks)
    assert [s.bank for s in attest.selections] == ["sha256", "sha1"]
    with pytest.raises(AttestationError, match="bytes"):
        tpm2.bind_pcr_values(attest.selections, [bytes(32), bytes(32)])  # sha1 value is 20 bytes
    assert len(tpm2.bind_pcr_values(attest.selections, [bytes(32), bytes(20)])) == 2
    twice = h.marshal_attest(extra=b"", pcr_digest=b"",
                             selections=[(tpm2.TPM_ALG_SHA256, [1]), (tpm2.TPM_ALG_SHA256, [2])])
    with pytest.raises(AttestationError, match="twice"):
        tpm2.parse_attest(twice)
    with pytest.raises(AttestationError, match="trailing"):
        tpm2.parse_attest(two_banks + b"\0")


# --- HCL variable data rules ---------------------------------------------------------------------


def test_var_data_rules(rsa_key: rsa.RSAPrivateKey) -> None:
    ak = rsa_key.public_key()
    assert tpm2.key_fingerprint(hcl.parse_var_data(h.var_data(ak)).ak_public) \
        == tpm2.key_fingerprint(ak)
    jwk = h.rsa_jwk(ak, "HCLAkPub")
    two = json.dumps({"keys": [jwk, jwk]}).encode()
    with pytest.raises(AttestationError, match="twice"):
        hcl.parse_var_data(two)
    dup = b'{"keys": [], "keys": [' + json.dumps(jwk).encode() + b"]}"
    with pytest.raises(AttestationError, match="duplicate"):
        hcl.parse_var_data(dup)
    padded = dict(jwk, n="AA" + jwk["n"])
    with pytest.raises(AttestationError):
        hcl.parse_var_data(json.dumps({"keys": [padded]}).encode())
    with pytest.raises(AttestationError, match="HCLAkPub"):
        hcl.parse_var_data(b'{"keys": []}')


def test_hcl_envelope_rules(rsa_key: rsa.RSAPrivateKey) -> None:
    var = h.var_data(rsa_key.public_key())
    report = h.build_hcl(hcl.REPORT_TYPE_SNP, bytes(hcl.SNP_REPORT_SIZE), var, hash_type=2)
    parsed = hcl.parse_hcl_report(report)
    assert parsed.var_data == var and parsed.hash_type == "sha384"
    assert parsed.expected_report_data() == hashlib.sha384(var).digest() + bytes(16)
    bad_size = bytearray(report)
    bad_size[hcl.REQUEST_OFFSET] ^= 1
    with pytest.raises(AttestationError, match="data_size"):
        hcl.parse_hcl_report(bytes(bad_size))
    with pytest.raises(AttestationError, match="HCLA"):
        hcl.parse_hcl_report(b"XCLA" + report[4:])
    with pytest.raises(AttestationError, match="shorter"):
        hcl.parse_hcl_report(report[: hcl.VAR_DATA_OFFSET - 1])


# --- az-tdx-vtpm: the TDX verifier in the chain --------------------------------------------------


def _tdx_evidence(td_quote: bytes, ak: rsa.RSAPrivateKey, *, nonce: bytes = h.CHALLENGE,
                  hw: bytes = b"") -> tuple[bytes, bytes]:
    """az-tdx-vtpm v1 evidence with a vTPM quote signed by ``ak``; returns (evidence, var data)."""
    var = h.var_data(ak.public_key())
    report = h.build_hcl(hcl.REPORT_TYPE_TDX, hw or bytes(hcl.TD_REPORT_SIZE), var)
    values = _pcrs(24)
    message = h.marshal_attest(extra=nonce, selections=[(tpm2.TPM_ALG_SHA256, list(range(24)))],
                               pcr_digest=hashlib.sha256(b"".join(values)).digest())
    evidence = h.dumps({
        "version": 1,
        "tpm_quote": {"signature": ak.sign(message, padding.PKCS1v15(), hashes.SHA256()).hex(),
                      "message": message.hex(), "pcrs": [v.hex() for v in values]},
        "hcl_report": h.b64url(report),
        "td_quote": h.b64url(td_quote),
    })
    return evidence, var


def test_tdx_vtpm_real_td_quote_not_binding_the_vtpm_is_refused(
    vectors: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """A genuine TD quote (dcap-qvl T7) whose report_data does not hash this variable data."""
    qvl = vectors / "tdx/dcap-qvl"
    evidence, _ = _tdx_evidence((qvl / "tdx_quote").read_bytes(), rsa_key)
    assert vtpm.detect(evidence) == "az-tdx-vtpm"
    options = VerifyOptions(
        now=at("2025-07-01"), expected_nonce=h.CHALLENGE,
        endorsements=Endorsements(collateral=((qvl / "tdx_quote_collateral.json").read_bytes(),)))
    err = refused(evidence, options, "attestation.binding_mismatch")
    names = [c.name for c in err.checks]
    assert any(n.startswith("tdx: ") and "quote signature" in n for n in names)
    assert names[-1] == "HCL binding"
    # And a TD quote with one flipped byte never reaches the binding.
    bad, _ = _tdx_evidence(flip((qvl / "tdx_quote").read_bytes(), 200), rsa_key)
    with pytest.raises(AttestationError) as info:
        vtpm.verify(bad, options)
    assert info.value.checks[-1].name.startswith("tdx: ")


class _StandInTdx:
    """Stands in for the TDX verifier where no Azure TDX vector exists: it only answers the
    report_data it is told to, so the flow around it (binding, quote, PCRs, nonce) is exercised."""

    def __init__(self, td_quote: bytes, report_data: bytes) -> None:
        self.td_quote, self.report_data = td_quote, report_data

    def verify(self, data: bytes, options: VerifyOptions) -> Verification:
        assert data == self.td_quote and options.expected_nonce is None
        return Verification(platform="tdx", claims={"report_data": self.report_data.hex()},
                            checks=(Check("stand-in", True),), tcb_status="UpToDate")

    def signed_bytes(self, data: bytes) -> bytes:
        assert data == self.td_quote
        return b"signed:" + data


def test_tdx_vtpm_flow_with_stand_in_hardware(
    monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey
) -> None:
    td_quote = b"TDQUOTE"
    evidence, var = _tdx_evidence(td_quote, rsa_key)
    good = _StandInTdx(td_quote, hashlib.sha256(var).digest() + bytes(32))
    monkeypatch.setattr(flows, "_platform", lambda name: good if name == "tdx" else None)
    result = vtpm.verify(evidence, opts())
    assert result.platform == "az-tdx-vtpm" and result.tcb_status == "UpToDate"
    assert result.claims["hardware_platform"] == "tdx"
    assert result.claims["nonce"] == h.CHALLENGE.hex()
    message = bytes.fromhex(json.loads(evidence)["tpm_quote"]["message"])
    assert result.evidence_digest == hashlib.sha256(
        len(message).to_bytes(4, "big") + message + b"signed:" + td_quote).hexdigest()
    # Twins: the variable data hash off by one bit, a non-zero tail, a flipped quote, a nonce.
    for report_data in (flip(good.report_data, 0), good.report_data[:32] + b"\1" + bytes(31)):
        stand_in = _StandInTdx(td_quote, report_data)
        monkeypatch.setattr(flows, "_platform", lambda name, s=stand_in: s)
        refused(evidence, opts(), "attestation.binding_mismatch")
    monkeypatch.setattr(flows, "_platform", lambda name: good)
    obj = json.loads(evidence)
    obj["tpm_quote"]["message"] = flip(bytes.fromhex(obj["tpm_quote"]["message"]), 20).hex()
    refused(h.dumps(obj), opts(), "attestation.signature_invalid")
    refused(evidence, opts(nonce=b"other"), "attestation.nonce_mismatch")


def test_decode_formats(v0: bytes, v1: bytes, tpm_ev: bytes) -> None:
    e0, e1, et = coco.decode(v0), coco.decode(v1), coco.decode(tpm_ev)
    assert isinstance(e0, coco.AzureEvidence) and e0.version == 0 and len(e0.certificates) == 1
    assert isinstance(e1, coco.AzureEvidence) and e1.version == 1
    assert isinstance(et, coco.TpmEvidence) and et.quote.signature.sig_alg == tpm2.TPM_ALG_RSASSA
