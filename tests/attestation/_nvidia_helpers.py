"""Shared loading for the NVIDIA tests: the vectors are read in place (tests/conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from medclave.attestation.core import Endorsements, VerifyOptions
from medclave.attestation.x509chain import load_certificates
from tests.conftest import at

# Every sample RIM signer certificate is valid here (2023-09-06 .. 2025-06-22).
RIM_VALID_AT = at("2024-06-01")
# After every sample RIM signer certificate expired (2025-06 .. 2025-09).
RIM_EXPIRED_AT = at("2025-10-01")
N1_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


@dataclass(frozen=True)
class Nvidia:
    root: Path
    report_text: bytes
    chain: tuple[x509.Certificate, ...]
    claims: dict[str, Any]

    @property
    def report(self) -> bytes:
        return bytes.fromhex(self.report_text.decode())

    def rim(self, name: str) -> bytes:
        return (self.root / "nvtrust" / "rims" / name).read_bytes()

    def rim_names(self) -> list[str]:
        return sorted(p.name for p in (self.root / "nvtrust" / "rims").glob("*.swidtag"))

    def chain_file(self, name: str) -> tuple[x509.Certificate, ...]:
        return tuple(load_certificates((self.root / "trustee" / name).read_bytes()))

    def options(
        self,
        *,
        now: datetime = RIM_VALID_AT,
        chain: tuple[x509.Certificate, ...] | None = None,
        collateral: tuple[bytes, ...] = (),
        **kw: Any,
    ) -> VerifyOptions:
        return VerifyOptions(
            now=now,
            endorsements=Endorsements(
                certificates=self.chain if chain is None else chain, collateral=collateral
            ),
            **kw,
        )


def load(vectors: Path) -> Nvidia:
    root = vectors / "nvidia"
    return Nvidia(
        root=root,
        report_text=(root / "nvtrust" / "hopperAttestationReport.txt").read_bytes(),
        chain=tuple(load_certificates((root / "nvtrust" / "hopperCertChain.txt").read_bytes())),
        claims=json.loads((root / "trustee" / "hopperAttestationReport-claims.txt").read_text()),
    )
