"""Gathering evidence on real hardware (the attester side, used by the enclave at boot).

Order of preference, as the Linux kernel documents them:
1. configfs-tsm (``/sys/kernel/config/tsm/report``, Documentation/ABI/testing/configfs-tsm):
   one interface for SNP, TDX and Arm CCA realms. Write 64 bytes to ``inblob``, read ``outblob``
   (the SNP report, the TD quote, or the CCA token whose realm challenge is ``inblob``:
   drivers/virt/coco/arm-cca-guest), ``auxblob`` (SNP: the certificate table) and ``provider``;
   ``generation`` must have advanced by exactly one write, or another process raced us.
2. ``/dev/sev-guest`` (SNP_GET_REPORT / SNP_GET_EXT_REPORT ioctl, include/uapi/linux/sev-guest.h).
3. ``/dev/tdx_guest`` gives only a TDREPORT, not a quote; without configfs-tsm a TDX guest needs
   its quote generation service, which Medclave does not speak: we refuse rather than guess.
NVIDIA GPU evidence comes from NVML (``nvmlDeviceGetConfComputeGpuAttestationReport`` for the SPDM
evidence, ``nvmlDeviceGetConfComputeGpuCertificate`` for the device chain) when the ``pynvml``
module is importable; its nonce is derived from the CPU report_data (``binding.gpu_nonce_for``).

Every path is relative to an injectable ``root`` so tests run against a fake sysfs tree with
recorded outputs.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medclave.errors import AttestationError

TSM_REPORT = Path("sys/kernel/config/tsm/report")
SEV_GUEST = Path("dev/sev-guest")
TDX_GUEST = Path("dev/tdx_guest")
PROVIDERS = {"sev_guest": "sev-snp", "tdx_guest": "tdx", "arm_cca_guest": "cca"}
MAX_OUTBLOB = 64 * 1024

# include/uapi/linux/sev-guest.h: struct snp_report_req { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }
# and struct snp_guest_request_ioctl { u8 msg_version; u64 req_data; u64 resp_data; u64 exitinfo2; }
_SNP_REQ = struct.Struct("<64sI28x")
_SNP_RESP_SIZE = 4000
_SNP_IOCTL = struct.Struct("<B7xQQQ")
_SNP_GET_REPORT = (3 << 30) | (_SNP_IOCTL.size << 16) | (ord("S") << 8) | 0x0  # _IOWR('S', 0, ...)


@dataclass(frozen=True)
class Gathered:
    platform: str
    evidence: bytes
    auxblob: bytes = b""


def detect(root: Path = Path("/")) -> str:
    """The TEE this machine runs in: ``sev-snp``, ``tdx`` or ``none``."""
    tsm = root / TSM_REPORT
    if tsm.is_dir():
        provider = _probe_provider(tsm)
        if provider:
            return provider
    if (root / SEV_GUEST).exists():
        return "sev-snp"
    if (root / TDX_GUEST).exists():
        return "tdx"
    return "none"


def _probe_provider(tsm: Path) -> str | None:
    """Provider of an existing report entry, if any (creating one just to look is avoided)."""
    for entry in sorted(tsm.iterdir()):
        try:
            provider = (entry / "provider").read_text().strip()
        except OSError:
            continue
        if provider in PROVIDERS:
            return PROVIDERS[provider]
    return None


class ConfigfsTsm:
    """configfs-tsm report entries. ``_make_entry`` and ``_write_inblob`` are where the kernel acts
    (it creates the attribute files, and bumps ``generation`` and fills ``outblob`` on each write)."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.base = root / TSM_REPORT

    def _make_entry(self, name: str) -> Path:
        entry = self.base / name
        entry.mkdir(mode=0o700)
        return entry

    def _write_inblob(self, entry: Path, report_data: bytes) -> None:
        (entry / "inblob").write_bytes(report_data)

    def report(self, report_data: bytes) -> Gathered:
        if len(report_data) != 64:
            raise AttestationError("attestation.malformed", "report_data must be 64 bytes")
        entry = self._make_entry(f"medclave-{secrets.token_hex(8)}")
        try:
            before = int((entry / "generation").read_text().strip() or "0")
            self._write_inblob(entry, report_data)
            out = _read_bounded(entry / "outblob")
            provider = (entry / "provider").read_text().strip()
            after = int((entry / "generation").read_text().strip())
            aux_path = entry / "auxblob"
            aux = _read_bounded(aux_path) if aux_path.exists() else b""
        except (OSError, ValueError) as exc:
            raise AttestationError("attestation.malformed", f"configfs-tsm: {exc}") from exc
        finally:
            _remove_entry(entry)
        if after != before + 1:
            raise AttestationError("attestation.malformed", "configfs-tsm report raced another writer")
        if provider not in PROVIDERS:
            raise AttestationError("attestation.unknown_platform", f"configfs-tsm provider {provider!r}")
        return Gathered(platform=PROVIDERS[provider], evidence=out, auxblob=aux)


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as fh:
        data = fh.read(MAX_OUTBLOB + 1)
    if len(data) > MAX_OUTBLOB:
        raise AttestationError("attestation.malformed", f"{path.name} larger than {MAX_OUTBLOB} bytes")
    return data


def _remove_entry(entry: Path) -> None:
    # configfs removes an entry's attribute files with the directory; a fake tree needs them gone.
    for child in entry.iterdir() if entry.is_dir() else ():
        if child.is_file():
            child.unlink()
    entry.rmdir()


def encode_snp_request(report_data: bytes, vmpl: int = 0) -> bytes:
    return _SNP_REQ.pack(report_data, vmpl)


def decode_snp_response(resp: bytes) -> bytes:
    """struct snp_report_resp: u32 status, u32 report_size, 24 reserved, then the report."""
    if len(resp) < 32:
        raise AttestationError("attestation.malformed", "short SNP_GET_REPORT response")
    status, size = struct.unpack_from("<II", resp, 0)
    if status != 0:
        raise AttestationError("attestation.malformed", f"SNP firmware status {status:#x}")
    if size > len(resp) - 32 or size == 0:
        raise AttestationError("attestation.malformed", "SNP report size out of range")
    return resp[32:32 + size]


def sev_guest_report(report_data: bytes, device: Path = Path("/") / SEV_GUEST) -> Gathered:
    """SNP_GET_REPORT through /dev/sev-guest: the fallback when configfs-tsm is absent."""
    import ctypes

    req = ctypes.create_string_buffer(encode_snp_request(report_data), _SNP_REQ.size)
    resp = ctypes.create_string_buffer(_SNP_RESP_SIZE)
    arg = bytearray(_SNP_IOCTL.pack(1, ctypes.addressof(req), ctypes.addressof(resp), 0))
    fd = os.open(device, os.O_RDWR)
    try:
        fcntl.ioctl(fd, _SNP_GET_REPORT, arg)
    except OSError as exc:
        raise AttestationError("attestation.malformed", f"SNP_GET_REPORT failed: {exc}") from exc
    finally:
        os.close(fd)
    return Gathered(platform="sev-snp", evidence=decode_snp_response(resp.raw))


def gather(report_data: bytes, *, root: Path = Path("/")) -> Gathered:
    """Hardware evidence binding ``report_data``, from the best interface this machine has."""
    tsm = ConfigfsTsm(root)
    if tsm.base.is_dir():
        return tsm.report(report_data)
    if (root / SEV_GUEST).exists():
        return sev_guest_report(report_data, root / SEV_GUEST)
    if (root / TDX_GUEST).exists():
        raise AttestationError(
            "attestation.unknown_platform",
            "TDX without configfs-tsm: a quote needs the quote generation service; use a kernel with TSM",
        )
    raise AttestationError("attestation.unknown_platform", "no TEE found: use --platform sim for development")


MAX_GPUS = 8  # protocol.evidence.EvidenceBundle.gpu holds at most 8 entries
MAX_GPU_CERT_CHAIN = 16 * 1024  # NVML's attestationCertChain buffer is 5120 bytes


@dataclass(frozen=True)
class GatheredGpu:
    index: int
    evidence: bytes  # SPDM GET_MEASUREMENTS request || signed MEASUREMENTS response
    certificate_chain: bytes  # PEM, leaf first, as NVML returns it


def _load_nvml() -> Any:
    """The ``pynvml`` module, or None where it is not installed."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    return pynvml


def _nvml_bytes(buffer: Any, size: Any, maximum: int, what: str) -> bytes:
    """``buffer[:size]``, refusing a size NVML should never report rather than truncating."""
    if not isinstance(size, int) or not 0 < size <= min(maximum, len(buffer)):
        raise AttestationError("attestation.malformed", f"NVML {what} size {size!r} out of range")
    return bytes(buffer[:size])


def gpu_attestations(nonce: bytes, nvml: Any = None) -> list[GatheredGpu] | None:
    """SPDM evidence and device chain of every GPU via NVML, each answering ``nonce``.

    None where NVML is absent or finds no driver (a CPU-only TEE); an error where a GPU is
    present but cannot attest, or there are more GPUs than a bundle carries: an enclave must
    not run beside a GPU it cannot vouch for.
    """
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None:
        return None
    if len(nonce) != 32:
        raise AttestationError("attestation.malformed", "the SPDM nonce is 32 bytes")
    nvml_error: Any = getattr(nvml, "NVMLError", None) or OSError
    try:
        nvml.nvmlInit()
    except nvml_error:
        return None  # the library is installed but no NVIDIA driver is loaded: no GPU here
    try:
        count = nvml.nvmlDeviceGetCount()
        if not isinstance(count, int) or count > MAX_GPUS:
            raise AttestationError("attestation.malformed",
                                   f"{count!r} GPUs; a bundle carries at most {MAX_GPUS}")
        out: list[GatheredGpu] = []
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            out.append(GatheredGpu(
                index=index,
                evidence=_nvml_bytes(report.attestationReport, report.attestationReportSize,
                                     MAX_OUTBLOB, "attestation report"),
                certificate_chain=_nvml_bytes(cert.attestationCertChain,
                                              cert.attestationCertChainSize,
                                              MAX_GPU_CERT_CHAIN, "certificate chain"),
            ))
    except nvml_error as exc:
        raise AttestationError("attestation.malformed", f"NVML GPU attestation: {exc}") from exc
    finally:
        nvml.nvmlShutdown()
    return out


def gpu_evidence(nonce: bytes, nvml: Any = None) -> bytes | None:
    """NVIDIA CC attestation report for GPU 0 via NVML, or None where no NVML/GPU is present."""
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None:
        return None
    if len(nonce) != 32:
        raise AttestationError("attestation.malformed", "the SPDM nonce is 32 bytes")
    nvml.nvmlInit()
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(0)
        report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
        data = bytes(report.attestationReport[: report.attestationReportSize])
    finally:
        nvml.nvmlShutdown()
    return data
