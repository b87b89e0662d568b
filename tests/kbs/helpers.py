"""Shared test helpers: sim policies, attesters, an in-memory broker and a raw release over HTTP."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import httpx

from medclave.attestation import sim
from medclave.attestation.policy import AppraisalPolicy
from medclave.crypto import hpke
from medclave.kbs.client import Attester, OwnerClient
from medclave.kbs.factory import build_broker
from medclave.kbs.keywrap import AesGcmKek
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.service import KeyBroker
from medclave.kbs.settings import KbsSettings
from medclave.kbs.signing import TrustedBrokers
from medclave.kbs.store import Decision, MemoryKbsStore
from medclave.protocol.evidence import EvidenceBundle

# A fixed stand-in for the enclave build's launch digest (sim's default hashes the package).
MEASUREMENT = hashlib.sha384(b"medclave enclave build 1").digest()
OTHER_MEASUREMENT = hashlib.sha384(b"medclave enclave build 2").digest()
RESOURCE = "kbs:///vendor/model-key/llama"


def sim_policy(*, measurement: bytes = MEASUREMENT, model_digests: tuple[str, ...] = (),
               requesters: tuple[str, ...] = (), platforms: tuple[str, ...] = ("sim",),
               allow_debug: bool = False, max_age: int | None = None) -> ReleasePolicy:
    return ReleasePolicy(
        appraisal=AppraisalPolicy.model_validate({
            "name": "test-sim", "platforms": list(platforms), "allow_debug": allow_debug,
            "platform": {"sim": {"reference_values": {"measurement": [measurement.hex()]}}},
            "max_evidence_age_seconds": max_age,
        }),
        model_digests=model_digests,
        requesters=requesters,
    )


def sim_attester(authority: sim.SimAuthority, *, measurement: bytes = MEASUREMENT,
                 debug: bool = False) -> Attester:
    def attest(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
        return sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=measurement,
                               debug=debug)
    return attest


def sim_roots(folder: Path, *names: str) -> tuple[str, ...]:
    """The root fingerprints of simulated authorities kept under ``folder`` (made if new)."""
    return tuple(sim.SimAuthority.load_or_create(folder / name).root_fingerprint
                 for name in names)


def memory_broker(folder: Path, roots: tuple[str, ...]
                  ) -> tuple[KbsSettings, KeyBroker, list[Decision]]:
    """A broker over an in-memory store with a fresh KEK, trusting ``roots``, its rate limit out
    of a test's way; every decision it records is appended to the list returned with it."""
    decisions: list[Decision] = []
    settings = KbsSettings(data_dir=folder / "kbs", store="memory", sim_roots=roots,
                           rate_per_second=1000.0, rate_burst=1000)
    broker = build_broker(settings, store=MemoryKbsStore(), wrapper=AesGcmKek(os.urandom(32)),
                          on_decision=decisions.append)
    return settings, broker, decisions


def trusting(broker: KeyBroker) -> TrustedBrokers:
    """The enclave's pin of ``broker``'s signing key (given to it as configuration)."""
    return TrustedBrokers.of([broker.signer.public_key])


def provision(url: str, token: str, *, resource: str = RESOURCE, secret: bytes = b"k" * 32,
              policy: ReleasePolicy | None = None) -> None:
    with OwnerClient(url, token) as owner:
        owner.put(resource, secret)
        if policy is not None:
            owner.set_policy(resource, policy)


def challenge(url: str) -> bytes:
    r = httpx.post(url + "/kbs/v1/challenge")
    assert r.status_code == 200, r.text
    return bytes.fromhex(r.json()["nonce"])


def ephemeral_runtime(**extra: Any) -> tuple[bytes, dict[str, Any]]:
    private, public = hpke.generate_keypair()
    return hpke.private_key_bytes(private), {**extra,
                                             "ephemeral_key": base64.b64encode(public).decode()}


def post_release(url: str, resource: str, nonce: bytes | str,
                 bundle: EvidenceBundle | dict[str, Any], **extra: Any) -> httpx.Response:
    evidence = bundle.model_dump(mode="json") if isinstance(bundle, EvidenceBundle) else bundle
    body = {"resource": resource, "nonce": nonce if isinstance(nonce, str) else nonce.hex(),
            "evidence": evidence, **extra}
    return httpx.post(url + "/kbs/v1/release", json=body)


def error_code(response: httpx.Response) -> str:
    code = response.json()["error"]["code"]
    assert isinstance(code, str)
    return code
