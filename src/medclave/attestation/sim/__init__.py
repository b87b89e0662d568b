"""sim: a software TEE for development. NOT SECURE: it protects nothing.

Sim evidence is an SNP-layout report (``family_id`` = ``MEDCLAVE-SIM``) signed through a local
ARK -> ASK -> VCEK chain kept in the data folder (:mod:`.authority`). It is verified by the SEV-SNP
code with that root as the only anchor, so every check a real report meets, a sim report meets
too: signature, chain, TCB extensions, chip id, report_data binding. What it cannot give is the
one thing that matters, a key no operator holds; so every default policy refuses it, a relying
party accepts it only with its root fingerprint in ``VerifyOptions.sim_roots`` and ``sim`` named
in its policy, and its results say ``secure: false``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import replace
from importlib import resources
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from medclave.attestation.binding import report_data_for
from medclave.attestation.core import CheckLog, Claims, Verification, VerifyOptions, sha256_hex
from medclave.attestation.sevsnp import abi, claims_of, split_evidence, verify_report
from medclave.attestation.sim.authority import (
    SIM_CHIP_ID,
    SIM_FAMILY_ID,
    SIM_LABEL,
    SIM_TCB,
    SimAuthority,
)
from medclave.errors import AttestationError
from medclave.protocol.evidence import BundleEndorsements, EvidenceBundle

PLATFORM = "sim"
_log = logging.getLogger("medclave.sim")

__all__ = [
    "PLATFORM",
    "SIM_LABEL",
    "SimAuthority",
    "code_measurement",
    "detect",
    "make_bundle",
    "make_report",
    "parse",
    "signed_bytes",
    "verify",
]


def code_measurement() -> bytes:
    """SHA-384 over the installed ``medclave`` package sources, in path order.

    The sim's stand-in for a launch digest: change the enclave's code and its measurement changes,
    so "wrong measurement" means the same thing under sim as on hardware.
    """
    digest = hashlib.sha384(b"medclave-sim-measurement-v1\0")
    root = resources.files("medclave")
    stack = [root]
    files = []
    while stack:
        node = stack.pop()
        for child in node.iterdir():
            if child.is_dir() and child.name != "__pycache__":
                stack.append(child)
            elif child.name.endswith((".py", ".cedar")):
                files.append(child)
    base = str(root)
    for f in sorted(files, key=lambda p: str(p)):
        rel = str(f)[len(base):].lstrip("/").encode()
        digest.update(len(rel).to_bytes(4, "big") + rel)
        content = f.read_bytes()
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.digest()


def make_report(
    authority: SimAuthority,
    report_data: bytes,
    *,
    measurement: bytes | None = None,
    debug: bool = False,
    host_data: bytes = bytes(32),
) -> bytes:
    """A signed sim report binding ``report_data`` (64 bytes)."""
    if len(report_data) != 64:
        raise AttestationError("attestation.malformed", "report_data must be 64 bytes")
    tcb = abi.TcbParts(bl=SIM_TCB["bl"], tee=SIM_TCB["tee"], snp=SIM_TCB["snp"],
                       ucode=SIM_TCB["ucode"]).encode()
    policy = (1 << 17) | (1 << 16) | ((1 << 19) if debug else 0)  # reserved-1, SMT, DEBUG
    report = abi.Report(
        version=2,
        guest_svn=1,
        policy=policy,
        family_id=SIM_FAMILY_ID,
        report_data=report_data,
        measurement=measurement if measurement is not None else code_measurement(),
        host_data=host_data,
        report_id=hashlib.sha256(report_data).digest(),
        chip_id=SIM_CHIP_ID,
        current_tcb=tcb,
        reported_tcb=tcb,
        committed_tcb=tcb,
        launch_tcb=tcb,
        current_major=1, current_minor=55, current_build=0,
        committed_major=1, committed_minor=55, committed_build=0,
    )
    unsigned = abi.encode_report(report)
    der = authority.vcek_key.sign(unsigned[: abi.SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    sig_r, sig_s = abi.signature_fields(r, s)
    return abi.encode_report(replace(report, signature_r=sig_r, signature_s=sig_s))


def make_bundle(
    authority: SimAuthority,
    *,
    nonce: bytes,
    runtime: dict[str, Any],
    measurement: bytes | None = None,
    debug: bool = False,
) -> EvidenceBundle:
    """An evidence bundle whose report binds ``nonce`` and ``runtime`` (docs/architecture.md)."""
    _log.warning("sim evidence issued: %s", SIM_LABEL)
    report = make_report(authority, report_data_for(nonce, runtime), measurement=measurement,
                         debug=debug)
    return EvidenceBundle(
        platform=PLATFORM,
        evidence=base64.b64encode(report).decode(),
        endorsements=BundleEndorsements(certificates=authority.chain_pem()),
        nonce=nonce.hex(),
        runtime=runtime,
    )


def detect(data: bytes) -> str | None:
    if len(data) == abi.REPORT_SIZE and abi.looks_like_report(data) and data[0x10:0x20] == SIM_FAMILY_ID:
        return PLATFORM
    return None


def parse(data: bytes) -> Claims:
    report, _ = split_evidence(data)
    return {**claims_of(report, "Milan"), "sim": SIM_LABEL}


def signed_bytes(data: bytes) -> bytes:
    """As for SEV-SNP: report bytes [0, 0x2A0)."""
    report, _ = split_evidence(data)
    return report.signed_bytes


def verify(data: bytes, options: VerifyOptions) -> Verification:
    """The SEV-SNP verification, anchored at the sim roots the caller accepts and nothing else."""
    log = CheckLog()
    if not options.sim_roots:
        raise log.fail("sim root", "attestation.root_untrusted",
                       "no sim root is trusted here: sim evidence protects nothing")
    try:
        report, table = split_evidence(data)
    except AttestationError as exc:
        raise log.fail("report structure", exc.code, exc.detail) from exc
    if report.family_id != SIM_FAMILY_ID:
        raise log.fail("report structure", "attestation.unknown_platform", "not a sim report")
    log.ok("report structure", f"sim report ({SIM_LABEL})")
    verified = verify_report(report, table, options=replace(options, trusted_roots=options.sim_roots),
                             log=log)
    return Verification(
        platform=PLATFORM,
        claims={**claims_of(report, verified.product), "sim": SIM_LABEL},
        checks=log.checks,
        secure=False,
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(report.signed_bytes),
    )
