"""SEV-SNP paths no real vector reaches, through a synthetic chain under ``trusted_roots``:
Turin v5 reports, CRLs, TCB and chip-id mismatches, key types, signer flags."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.attestation import sevsnp
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.sevsnp.abi import Report, TcbParts
from medclave.attestation.sevsnp.certs import kds_extensions
from medclave.attestation.x509chain import load_certificates
from medclave.errors import AttestationError
from tests.attestation.snp_synth import Chain, make_chain, make_crl, sign
from tests.conftest import at, flip

NOW = at("2025-07-01")
TURIN_TCB = TcbParts(fmc=1, bl=2, tee=3, snp=4, ucode=5, reserved=(0, 0, 0))
MILAN_TCB = TcbParts(bl=3, tee=0, snp=8, ucode=115)
CHIP = bytes(range(1, 65))


def turin_report(**kw: object) -> Report:
    fields: dict[str, object] = dict(
        version=5, policy=0x30000, cpuid_fam_id=0x1A, cpuid_mod_id=0x02, cpuid_step=1,
        reported_tcb=TURIN_TCB.encode(), current_tcb=TURIN_TCB.encode(),
        committed_tcb=TURIN_TCB.encode(), launch_tcb=TURIN_TCB.encode(), chip_id=CHIP,
        measurement=b"\x11" * 48, report_data=b"\x22" * 64, platform_info=1,
        launch_mit_vector=0x5, current_mit_vector=0x7, current_major=1, current_minor=57,
        current_build=3,
    )
    fields.update(kw)
    return Report(**fields)  # type: ignore[arg-type]


def milan_report(**kw: object) -> Report:
    fields: dict[str, object] = dict(version=2, policy=0x30000, reported_tcb=MILAN_TCB.encode(),
                                     chip_id=CHIP)
    fields.update(kw)
    return Report(**fields)  # type: ignore[arg-type]


def options(chain: Chain, *, collateral: tuple[bytes, ...] = (), now: datetime = NOW,
            certs: tuple[object, ...] | None = None) -> VerifyOptions:
    return VerifyOptions(now=now, trusted_roots=chain.roots, endorsements=Endorsements(
        certificates=chain.certs if certs is None else certs, collateral=collateral))  # type: ignore[arg-type]


def refused(code: str, data: bytes, opts: VerifyOptions) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        sevsnp.verify(data, opts)
    assert info.value.code == code, info.value.detail
    return info.value


@pytest.fixture(scope="module")
def turin() -> Chain:
    return make_chain("Turin", tcb=TURIN_TCB, hwid=CHIP[:8])


@pytest.fixture(scope="module")
def milan() -> Chain:
    return make_chain("Milan", tcb=MILAN_TCB, hwid=CHIP)


# --- Turin v5 -------------------------------------------------------------------------------------


def test_turin_v5_report_verifies_with_turin_layout(turin: Chain) -> None:
    data = sign(turin_report(), turin.leaf_key)
    result = sevsnp.verify(data, options(turin))
    c = result.claims
    assert c["product"] == "Turin" and c["version"] == 5
    assert c["reported_tcb_parts"] == {"fmc": 1, "bl": 2, "tee": 3, "snp": 4, "ucode": 5}
    assert c["launch_mit_vector"] == "0000000000000005"
    assert c["current_mit_vector"] == "0000000000000007"
    assert c["current_fw"] == "1.57.3"
    assert not result.secure  # a test root is not AMD: verified, but protects nothing
    refused("attestation.signature_invalid", flip(data, 0x1F8), options(turin))


def test_turin_compares_only_the_8_byte_hwid(turin: Chain) -> None:
    # Bytes past the first 8 of CHIP_ID are not part of a Turin VCEK's hwID.
    sevsnp.verify(sign(turin_report(chip_id=CHIP[:8] + b"\xff" * 56), turin.leaf_key),
                  options(turin))
    err = refused("attestation.chip_id_mismatch",
                  sign(turin_report(chip_id=b"\x00" * 7 + b"\x01" + CHIP[8:]), turin.leaf_key),
                  options(turin))
    assert CHIP[:8].hex() in err.detail


def test_turin_wrapped_hwid_is_accepted() -> None:
    chain = make_chain("Turin", tcb=TURIN_TCB, hwid=CHIP[:8], wrap_hwid=True)
    assert kds_extensions(chain.leaf).hwid == CHIP[:8]
    sevsnp.verify(sign(turin_report(), chain.leaf_key), options(chain))


def test_v5_reserved_after_mitigation_vectors(turin: Chain) -> None:
    data = bytearray(sign(turin_report(), turin.leaf_key))
    data[0x208] = 1
    refused("attestation.reserved_nonzero", bytes(data), options(turin))


# --- TCB, chip id, product ------------------------------------------------------------------------


def test_tcb_mismatch(milan: Chain) -> None:
    newer = replace(MILAN_TCB, ucode=116)
    err = refused("attestation.tcb_mismatch",
                  sign(milan_report(reported_tcb=newer.encode()), milan.leaf_key), options(milan))
    assert "116" in err.detail and "115" in err.detail


def test_chip_id_mismatch_and_mask(milan: Chain) -> None:
    other = bytes(64 - 1) + b"\x01"
    refused("attestation.chip_id_mismatch", sign(milan_report(chip_id=other), milan.leaf_key),
            options(milan))
    masked = sevsnp.verify(sign(milan_report(chip_id=bytes(64)), milan.leaf_key), options(milan))
    assert masked.claims["mask_chip_id"] is True and "MASK_CHIP_ID" in masked.checks[-1].detail


def test_cpuid_product_must_match_the_chain(milan: Chain) -> None:
    genoa_cpu = milan_report(version=3, cpuid_fam_id=0x19, cpuid_mod_id=0x11, cpuid_step=1)
    err = refused("attestation.chain_invalid", sign(genoa_cpu, milan.leaf_key), options(milan))
    assert "Genoa" in err.detail and "Milan" in err.detail


def test_several_vceks_pick_the_matching_one(milan: Chain) -> None:
    stale = make_chain("Milan", tcb=replace(MILAN_TCB, snp=7), hwid=CHIP)
    data = sign(milan_report(), milan.leaf_key)
    # Two VCEKs named SEV-VCEK (e.g. before and after a TCB update): the one whose TCB and
    # hwID match the report is used, and among same-named ASKs/ARKs the one whose signature
    # holds is its issuer.
    opts = options(milan, certs=(stale.leaf, stale.ask, stale.ark, *milan.certs))
    sevsnp.verify(data, opts)
    refused("attestation.root_untrusted", sign(milan_report(reported_tcb=replace(
        MILAN_TCB, snp=7).encode()), stale.leaf_key), opts)


# --- signer flags and key types -------------------------------------------------------------------


@pytest.mark.parametrize("key_info", [0b10, 7 << 2])
def test_unsigned_reports_are_refused(milan: Chain, key_info: int) -> None:
    data = sign(milan_report(key_info=key_info), milan.leaf_key)
    err = refused("attestation.signature_invalid", data, options(milan))
    assert "not signed by a chip key" in err.detail


def test_ed25519_root_works_under_trusted_roots() -> None:
    chain = make_chain("Milan", tcb=MILAN_TCB, hwid=CHIP, ark_type="ed25519")
    sevsnp.verify(sign(milan_report(), chain.leaf_key), options(chain))


def test_leaf_must_be_p384() -> None:
    chain = make_chain("Milan", tcb=MILAN_TCB, hwid=CHIP, leaf_curve=ec.SECP256R1())
    report = milan_report()
    p384 = ec.generate_private_key(ec.SECP384R1())
    refused("attestation.signature_invalid", sign(report, p384), options(chain))


def test_vlek_kind_under_test_root() -> None:
    chain = make_chain("Genoa", kind="vlek", tcb=MILAN_TCB, hwid=None)
    result = sevsnp.verify(sign(milan_report(key_info=1 << 2), chain.leaf_key), options(chain))
    assert result.claims["signing_key"] == "vlek" and result.claims["product"] == "Genoa"


def test_test_root_is_not_trusted_by_default(milan: Chain) -> None:
    opts = VerifyOptions(now=NOW, endorsements=Endorsements(certificates=milan.certs))
    refused("attestation.root_untrusted", sign(milan_report(), milan.leaf_key), opts)


def test_expired_leaf(milan: Chain) -> None:
    chain = make_chain("Milan", tcb=MILAN_TCB, hwid=CHIP,
                       leaf_not_after=datetime(2025, 1, 1, tzinfo=UTC))
    refused("attestation.certificate_expired", sign(milan_report(), chain.leaf_key),
            options(chain))


# --- CRLs -----------------------------------------------------------------------------------------


def _der(crl: object) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)  # type: ignore[attr-defined,no-any-return]


def _pem(crl: object) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("encode", [_der, _pem])
def test_crl_revoking_the_ask(milan: Chain, encode: object) -> None:
    crl = make_crl(milan.ark, milan.ark_key, revoked=(milan.ask.serial_number,))
    data = sign(milan_report(), milan.leaf_key)
    refused("attestation.certificate_revoked", data,
            options(milan, collateral=(encode(crl),)))  # type: ignore[operator]


def test_crl_that_revokes_nothing_is_checked_and_passes(milan: Chain) -> None:
    crl = make_crl(milan.ark, milan.ark_key, revoked=(999,))
    result = sevsnp.verify(sign(milan_report(), milan.leaf_key),
                           options(milan, collateral=(b"not a crl", _der(crl))))
    assert any(c.name.startswith("CRL ") and c.ok for c in result.checks)


def test_stale_crl_is_refused(milan: Chain) -> None:
    crl = make_crl(milan.ark, milan.ark_key, last=datetime(2024, 1, 1, tzinfo=UTC), days=30)
    refused("attestation.collateral_invalid", sign(milan_report(), milan.leaf_key),
            options(milan, collateral=(_der(crl),)))


def test_forged_crl_is_refused(milan: Chain) -> None:
    forger = ec.generate_private_key(ec.SECP384R1())
    crl = make_crl(milan.ark, forger)
    refused("attestation.collateral_invalid", sign(milan_report(), milan.leaf_key),
            options(milan, collateral=(_der(crl),)))


def test_forged_crl_against_the_real_amd_chain(vectors: Path) -> None:
    snp = vectors / "sev-snp"
    certs = tuple(load_certificates((snp / "go-sev-guest/vcek.testcer").read_bytes())
                  + load_certificates((snp / "amd-roots/ask_ark_milan.pem").read_bytes()))
    ark = certs[-1]
    crl = make_crl(ark, ec.generate_private_key(ec.SECP384R1()))  # named ARK-Milan, not by it
    opts = VerifyOptions(now=NOW, endorsements=Endorsements(certificates=certs,
                                                            collateral=(_der(crl),)))
    refused("attestation.collateral_invalid", (snp / "go-sev-guest/attestation.bin").read_bytes(),
            opts)


def test_broken_pem_crl_is_an_error(milan: Chain) -> None:
    junk = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    refused("attestation.malformed", sign(milan_report(), milan.leaf_key),
            options(milan, collateral=(junk,)))


# --- bounded parsers ----------------------------------------------------------------------------


def _entry(guid: bytes, offset: int, length: int) -> bytes:
    import struct

    return guid + struct.pack("<II", offset, length)


@pytest.mark.parametrize("table", [
    b"",  # no terminator
    _entry(b"\x01" * 16, 48, 4),  # no terminator after one entry
    _entry(b"\x01" * 16, 24, 4) + bytes(24) + b"abcd",  # points into the header
    _entry(b"\x01" * 16, 48, 100) + bytes(24) + b"abcd",  # runs past the end
    _entry(b"\x01" * 16, 48, 0) + bytes(24) + b"abcd",  # empty certificate
    b"".join(_entry(bytes([i + 1]) * 16, 500, 1) for i in range(17)) + bytes(24) + b"x" * 100,
    bytes(24) + b"\x00" * (64 * 1024),  # over the size bound
])
def test_cert_table_bounds(table: bytes) -> None:
    from medclave.attestation.sevsnp.certs import parse_cert_table

    with pytest.raises(AttestationError) as info:
        parse_cert_table(table)
    assert info.value.code == "attestation.malformed"


def test_cert_table_round_trip(milan: Chain) -> None:
    from medclave.attestation.sevsnp.certs import (
        GUID_ASK,
        GUID_VCEK,
        certificates_from_table,
        encode_cert_table,
        parse_cert_table,
    )
    from medclave.attestation.x509chain import cert_der

    table = encode_cert_table(((GUID_VCEK, cert_der(milan.leaf)), (GUID_ASK, cert_der(milan.ask))))
    assert [e.guid for e in parse_cert_table(table)] == [GUID_VCEK, GUID_ASK]
    assert certificates_from_table(table) == (milan.leaf, milan.ask)
    assert parse_cert_table(bytes(24)) == ()


@pytest.mark.parametrize(("value", "ok"), [
    (b"\x02\x01\x05", 5), (b"\x02\x02\x00\xff", 255), (b"\x02\x01\xff", None),  # negative
    (b"\x02\x02\x00\x05", None),  # non-minimal
    (b"\x02\x02\x01\x00", None),  # 256
    (b"\x04\x01\x05", None), (b"\x02\x01", None), (b"\x02\x81\x01\x05", None),
    (b"\x02\x01\x05\x00", None),  # trailing byte
])
def test_der_integer_extension_values(value: bytes, ok: int | None) -> None:
    from medclave.attestation.sevsnp.certs import _der_u8

    if ok is None:
        with pytest.raises(AttestationError):
            _der_u8(value, "x")
    else:
        assert _der_u8(value, "x") == ok


def test_vcek_without_tcb_extension_is_malformed() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from tests.attestation.snp_synth import _name

    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name("SEV-VCEK")).issuer_name(_name("X"))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(datetime(2024, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
            .sign(key, hashes.SHA384()))
    with pytest.raises(AttestationError) as info:
        kds_extensions(cert)
    assert info.value.code == "attestation.malformed" and "structVersion" in info.value.detail
