"""Release transparency end to end: the enclave serves the proof that its build is a published
release with its evidence; a client whose policy lists no measurement, only the release log
and a witness quorum, accepts it offline; another build, or a proof without the quorum, is
refused. The key broker applies the same rule to releases."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from medclave.attestation.policy import AppraisalPolicy
from medclave.attestation.sim import SimAuthority
from medclave.audit.log import AuditLog
from medclave.audit.note import ALG_COSIGNATURE_V1, NoteSigner
from medclave.audit.release import ReleaseStatement, proof_under, publish
from medclave.audit.store import MemoryLogStore
from medclave.audit.witness import witness_checkpoint
from medclave.client.session import EnclaveSession
from medclave.enclave.model import DEFAULT_MODEL_SHA256
from medclave.errors import MedclaveError
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.store import MemoryKbsStore as BrokerMemoryStore
from tests.e2e.helpers import FAKE_ANSWER, MEASUREMENT, FakeEngine, start_enclave

ORIGIN = "releases.medclave.test/log"
OTHER = hashlib.sha384(b"an unpublished build").hexdigest()


class Releases:
    def __init__(self, tmp: Path) -> None:
        self.key = NoteSigner.generate(ORIGIN)
        self.signer = NoteSigner.generate("release-signer")
        self.witnesses = [NoteSigner.generate(f"w{i}", ALG_COSIGNATURE_V1) for i in range(2)]
        self.log = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=self.key)
        self.tmp = tmp

    def proof_file(self, measurement: str, cosigners: int) -> Path:
        statement = ReleaseStatement(release="0.1.0", measurements={"sim": (measurement,)},
                                     model_digests=(DEFAULT_MODEL_SHA256,))
        receipt = publish(self.log, statement, self.signer)
        note = receipt.checkpoint.encode()
        for i, w in enumerate(self.witnesses[:cosigners]):
            note = witness_checkpoint(note, self.key.verifier, [], signer=w,
                                      state_path=self.tmp / f"w{i}-{receipt.index}.json",
                                      now=datetime.now(UTC))
        path = self.tmp / f"proof-{receipt.index}.json"
        path.write_bytes(proof_under(self.log, receipt.index, note).to_json())
        return path

    def policy(self, quorum: int = 2, *, extra_witness: bool = False) -> AppraisalPolicy:
        # No measurement listed: the release log is the reference.
        witnesses = [w.verifier.vkey() for w in self.witnesses]
        if extra_witness:
            witnesses.append(NoteSigner.generate("w9", ALG_COSIGNATURE_V1).verifier.vkey())
        return AppraisalPolicy.model_validate({
            "name": "by-release", "platforms": ["sim"], "model_digests": [DEFAULT_MODEL_SHA256],
            "release_log": {"log_key": self.key.verifier.vkey(), "witnesses": witnesses,
                            "quorum": quorum, "signers": [self.signer.verifier.vkey()]}})


def _ask(url: str, root: str, policy: AppraisalPolicy) -> str:
    with EnclaveSession(url, policy, sim_roots=frozenset({root})) as session:
        body = json.dumps({"model": "smollm2-135m-instruct",
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        answer = session.request("POST", "/v1/chat/completions", body=body)
        assert session.enclave is not None and session.enclave.release == "0.1.0"
        return str(json.loads(answer.body)["choices"][0]["message"]["content"])


def test_a_published_build_is_accepted_without_listing_its_measurement(tmp_path: Path) -> None:
    releases = Releases(tmp_path)
    enclave = start_enclave(tmp_path / "enclave", None, engine=FakeEngine(),
                            release_proof_file=releases.proof_file(MEASUREMENT, cosigners=2))
    try:
        assert _ask(enclave.url, enclave.sim_root, releases.policy()) == FAKE_ANSWER
        # A policy asking for more cosignatures than the proof carries refuses it.
        stricter = releases.policy(quorum=2, extra_witness=True)
        with pytest.raises(MedclaveError) as err:
            _ask(enclave.url, enclave.sim_root, stricter.model_copy(
                update={"release_log": stricter.release_log.model_copy(  # type: ignore[union-attr]
                    update={"quorum": 3})}))
        assert err.value.code == "policy.release_not_logged"
    finally:
        enclave.stop()


def test_an_unpublished_build_is_refused(tmp_path: Path) -> None:
    releases = Releases(tmp_path)
    # The operator serves a genuine proof of a release, but for another build.
    enclave = start_enclave(tmp_path / "enclave", None, engine=FakeEngine(), measurement=OTHER,
                            release_proof_file=releases.proof_file(MEASUREMENT, cosigners=2))
    try:
        with pytest.raises(MedclaveError) as err:
            _ask(enclave.url, enclave.sim_root, releases.policy())
        assert err.value.code == "policy.release_not_logged"
    finally:
        enclave.stop()
    bare = start_enclave(tmp_path / "bare", None, engine=FakeEngine())
    try:
        with pytest.raises(MedclaveError) as err:
            _ask(bare.url, bare.sim_root, releases.policy())
        assert err.value.code == "policy.release_not_logged"
    finally:
        bare.stop()


def test_the_broker_applies_the_rule(tmp_path: Path) -> None:
    from medclave.attestation import sim
    from medclave.kbs.client import KbsClient, OwnerClient
    from medclave.kbs.signing import TrustedBrokers
    from tests.kbs.conftest import Clock, make_settings, serve_broker

    releases = Releases(tmp_path)
    authority = SimAuthority.load_or_create(tmp_path / "sim")
    server, live = serve_broker(make_settings(tmp_path, sim_roots=(authority.root_fingerprint,)),
                                store=BrokerMemoryStore(), clock=Clock())
    server.start()
    try:
        resource = "kbs:///vendor/model-key/m"
        with OwnerClient(server.url, live.token("vendor")) as owner:
            owner.put(resource, os.urandom(32))
            owner.set_policy(resource, ReleasePolicy(appraisal=releases.policy(quorum=1)))
        proof = json.loads(releases.proof_file(MEASUREMENT, cosigners=1).read_bytes())
        trusted = TrustedBrokers.of([live.broker.signer.public_key])

        def attester(measurement: str) -> object:
            return lambda nonce, runtime: sim.make_bundle(
                authority, nonce=nonce, runtime=runtime, measurement=bytes.fromhex(measurement))

        with KbsClient(server.url, attester(MEASUREMENT), trusted=trusted,  # type: ignore[arg-type]
                       runtime={"release_proof": proof, "model_digest": DEFAULT_MODEL_SHA256}
                       ) as kbs:
            assert len(kbs.fetch(resource)) == 32
        model = {"model_digest": DEFAULT_MODEL_SHA256}
        for measurement, runtime in ((OTHER, {"release_proof": proof, **model}),
                                     (MEASUREMENT, model)):
            with KbsClient(server.url, attester(measurement), trusted=trusted,  # type: ignore[arg-type]
                           runtime=runtime) as kbs, pytest.raises(MedclaveError) as err:
                kbs.fetch(resource)
            assert err.value.code == "policy.release_not_logged"
    finally:
        server.stop()
