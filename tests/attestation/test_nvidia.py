"""NVIDIA H100 evidence against the real vectors (MANIFEST rows N1, N4, N5)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from medclave.attestation import nvidia, registry
from medclave.attestation.nvidia import abi, rim
from medclave.attestation.nvidia.rules import NvidiaPolicy, appraise, enforce
from medclave.attestation.nvidia.verify import (
    DEVICE_ROOT_FINGERPRINTS,
    ChainCache,
    leaf_fwid,
    parse_tcb_info,
    verify_report,
)
from medclave.attestation.x509chain import fingerprint, load_certificates
from medclave.errors import AttestationError, PolicyError
from tests.attestation._ecdsa import P384_N, raw_high_s
from tests.attestation._nvidia_helpers import (
    N1_NONCE,
    RIM_EXPIRED_AT,
    RIM_VALID_AT,
    Nvidia,
    load,
)
from tests.conftest import at, flip

pytestmark = pytest.mark.vectors

FWID = (
    "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b"
    "4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"
)


@pytest.fixture(scope="module")
def nv(vectors: Path) -> Nvidia:
    return load(vectors)


def refused(code: str, data: bytes, options: object, **kw: object) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        verify_report(data, options, chain_cache=None, **kw)  # type: ignore[arg-type]
    assert info.value.code == code, info.value
    return info.value


# --- pinned anchors -------------------------------------------------------------------------------


def test_pinned_roots_are_the_nvtrust_anchors(nv: Nvidia) -> None:
    device = load_certificates((nv.root / "nvtrust" / "verifier_device_root.pem").read_bytes())[0]
    corim = load_certificates((nv.root / "nvtrust" / "verifier_RIM_root.pem").read_bytes())[0]
    assert {fingerprint(device)} == DEVICE_ROOT_FINGERPRINTS
    assert fingerprint(device).startswith("102bf659d5419614")
    assert {fingerprint(corim)} == rim.RIM_ROOT_FINGERPRINTS
    assert fingerprint(nv.chain[-1]) == fingerprint(device)


# --- N1: parse and verify -------------------------------------------------------------------------


def test_detect(nv: Nvidia) -> None:
    assert nvidia.detect(nv.report_text) == "nvidia"
    assert nvidia.detect(nv.report) == "nvidia"
    assert nvidia.detect(b"\x04\x00\x02\x00" + bytes(100)) is None
    assert nvidia.detect(b"hello") is None
    assert registry.get("nvidia") is nvidia


def test_n1_parsed_claims_equal_trustee(nv: Nvidia) -> None:
    claims = nvidia.parse(nv.report_text)
    expected = nv.claims
    for key, value in expected["config"].items():
        assert claims[key] == value, key
    assert claims["measurements"] == expected["measurements"]
    assert claims["measurement_count"] == expected["config"]["measurement_count"]
    assert claims["spdm_version"] == "1.1"
    assert claims["block_count"] == 64
    assert claims["nonce"] == N1_NONCE.hex()
    assert claims["driver_version"] == "550.90.07"
    assert claims["vbios_version"] == "96.00.9f.00.01"
    assert (claims["project"], claims["project_sku"], claims["chip_sku"]) == ("1010", "0200", "882")
    assert claims["fwid"] == FWID
    assert claims["nvdec0_enabled"] is False  # 0x55 'U': disabled (nvtrust NVDEC_STATUS)


def test_n1_valid(nv: Nvidia) -> None:
    result = verify_report(nv.report_text, nv.options(expected_nonce=N1_NONCE), chain_cache=None)
    assert result.platform == "nvidia" and result.secure
    assert [c.name for c in result.checks] == [
        "0. parse", "1. device certificate chain", "1. device chain shape", "2. SPDM signature",
        "3. nonce", "4. FWID",
    ]
    assert all(c.ok for c in result.checks)
    claims = result.claims
    assert claims["nonce"] == N1_NONCE.hex()
    assert claims["fwid"] == FWID
    assert claims["measurements"] == nv.claims["measurements"]
    assert claims["rim_kinds"] == [] and claims["revocation_checked"] is False
    assert result.to_dict()["verified"] is True


def test_n1_binary_and_registry_entry_point(nv: Nvidia) -> None:
    a = nvidia.verify(nv.report, nv.options())
    b = registry.get("nvidia").verify(nv.report_text, nv.options())
    assert a.claims["measurements"] == b.claims["measurements"]


def _offset_of(report: bytes, needle: bytes) -> int:
    offset = report.find(needle)
    assert offset > 0
    return offset


@pytest.mark.parametrize("where", [
    "request nonce", "measurement block 2", "responder nonce", "driver version", "fwid",
    "opaque msrscnt", "signature",
])
def test_n1_one_flipped_signed_byte_refused(nv: Nvidia, where: str) -> None:
    report = nv.report
    offsets = {
        "request nonce": 4,
        "measurement block 2": _offset_of(report, bytes.fromhex("8048dfd18fe229bf")) + 5,
        "responder nonce": len(report) - 96 - 2 - 422 - 32 + 3,
        "driver version": _offset_of(report, b"550.90.07"),
        "fwid": _offset_of(report, bytes.fromhex(FWID)),
        "opaque msrscnt": _offset_of(report, bytes.fromhex("0c000001")) + 8,
        "signature": len(report) - 1,
    }
    tampered = flip(report, offsets[where])
    assert abi.parse_report(tampered)  # still well-formed: the signature is what refuses it
    error = refused("attestation.signature_invalid", tampered, nv.options())
    assert error.checks[-1].name == "2. SPDM signature" and not error.checks[-1].ok
    # Hex text twin too.
    refused("attestation.signature_invalid", tampered.hex().encode(), nv.options())


# --- bytes after the signature (issue 9, part 7) --------------------------------------------------


@pytest.mark.parametrize("form", ["binary", "hex"])
def test_n1_with_one_trailing_zero_byte_verifies(nv: Nvidia, form: str) -> None:
    """What Confidential Containers' attestation agent produced on a real H100: the report plus
    one zero byte. It was refused ("97 bytes after OpaqueData"); Trustee accepts it. The byte is
    unsigned, so it is ignored, and the checks say so."""
    padded = nv.report + b"\x00"
    data = padded if form == "binary" else padded.hex().encode()
    assert abi.parse_report(data).signed == abi.parse_report(nv.report).signed
    result = verify_report(data, nv.options(expected_nonce=N1_NONCE), chain_cache=None)
    assert result.secure and all(c.ok for c in result.checks)
    assert result.checks[0].name == "0. parse"
    assert "1 unsigned trailing byte(s) after the signature ignored" in result.checks[0].detail
    clean = verify_report(nv.report, nv.options(expected_nonce=N1_NONCE), chain_cache=None)
    assert "0 unsigned trailing byte(s)" in clean.checks[0].detail
    assert result.claims == clean.claims
    # One GPU answer, one identity: the digest covers request || response up to the signature.
    assert result.evidence_digest == clean.evidence_digest == hashlib.sha256(
        nv.report[:-96]).hexdigest()
    assert registry.evidence_digest("nvidia", data) == result.evidence_digest
    assert result.evidence_sha256 != clean.evidence_sha256


def test_n1_high_s_twin_verifies_with_the_same_digest(nv: Nvidia) -> None:
    """ECDSA P-384 allows (r, n - s) (SEC 1 §4.1.4; SPDM asks for no low s): the real report's
    twin verifies and is the same evidence by its signed bytes (issue 9, part 6)."""
    twin = nv.report[:-96] + raw_high_s(nv.report[-96:], P384_N)
    assert twin != nv.report
    result = verify_report(twin, nv.options(expected_nonce=N1_NONCE), chain_cache=None)
    assert result.secure and all(c.ok for c in result.checks)
    assert result.evidence_digest == hashlib.sha256(nv.report[:-96]).hexdigest()


def test_trailing_bytes_are_unsigned_and_bounded(nv: Nvidia) -> None:
    # Any value is ignored (never signed), up to the bound; one byte more is refused.
    verify_report(nv.report + b"\xff" * abi.MAX_TRAILING_BYTES, nv.options(), chain_cache=None)
    refused("attestation.malformed", nv.report + bytes(abi.MAX_TRAILING_BYTES + 1), nv.options())
    error = refused("attestation.malformed", nv.report + bytes(64 * 1024), nv.options())
    assert "65536 bytes after the 96-byte signature" in error.detail
    # Short of a whole signature is still malformed.
    refused("attestation.malformed", nv.report[:-1], nv.options())


@pytest.mark.parametrize("offset", [4, -2], ids=["request nonce", "signature"])
def test_flipped_signed_byte_with_a_trailing_byte_still_fails(nv: Nvidia, offset: int) -> None:
    # offset counts in the padded report: -2 is the signature's last byte, before the zero.
    tampered = flip(nv.report + b"\x00", offset)
    error = refused("attestation.signature_invalid", tampered, nv.options())
    assert error.checks[-1].name == "2. SPDM signature"


def test_n1_wrong_expected_nonce_refused(nv: Nvidia) -> None:
    error = refused("attestation.nonce_mismatch", nv.report_text,
                    nv.options(expected_nonce=flip(N1_NONCE, 31)))
    assert error.checks[-1].name == "3. nonce"
    refused("attestation.nonce_mismatch", nv.report_text, nv.options(expected_nonce=b"short"))


# --- N4 and other chain failures ------------------------------------------------------------------


def test_n4_case1_is_the_valid_chain(nv: Nvidia) -> None:
    chain = nv.chain_file("hopper_cert_chain_case1.txt")
    verify_report(nv.report_text, nv.options(chain=chain), chain_cache=None)


@pytest.mark.parametrize(("case", "code"), [
    (2, "attestation.certificate_missing"),  # root only
    (3, "attestation.chain_invalid"),  # GH100 Provisioner ICA missing: FMC LF <- BROM <- Identity
    (4, "attestation.certificate_missing"),  # leaf missing: BROM carries no FWID
])
def test_n4_incomplete_chains_refused(nv: Nvidia, case: int, code: str) -> None:
    chain = nv.chain_file(f"hopper_cert_chain_case{case}.txt")
    refused(code, nv.report_text, nv.options(chain=chain))


def test_n4_signing_cert_fwid(nv: Nvidia) -> None:
    leaf = nv.chain_file("../trustee/hopper_signing_cert.pem")[0]
    assert leaf_fwid(leaf) == bytes.fromhex(FWID)
    assert leaf == nv.chain[0]
    assert leaf_fwid(nv.chain[1]) is None  # the BROM certificate has no TcbInfo


def test_chain_failures(nv: Nvidia) -> None:
    refused("attestation.certificate_missing", nv.report_text, nv.options(chain=()))
    refused("attestation.root_untrusted", nv.report_text, nv.options(chain=nv.chain[::-1]))
    refused("attestation.root_untrusted", nv.report_text,
            nv.options(trusted_roots=frozenset({"00" * 32})))
    # Before the Provisioner ICA's notBefore (2022-03-01).
    refused("attestation.certificate_expired", nv.report_text, nv.options(now=at("2021-12-01")))
    # A chain from another evidence cannot vouch for this one: swap in a foreign leaf.
    refused("attestation.chain_invalid", nv.report_text,
            nv.options(chain=(nv.chain[2], *nv.chain[1:])))


def test_chain_cache_hits_and_honours_time(nv: Nvidia) -> None:
    cache = ChainCache(maxsize=2)
    first = verify_report(nv.report_text, nv.options(), chain_cache=cache)
    second = verify_report(nv.report_text, nv.options(), chain_cache=cache)
    assert "cached" not in first.checks[1].detail
    assert "cached" in second.checks[1].detail
    # A cached chain is still refused at a time outside every certificate's validity.
    with pytest.raises(AttestationError) as info:
        verify_report(nv.report_text, nv.options(now=at("2021-12-01")), chain_cache=cache)
    assert info.value.code == "attestation.certificate_expired"
    # Another root set is another key: no hit.
    with pytest.raises(AttestationError) as info:
        verify_report(nv.report_text, nv.options(trusted_roots=frozenset({"00" * 32})),
                      chain_cache=cache)
    assert info.value.code == "attestation.root_untrusted"


def test_tcb_info_parses_the_dice_fwidlist_layout() -> None:
    # DiceTcbInfo { vendor [0] "N", fwids [6] { FWID { sha384, 48 x 0xAB } } }
    fwid = bytes.fromhex("0609608648016503040202") + b"\x04\x30" + b"\xab" * 48
    fwid_seq = b"\x30" + bytes((len(fwid),)) + fwid
    body = b"\x80\x01N" + b"\xa6" + bytes((len(fwid_seq),)) + fwid_seq
    value = b"\x30" + bytes((len(body),)) + body
    (parsed,) = parse_tcb_info(value)
    assert parsed.hash_alg == "2.16.840.1.101.3.4.2.2" and parsed.digest == b"\xab" * 48
    with pytest.raises(AttestationError):
        parse_tcb_info(value[:-1])


# --- N5: reference integrity manifests ------------------------------------------------------------


def _vbios_from_name(name: str) -> str:
    raw = name.split("_")[3].lower()
    return ".".join(raw[i:i + 2] for i in range(0, 10, 2))


def test_n5_all_26_rims_verify_at_a_pinned_time(nv: Nvidia) -> None:
    names = nv.rim_names()
    assert len(names) == 26
    for name in names:
        manifest = rim.verify_rim(nv.rim(name), now=RIM_VALID_AT)
        assert manifest.signer.startswith("CN=HCC RIM L4 Signer")
        assert len(manifest.chain) == 4
        assert len(manifest.measurements) == 64
        if name.startswith("Driver"):
            assert (manifest.kind, manifest.version) == ("driver", "545.00")
        else:
            assert (manifest.kind, manifest.version) == ("vbios", _vbios_from_name(name))


@pytest.mark.parametrize("when", [RIM_EXPIRED_AT, at("2023-01-01")])
def test_n5_rims_refused_outside_signer_validity(nv: Nvidia, when: object) -> None:
    for name in nv.rim_names():
        with pytest.raises(AttestationError) as info:
            rim.verify_rim(nv.rim(name), now=when)  # type: ignore[arg-type]
        assert info.value.code == "attestation.rim_invalid"
        assert "certificate_expired" in info.value.detail


def test_n5_rim_refused_just_after_its_signer_expired(nv: Nvidia) -> None:
    data = nv.rim("1010_0200_882_96005E0001_PROD.swidtag")
    manifest = rim.verify_rim(data, now=RIM_VALID_AT)
    expiry = manifest.chain[0].not_valid_after_utc
    rim.verify_rim(data, now=expiry - timedelta(seconds=1))
    with pytest.raises(AttestationError, match="rim_invalid"):
        rim.verify_rim(data, now=expiry + timedelta(seconds=1))


def _tamper_hash(data: bytes) -> bytes:
    """One hex digit of a signed reference value changed (stays well-formed)."""
    m = re.search(rb'Hash0="c3f65ef7', data)
    assert m is not None
    return data[:m.start() + 7] + b"d" + data[m.start() + 8:]


TAMPERS: dict[str, Callable[[bytes], bytes]] = {
    "reference value": _tamper_hash,
    "colloquial version": lambda d: d.replace(b'colloquialVersion="96.00.5E.00.01"',
                                              b'colloquialVersion="96.00.9F.00.01"'),
    "signature value": lambda d: d.replace(b"<ds:SignatureValue>s5JY", b"<ds:SignatureValue>s5JZ"),
    "active flag": lambda d: d.replace(b'index="9" active="True"', b'index="9" active="False"'),
    "second signature": lambda d: d.replace(
        b"</ns0:Payload>",
        b"</ns0:Payload>" + d[d.index(b"<ds:Signature"):d.index(b"</ds:Signature>") + 15],
    ),
    "dtd": lambda d: b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + d,
    "signer certificate": lambda d: d.replace(b"MIICkTCCAhagAwIBAgIJAOgRIwjIjGzS",
                                              b"MIICkTCCAhagAwIBAgIJAOgRIwjIjGzT"),
    "truncated": lambda d: d[:-40],
}


@pytest.mark.parametrize("how", sorted(TAMPERS))
def test_n5_tampered_rim_refused(nv: Nvidia, how: str) -> None:
    data = nv.rim("1010_0200_882_96005E0001_PROD.swidtag")
    tampered = TAMPERS[how](data)
    assert tampered != data
    with pytest.raises(AttestationError) as info:
        rim.verify_rim(tampered, now=RIM_VALID_AT)
    assert info.value.code == "attestation.rim_invalid"


def test_n5_rim_with_unpinned_root_refused(nv: Nvidia) -> None:
    data = nv.rim("Driver_RIM_test_no_gpu.swidtag")
    with pytest.raises(AttestationError) as info:
        rim.verify_rim(data, now=RIM_VALID_AT, trusted_roots=frozenset(DEVICE_ROOT_FINGERPRINTS))
    assert info.value.code == "attestation.rim_invalid" and "root_untrusted" in info.value.detail


# --- N1 with the (non-matching) sample RIMs -------------------------------------------------------

SAMPLE_RIMS = ("Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_PROD.swidtag")


def test_n1_with_non_matching_rims_is_a_measurement_mismatch(nv: Nvidia) -> None:
    collateral = tuple(nv.rim(n) for n in SAMPLE_RIMS)
    error = refused("attestation.measurement_mismatch", nv.report_text,
                    nv.options(collateral=collateral))
    names = [c.name for c in error.checks]
    assert "5. RIM (driver 545.00)" in names and "5. RIM (vbios 96.00.5e.00.01)" in names
    assert error.checks[-1].name == "5. measurements vs RIM"
    assert "545.00" in error.detail and "96.00.9f.00.01" in error.detail
    mismatches = error.context["mismatches"]
    assert mismatches and all(m["actual"] != m["expected"][0] for m in mismatches)
    # Block 4 matches the VBIOS RIM's index 3 (73bbf358…), so it is not reported.
    assert 4 not in {m["index"] for m in mismatches}
    assert {m["index"] for m in mismatches} >= {2, 3, 35}


def test_n1_with_expired_or_tampered_rim_is_rim_invalid(nv: Nvidia) -> None:
    good = nv.rim(SAMPLE_RIMS[1])
    refused("attestation.rim_invalid", nv.report_text,
            nv.options(now=RIM_EXPIRED_AT, collateral=(good,)))
    refused("attestation.rim_invalid", nv.report_text,
            nv.options(collateral=(_tamper_hash(good),)))


def test_collateral_that_is_not_a_rim_is_ignored(nv: Nvidia) -> None:
    result = verify_report(nv.report_text, nv.options(collateral=(b"-----BEGIN X509 CRL-----",)))
    assert result.claims["rims"] == []


# --- measurement comparison rules (nvtrust verifier.Verifier) -------------------------------------


def _reference(kind: str, values: dict[int, bytes], active: bool = True) -> rim.VerifiedRim:
    return rim.VerifiedRim(
        kind=kind, version="x", tag_id="t", signer="s", chain=(), sha256="",
        measurements=tuple(
            rim.ReferenceMeasurement(index=i - 1, name=f"m{i}", size=len(v), active=active,
                                     alternatives=(b"\x00" * len(v), v))
            for i, v in sorted(values.items())
        ),
    )


def test_compare_measurements_rules(nv: Nvidia) -> None:
    blocks = abi.parse_report(nv.report).measurements
    driver = _reference("driver", {i: v for i, v in blocks.items() if i > 20})
    vbios = _reference("vbios", {i: v for i, v in blocks.items() if i <= 20})
    assert rim.compare_measurements(blocks, [driver, vbios], nvdec0_enabled=True) == ()

    changed = dict(blocks)
    changed[7] = bytes(48 * [1])
    (m,) = rim.compare_measurements(changed, [driver, vbios], nvdec0_enabled=True)
    assert (m.index, m.kind, m.actual) == (7, "vbios", "01" * 48)

    # Block 36 (RIM index 35) is compared only when NVDEC0 is enabled.
    changed = dict(blocks)
    changed[36] = bytes(48 * [1])
    assert rim.compare_measurements(changed, [driver, vbios], nvdec0_enabled=False) == ()
    assert len(rim.compare_measurements(changed, [driver, vbios], nvdec0_enabled=True)) == 1

    # A reference for a block the report lacks is a mismatch; inactive references are ignored.
    missing = {i: v for i, v in blocks.items() if i != 5}
    (gone,) = rim.compare_measurements(missing, [driver, vbios], nvdec0_enabled=True)
    assert gone.index == 5 and gone.actual is None
    assert rim.compare_measurements({}, [_reference("driver", blocks, active=False)],
                                    nvdec0_enabled=True) == ()

    # Two manifests claiming one index is an invalid pair (nvtrust InvalidMeasurementIndexError).
    with pytest.raises(AttestationError, match="rim_invalid"):
        rim.compare_measurements(blocks, [driver, _reference("vbios", blocks)], nvdec0_enabled=True)


# --- NVIDIA policy rules --------------------------------------------------------------------------


def test_validate_policy(nv: Nvidia) -> None:
    claims = verify_report(nv.report_text, nv.options()).claims
    assert [v.claim for v in appraise(claims, NvidiaPolicy())] == ["rim_kinds"]
    relaxed = NvidiaPolicy(require_rim=False)
    assert appraise(claims, relaxed) == ()
    ok = NvidiaPolicy(require_rim=False, allowed_driver_versions=("550.90.07",),
                      allowed_vbios_versions=("96.00.9F.00.01",), min_driver_version="550.54.14",
                      min_vbios_version="96.00.9f.00.01")
    assert appraise(claims, ok) == ()
    strict = NvidiaPolicy(allowed_driver_versions=("555.42.02",), min_driver_version="550.100.1",
                          min_vbios_version="96.00.a0.00.01", require_revocation_check=True)
    violations = appraise(claims, strict)
    assert {(v.code, v.claim) for v in violations} == {
        ("policy.refused", "driver_version"),
        ("policy.tcb_too_low", "driver_version"),
        ("policy.tcb_too_low", "vbios_version"),
        ("policy.refused", "rim_kinds"),
        ("policy.refused", "revocation_checked"),
    }
    with pytest.raises(PolicyError) as info:
        enforce(claims, strict)
    assert info.value.code == "policy.refused" and len(info.value.violations) == 5
    enforce(claims, relaxed)
    with pytest.raises(ValueError):
        NvidiaPolicy(min_driver_version="latest")
    with pytest.raises(ValueError):
        NvidiaPolicy(allowed_vbios_versions=("96.00.9f",))


def test_leaf_without_tcb_info_has_no_fwid(nv: Nvidia) -> None:
    assert leaf_fwid(nv.chain[-1]) is None
    assert isinstance(nv.chain[0], x509.Certificate)
