"""GCE vTPM attestation G3 of the vectors MANIFEST (go-tpm-tools, nonce 0x9009), and
attestations under a test AK CA for the paths no public vector reaches."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from medclave.attestation import registry
from medclave.attestation.binding import report_data_for
from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.gcp import tpm
from medclave.attestation.policy import appraisal_of, default_policy, parse_policy
from medclave.attestation.verifier import verify_bundle, verify_raw
from medclave.attestation.x509chain import fingerprint, load_certificates
from medclave.errors import AttestationError
from medclave.protocol.evidence import EvidenceBundle
from tests.attestation._gce_forge import GcePki
from tests.conftest import flip

G3 = "gce-cos-85-nonce9009.pb"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def g(vectors: Path) -> dict[str, bytes]:
    d = vectors / "gcp-confidential-space" / "go-tpm-tools"
    return {"pb": (d / G3).read_bytes(), "root": (d / "tpm_ek_root_1.cer").read_bytes(),
            "int2": (d / "tpm_ek_intermediate_2.crt").read_bytes(),
            "int3": (d / "tpm_ek_intermediate_3.crt").read_bytes(),
            "gcp_root": (d / "gcp_ek_ak_ca_root.crt").read_bytes()}


def opts(g: dict[str, bytes], *names: str, now: datetime = NOW,
         nonce: bytes | None = None) -> VerifyOptions:
    certs = tuple(c for n in names for c in load_certificates(g[n]))
    return VerifyOptions(now=now, expected_nonce=nonce,
                         endorsements=Endorsements(certificates=certs))


def refused(data: bytes, options: VerifyOptions) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        tpm.verify(data, options)
    return info.value


def test_pinned_roots_are_googles(g: dict[str, bytes]) -> None:
    for name in ("root", "gcp_root"):
        assert fingerprint(load_certificates(g[name])[0]) in tpm.GOOGLE_AK_ROOTS


def test_g3_verifies_with_its_chain_and_nonce(g: dict[str, bytes]) -> None:
    assert registry.detect(g["pb"]) == "gce-tpm"
    v = tpm.verify(g["pb"], opts(g, "root", "int2", "int3", nonce=bytes.fromhex("9009")))
    c = v.claims
    assert v.secure and c["nonce"] == "9009" and c["report_data"] == "9009"
    assert set(c["pcr_banks"]) == {"sha1", "sha256", "sha384"}
    assert all(len(bank) == 24 for bank in c["pcr_banks"].values())
    assert c["pcrs"]["0"].startswith("0f35c214") and c["pcrs"]["4"].startswith("d690bdac")
    assert c["pcrs"]["7"].startswith("3365d7fa") and c["event_log_replayed"] is False
    assert "tpm_ek_v1_cloud_host-signer-0-2020-10-22" in v.checks[1].detail
    assert sum(1 for x in v.checks if x.name.endswith("TPM quote signature")) == 3
    assert v.warnings


def test_g3_policy(g: dict[str, bytes]) -> None:
    v = tpm.verify(g["pb"], opts(g, "root", "int2"))
    assert [x["code"] for x in appraisal_of(v, default_policy(), now=NOW).violations] == [
        "policy.platform_not_allowed"]
    pcr7 = v.claims["pcrs"]["7"]
    named = parse_policy(f'platforms = ["gce-tpm"]\n[platform.gce-tpm.reference_values]\n'
                         f'"pcrs.7" = ["{pcr7}"]\n'.encode())
    assert appraisal_of(v, named, now=NOW).accepted
    wrong = parse_policy(b'platforms = ["gce-tpm"]\n[platform.gce-tpm.reference_values]\n'
                         b'"pcrs.7" = ["' + b"00" * 32 + b'"]\n')
    assert not appraisal_of(v, wrong, now=NOW).accepted


def test_g3_nonce_refusals(g: dict[str, bytes]) -> None:
    err = refused(g["pb"], opts(g, "root", "int2", nonce=bytes.fromhex("9008")))
    assert err.code == "attestation.nonce_mismatch"
    with pytest.raises(AttestationError) as info:  # expected but empty: never "matches"
        verify_raw(g["pb"], now=NOW, certificates=[g["root"], g["int2"]], nonce=b"")
    assert info.value.code == "attestation.nonce_mismatch"


def test_g3_chain(g: dict[str, bytes]) -> None:
    assert refused(g["pb"], opts(g, "root")).code == "attestation.root_untrusted"
    assert refused(g["pb"], opts(g, "int2")).code == "attestation.root_untrusted"
    early = refused(g["pb"], opts(g, "root", "int2", now=datetime(2021, 8, 30, tzinfo=UTC)))
    assert early.code == "attestation.certificate_expired"


def test_g3_flipped_bytes(g: dict[str, bytes]) -> None:
    data = g["pb"]
    ev = tpm.decode(data)
    quote = data.index(ev.quotes[1].message)
    err = refused(flip(data, quote + 40), opts(g, "root", "int2"))
    assert err.code == "attestation.signature_invalid" and "quote 1" in err.checks[-1].name
    pcr = data.index(ev.quotes[1].values[7])
    err = refused(flip(data, pcr + 3), opts(g, "root", "int2"))
    assert err.code == "attestation.pcr_mismatch"
    sig = data.index(ev.quotes[2].signature.value)
    assert refused(flip(data, sig + 100), opts(g, "root", "int2")).code == (
        "attestation.signature_invalid")


def test_forged_attestation_binds_a_bundle() -> None:
    pki = GcePki()
    roots = frozenset({fingerprint(pki.root)})
    nonce, runtime = b"\x05" * 32, {"engine": "gce"}
    data = pki.attestation(report_data_for(nonce, runtime))
    root_pem = pki.root.public_bytes(Encoding.PEM)
    v = verify_raw(data, now=NOW, certificates=[root_pem], trusted_roots=roots)
    assert v.platform == "gce-tpm" and v.secure is False
    bundle = EvidenceBundle(platform="gce-tpm", evidence=base64.b64encode(data).decode(),
                            nonce=nonce.hex(), runtime=runtime,
                            endorsements={"certificates": [root_pem.decode()]})
    assert verify_bundle(bundle, now=NOW, expected_nonce=nonce, trusted_roots=roots)
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle.model_copy(update={"runtime": {}}), now=NOW, expected_nonce=nonce,
                      trusted_roots=roots)
    assert info.value.code == "attestation.binding_mismatch"


def test_unrestricted_ak_is_refused() -> None:
    pki = GcePki(attributes=0x00040072)  # sign, fixedTPM, but not restricted
    data = pki.attestation(b"\x01" * 8)
    err = refused(data, VerifyOptions(now=NOW, trusted_roots=frozenset({fingerprint(pki.root)}),
                                      endorsements=Endorsements(certificates=(pki.root,))))
    assert err.code == "attestation.signature_invalid" and err.checks[-1].name == (
        "2. AK public area")
