"""Evidence for a nonce and a runtime: from the TEE this machine runs in, or from sim.

Both give an :class:`~medclave.protocol.evidence.EvidenceBundle` whose hardware report_data is
``report_data_for(nonce, runtime)``; the key broker and every client verify the same way. On
hardware, every NVIDIA GPU NVML finds is attested in the same breath, its SPDM nonce
``gpu_nonce_for(report_data)`` = SHA-256("medclave-gpu-v1" || report_data), so CPU and GPUs verify
as one unit (``attestation.verifier.verify_bundle``). sim never gathers GPU evidence: there is none.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from medclave.attestation import gather, gpu_nonce_for, report_data_for, sim
from medclave.attestation.x509chain import load_certificates
from medclave.errors import AttestationError
from medclave.protocol.evidence import EvidenceBundle, GpuEvidence

Attester = Callable[[bytes, dict[str, Any]], EvidenceBundle]

log = logging.getLogger("medclave.enclave")

SIM_WARNING = (
    "SIM PLATFORM: this enclave runs on the software 'sim' TEE. It is NOT a real TEE and "
    "protects NOTHING: whoever runs this machine can read every prompt, answer and key."
)


@dataclass(frozen=True)
class HostPlatform:
    name: str
    attester: Attester
    secure: bool
    sim_root: str | None = None  # the sim root fingerprint clients must pin to accept sim


def hardware_attester(root: Path = Path("/"), *, nvml: Any = None,
                      cpu: Callable[[bytes], gather.Gathered] | None = None) -> Attester:
    """``nvml`` and ``cpu`` replace pynvml and ``gather.gather`` (tests, recorded inputs)."""
    def gather_cpu(report_data: bytes) -> gather.Gathered:
        return gather.gather(report_data, root=root)

    cpu_report = cpu or gather_cpu

    def attest(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
        report_data = report_data_for(nonce, runtime)
        got = cpu_report(report_data)
        # SEV-SNP: the certificate table (auxblob) travels after the report, as the verifier
        # reads an extended report; TDX quotes carry their PCK chain inside.
        evidence = got.evidence + got.auxblob if got.platform == "sev-snp" else got.evidence
        gpus = gather.gpu_attestations(gpu_nonce_for(report_data), nvml=nvml) or []
        return EvidenceBundle(platform=got.platform, evidence=base64.b64encode(evidence).decode(),
                              nonce=nonce.hex(), runtime=runtime,
                              gpu=[_gpu_entry(g) for g in gpus])
    return attest


def _gpu_entry(gpu: gather.GatheredGpu) -> GpuEvidence:
    chain = load_certificates(gpu.certificate_chain.rstrip(b"\0"))  # NVML pads with NULs
    return GpuEvidence(evidence=base64.b64encode(gpu.evidence).decode(),
                       certificates=[c.public_bytes(Encoding.PEM).decode() for c in chain])


def sim_attester(authority: sim.SimAuthority, *, measurement: bytes | None = None) -> Attester:
    def attest(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
        return sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=measurement)
    return attest


def select_platform(choice: str, data_dir: Path, *, sim_measurement: bytes | None = None,
                    root: Path = Path("/")) -> HostPlatform:
    """``auto``: the TEE found here (refusing to guess when there is none); ``sim``: the
    software stand-in, announced loudly."""
    if choice == "sim":
        authority = sim.SimAuthority.load_or_create(data_dir)
        log.warning(SIM_WARNING)
        return HostPlatform("sim", sim_attester(authority, measurement=sim_measurement), False,
                        authority.root_fingerprint)
    if choice != "auto":
        raise AttestationError("attestation.unknown_platform", f"unknown platform {choice!r}")
    found = gather.detect(root)
    if found == "none":
        raise AttestationError("attestation.unknown_platform",
                               "no TEE found on this machine: use --platform sim for development")
    return HostPlatform(found, hardware_attester(root), True)
