"""Continuous trust: what re-attestation, release-log checks and threshold release cost.

Everything on 127.0.0.1 in this process, sim evidence, measured in interleaved rounds
(benchmarks._common). Each figure is the p50 of MEDCLAVE_BENCH_TRUST_N calls (default 30) per
round.

Table 1, attestation (baseline: one re-attestation, ``EnclaveSession.attest``: nonce, GET
/v1/attestation, the enclave signs sim evidence, the client verifies chain, signature, binding
and appraises):
  re-attestation + release log   the same under a policy that accepts only published releases:
                                 the release proof in the runtime is verified too (checkpoint
                                 signature, 2 witness cosignatures, inclusion, signer)
  release-log check alone        ``verify_release_proof`` on the served proof (offline)
  per enclave-hour               the baseline x 12: the cost of the default 5-minute schedule
Table 2, key release (baseline: ``KbsClient.fetch`` from one broker, end to end):
  threshold 2-of-3               ``fetch_threshold``: two releases from two brokers, each its own
                                 challenge, evidence and signed answer, then Shamir combination
mTLS handshake overhead per request, with and without session resumption, is
``benchmarks/mtls.py``.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._common import Report, env_int, interleave, timings
from medclave.attestation import sim
from medclave.attestation.policy import AppraisalPolicy
from medclave.audit.log import AuditLog
from medclave.audit.note import ALG_COSIGNATURE_V1, NoteSigner
from medclave.audit.release import ReleaseStatement, proof_under, publish, verify_release_proof
from medclave.audit.store import MemoryLogStore as LogMemory
from medclave.audit.witness import witness_checkpoint
from medclave.background import BackgroundServer
from medclave.client.session import EnclaveSession
from medclave.enclave.app import create_app as enclave_app
from medclave.enclave.boot import boot
from medclave.enclave.model import DEFAULT_MODEL_SHA256
from medclave.enclave.settings import EnclaveSettings
from medclave.kbs.app import create_app as kbs_app
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.factory import build_broker
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.settings import KbsSettings
from medclave.kbs.signing import TrustedBrokers
from medclave.kbs.store import MemoryKbsStore
from medclave.kbs.threshold import BrokerTarget, ShareRef, fetch_threshold, split_to_brokers

MEASUREMENT = "ab" * 48
RESOURCE = "kbs:///vendor/model-key/bench"
ORIGIN = "bench.medclave.invalid/releases"


def _release_proof(folder: Path) -> tuple[Path, dict[str, Any]]:
    """A release log with the bench build published, cosigned by two witnesses."""
    key, signer = NoteSigner.generate(ORIGIN), NoteSigner.generate("release-signer")
    witnesses = [NoteSigner.generate(f"w{i}", ALG_COSIGNATURE_V1) for i in range(2)]
    log = AuditLog(LogMemory(), origin=ORIGIN, signer=key)
    for i in range(99):  # a log with history: the proof has log2(100) hashes
        log.append(json.dumps({"filler": i}).encode())
    receipt = publish(log, ReleaseStatement(release="bench", measurements={"sim": (MEASUREMENT,)},
                                            model_digests=(DEFAULT_MODEL_SHA256,)), signer)
    note = receipt.checkpoint.encode()
    for i, w in enumerate(witnesses):
        note = witness_checkpoint(note, key.verifier, [], signer=w,
                                  state_path=folder / f"w{i}.json", now=datetime.now(UTC))
    path = folder / "release-proof.json"
    path.write_bytes(proof_under(log, receipt.index, note).to_json())
    rule = {"log_key": key.verifier.vkey(), "witnesses": [w.verifier.vkey() for w in witnesses],
            "quorum": 2, "signers": [signer.verifier.vkey()]}
    return path, rule


def _policy(rule: dict[str, Any] | None) -> AppraisalPolicy:
    body: dict[str, Any] = {"platforms": ["sim"], "model_digests": [DEFAULT_MODEL_SHA256]}
    if rule is None:
        body["platform"] = {"sim": {"reference_values": {"measurement": [MEASUREMENT]}}}
    else:
        body["release_log"] = rule
    return AppraisalPolicy.model_validate(body)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else env_int("MEDCLAVE_BENCH_TRUST_N", 30)
    logging.getLogger("medclave").setLevel(logging.ERROR)  # sim warns on every bundle
    with tempfile.TemporaryDirectory(prefix="medclave-bench-trust-") as tmp:
        folder = Path(tmp)
        attestation(folder, n)
        threshold(folder, n)


def _p50(fn: Callable[[], object], n: int) -> float:
    return statistics.median(t * 1e3 for t in timings(fn, n))


def attestation(folder: Path, n: int) -> None:
    proof_file, rule = _release_proof(folder)
    proof = json.loads(proof_file.read_bytes())
    settings = EnclaveSettings(data_dir=folder / "enclave", platform="sim",
                               sim_measurement=MEASUREMENT, insecure_no_auth=True,
                               audit_store="memory", release_proof_file=proof_file,
                               standing_check_seconds=0)
    booted = boot(settings)
    root = booted.platform.sim_root
    assert root is not None
    try:
        with BackgroundServer(enclave_app(booted.service, settings)) as server:
            plain = EnclaveSession(server.url, _policy(None), sim_roots=frozenset({root}))
            logged = EnclaveSession(server.url, _policy(rule), sim_roots=frozenset({root}))
            parsed_rule = _policy(rule).release_log
            assert parsed_rule is not None
            plain.attest()
            logged.attest()
            got = interleave({
                "attest": lambda: _p50(plain.attest, n),
                "attest+release": lambda: _p50(logged.attest, n),
                "release check": lambda: _p50(lambda: verify_release_proof(proof, parsed_rule),
                                              n),
            })
            plain.close()
            logged.close()
    finally:
        booted.close()
    report = Report("trust", f"re-attestation on loopback (sim), p50 of {n} per round")
    base = got["attest"]
    report.baseline("re-attestation", base, "ms p50")
    report.row("re-attestation + release log", got["attest+release"], "ms p50", baseline=base)
    report.row("release-log check alone", got["release check"], "ms p50", baseline=base,
               note="100-entry log, 2 cosignatures")
    report.row("per enclave-hour (every 5 min)", [b * 12 for b in base], "ms/h",
               note="12 re-attestations an hour, whether or not requests come")
    report.emit()


def threshold(folder: Path, n: int) -> None:
    authority = sim.SimAuthority.load_or_create(folder / "sim")
    policy = ReleasePolicy(appraisal=AppraisalPolicy.model_validate({
        "platforms": ["sim"],
        "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT]}}}}))
    servers, brokers = [], []
    for i in range(3):
        settings = KbsSettings(data_dir=folder / f"kbs{i}", sim_roots=(authority.root_fingerprint,),
                               rate_per_second=1e6, rate_burst=1_000_000, store="memory")
        broker = build_broker(settings, store=MemoryKbsStore())
        server = BackgroundServer(kbs_app(settings, broker=broker)).start()
        servers.append(server)
        brokers.append(broker)

    def attest(nonce: bytes, runtime: dict[str, Any]) -> Any:
        return sim.make_bundle(authority, nonce=nonce, runtime=runtime,
                               measurement=bytes.fromhex(MEASUREMENT))

    try:
        trusted = TrustedBrokers.of([b.signer.public_key for b in brokers])
        targets = [BrokerTarget(s.url, OwnerClient(s.url, b.issue_owner_token("vendor")),
                                b.signer.key_id) for s, b in zip(servers, brokers, strict=True)]
        ref = split_to_brokers(os.urandom(32), 2, targets, RESOURCE)
        single = "kbs:///vendor/model-key/single"
        for t in targets:
            t.owner.set_policy(RESOURCE, policy)
        targets[0].owner.put(single, os.urandom(32))
        targets[0].owner.set_policy(single, policy)
        for t in targets:
            t.owner.close()
        one = KbsClient(servers[0].url, attest, trusted=trusted)

        tls = ssl.create_default_context()  # one CA store for every client, as the enclave does

        def open_client(share: ShareRef) -> KbsClient:
            return KbsClient(share.kbs, attest, trusted=trusted, signer=share.broker_key,
                             verify=tls)

        one.fetch(single)
        fetch_threshold(ref, open_client)
        got = interleave({
            "single": lambda: _p50(lambda: one.fetch(single), n),
            "threshold": lambda: _p50(lambda: fetch_threshold(ref, open_client), n),
        })
        one.close()
    finally:
        for s in servers:
            s.stop()
    report = Report("trust-threshold", f"key release on loopback (sim), p50 of {n} per round")
    report.baseline("single broker release", got["single"], "ms p50")
    report.row("threshold 2-of-3 release", got["threshold"], "ms p50", baseline=got["single"],
               note="two brokers asked in turn (a new connection each), then combined")
    report.emit()


if __name__ == "__main__":
    main()
