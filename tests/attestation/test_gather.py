"""Evidence gathering against a fake sysfs tree with recorded outputs (no TEE on this machine)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from medclave.attestation import gather
from medclave.attestation.gather import ConfigfsTsm
from medclave.errors import AttestationError


class RecordedTsm(ConfigfsTsm):
    """Plays the kernel: a new entry gets the attribute files a real configfs-tsm entry has."""

    def __init__(self, root: Path, outblob: bytes, provider: str = "sev_guest",
                 auxblob: bytes = b"", bump: int = 1) -> None:
        super().__init__(root)
        self.outblob, self.provider, self.auxblob, self.bump = outblob, provider, auxblob, bump
        self.inblobs: list[bytes] = []

    def _make_entry(self, name: str) -> Path:
        entry = super()._make_entry(name)
        (entry / "generation").write_text("0\n")
        (entry / "provider").write_text(self.provider + "\n")
        return entry

    def _write_inblob(self, entry: Path, report_data: bytes) -> None:
        super()._write_inblob(entry, report_data)
        self.inblobs.append(report_data)
        generation = int((entry / "generation").read_text())
        (entry / "generation").write_text(f"{generation + self.bump}\n")
        (entry / "outblob").write_bytes(self.outblob)
        if self.auxblob:
            (entry / "auxblob").write_bytes(self.auxblob)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / gather.TSM_REPORT).mkdir(parents=True)
    return tmp_path


def test_configfs_tsm_returns_the_recorded_snp_report(root: Path, vectors: Path) -> None:
    report = (vectors / "sev-snp/go-sev-guest/attestation.bin").read_bytes()
    tsm = RecordedTsm(root, report, auxblob=b"certs")
    got = tsm.report(b"\x01" * 64)
    assert tsm.inblobs == [b"\x01" * 64]
    assert got.platform == "sev-snp" and got.evidence == report and got.auxblob == b"certs"
    assert list((root / gather.TSM_REPORT).iterdir()) == [], "the report entry is removed"


def test_configfs_tsm_tdx_provider(root: Path, vectors: Path) -> None:
    quote = (vectors / "tdx/trustee/tdx_quote_4.dat").read_bytes()
    assert RecordedTsm(root, quote, provider="tdx_guest").report(bytes(64)).platform == "tdx"


def test_configfs_tsm_cca_provider(root: Path, vectors: Path) -> None:
    token = (vectors / "cca/trustee/cca-example-token.cbor").read_bytes()
    got = RecordedTsm(root, token, provider="arm_cca_guest").report(bytes(64))
    assert got.platform == "cca" and got.evidence == token


def test_configfs_tsm_detects_a_racing_writer(root: Path) -> None:
    with pytest.raises(AttestationError, match="raced"):
        RecordedTsm(root, b"x", bump=2).report(bytes(64))


def test_configfs_tsm_refuses_unknown_provider(root: Path) -> None:
    with pytest.raises(AttestationError) as info:
        RecordedTsm(root, b"x", provider="some_future_guest").report(bytes(64))
    assert info.value.code == "attestation.unknown_platform"


def test_configfs_tsm_bounds_the_outblob(root: Path) -> None:
    with pytest.raises(AttestationError, match="larger"):
        RecordedTsm(root, b"\0" * (gather.MAX_OUTBLOB + 1)).report(bytes(64))


def test_report_data_must_be_64_bytes(root: Path) -> None:
    with pytest.raises(AttestationError):
        RecordedTsm(root, b"x").report(b"short")


def test_detect_prefers_configfs_then_devices(tmp_path: Path) -> None:
    assert gather.detect(tmp_path) == "none"
    (tmp_path / "dev").mkdir()
    (tmp_path / gather.TDX_GUEST).touch()
    assert gather.detect(tmp_path) == "tdx"
    (tmp_path / gather.SEV_GUEST).touch()
    assert gather.detect(tmp_path) == "sev-snp"
    entry = tmp_path / gather.TSM_REPORT / "existing"
    entry.mkdir(parents=True)
    (entry / "provider").write_text("tdx_guest\n")
    assert gather.detect(tmp_path) == "tdx"


def test_gather_without_tee_points_to_sim(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="sim"):
        gather.gather(bytes(64), root=tmp_path)


def test_tdx_device_without_tsm_is_refused_not_guessed(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / gather.TDX_GUEST).touch()
    with pytest.raises(AttestationError, match="quote generation"):
        gather.gather(bytes(64), root=tmp_path)


def test_snp_ioctl_request_and_response_layouts(vectors: Path) -> None:
    req = gather.encode_snp_request(b"\xaa" * 64, vmpl=1)
    assert len(req) == 96 and req[:64] == b"\xaa" * 64 and struct.unpack_from("<I", req, 64) == (1,)
    report = (vectors / "sev-snp/go-sev-guest/attestation.bin").read_bytes()
    resp = struct.pack("<II24x", 0, len(report)) + report + bytes(4000 - 32 - len(report))
    assert gather.decode_snp_response(resp) == report
    with pytest.raises(AttestationError, match="status"):
        gather.decode_snp_response(struct.pack("<II24x", 0x16, len(report)) + report)
    with pytest.raises(AttestationError, match="size"):
        gather.decode_snp_response(struct.pack("<II24x", 0, 5000) + report)


class FakeNvml:
    class _Report:
        def __init__(self, data: bytes) -> None:
            self.attestationReport = data + b"\0" * 16
            self.attestationReportSize = len(data)

    def __init__(self, data: bytes) -> None:
        self.data, self.calls = data, []

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> object:
        self.calls.append(nonce)
        return self._Report(self.data)


def test_gpu_evidence_through_nvml(vectors: Path) -> None:
    report = bytes.fromhex((vectors / "nvidia/nvtrust/hopperAttestationReport.txt").read_text().strip())
    nvml = FakeNvml(report)
    assert gather.gpu_evidence(b"\x11" * 32, nvml=nvml) == report
    assert nvml.calls == ["init", b"\x11" * 32, "shutdown"]
    with pytest.raises(AttestationError):
        gather.gpu_evidence(b"short", nvml=nvml)
