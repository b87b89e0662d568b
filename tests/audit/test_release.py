"""Release transparency: signed release statements in an RFC 9162 log with C2SP checkpoints and
witness cosignatures; proofs checked offline; the appraisal rule that replaces a measurement
list; the `medclave release` commands."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medclave.attestation.core import Verification
from medclave.attestation.policy import AppraisalPolicy, ReleaseLogRule, appraisal_of
from medclave.audit.log import AuditLog
from medclave.audit.note import ALG_COSIGNATURE_V1, NoteSigner
from medclave.audit.release import (
    ReleaseStatement,
    check_release,
    proof_under,
    provenance,
    publish,
    verify_release_proof,
)
from medclave.audit.store import MemoryLogStore
from medclave.audit.witness import witness_checkpoint
from medclave.errors import AuditError, MedclaveError, PolicyError

ORIGIN = "releases.medclave.test/log"
NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
SNP = hashlib.sha384(b"medclave 0.1.0 sev-snp launch").hexdigest()
TDX = hashlib.sha384(b"medclave 0.1.0 tdx mr_td").hexdigest()
MODEL = hashlib.sha256(b"weights").hexdigest()


def _statement(release: str = "0.1.0", snp: str = SNP) -> ReleaseStatement:
    return ReleaseStatement(
        release=release, measurements={"sev-snp": (snp,), "tdx": (TDX,)},
        model_digests=(MODEL,), engine_builds=("llama.cpp-b4500-cpu",),
        provenance=provenance(subject="medclave-0.1.0-py3-none-any.whl", subject_sha256="ab" * 32,
                              source_uri="git+https://example.invalid/medclave", commit="c" * 40,
                              builder="urn:medclave:builder:ci", lockfile_sha256="cd" * 32))


class World:
    def __init__(self, tmp: Path) -> None:
        self.log_key = NoteSigner.generate(ORIGIN)
        self.signer = NoteSigner.generate("release-signer")
        self.witnesses = [NoteSigner.generate(f"witness-{i}", ALG_COSIGNATURE_V1)
                          for i in range(3)]
        self.log = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=self.log_key)
        self.tmp = tmp

    def publish(self, statement: ReleaseStatement, cosigners: int = 2) -> dict[str, Any]:
        receipt = publish(self.log, statement, self.signer)
        note = receipt.checkpoint.encode()
        for i, w in enumerate(self.witnesses[:cosigners]):
            state = self.tmp / f"w{i}.json"
            seen = json.loads(state.read_text())["logs"][ORIGIN]["size"] if state.exists() else 0
            proof = self.log.prove_consistency(seen, self.log.size) if seen else []
            note = witness_checkpoint(note, self.log_key.verifier, proof, signer=w,
                                      state_path=state, now=NOW)
        return dict(json.loads(proof_under(self.log, receipt.index, note).to_json()))

    def rule(self, quorum: int = 2, signers: bool = True) -> ReleaseLogRule:
        return ReleaseLogRule(log_key=self.log_key.verifier.vkey(),
                              witnesses=tuple(w.verifier.vkey() for w in self.witnesses),
                              quorum=quorum,
                              signers=(self.signer.verifier.vkey(),) if signers else ())


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_published_release_verifies_offline(world: World) -> None:
    world.publish(_statement("0.0.9", snp="11" * 48))
    proof = world.publish(_statement())
    assert proof["index"] == 1
    stated = verify_release_proof(proof, world.rule())
    assert stated == _statement()
    assert stated.provenance["predicate"]["buildDefinition"]["resolvedDependencies"][0][
        "digest"] == {"sha256": "cd" * 32}
    got = check_release(world.rule(), platform="sev-snp", measurement=SNP.upper(),
                        runtime={"release_proof": proof, "model_digest": MODEL,
                                 "engine_build": "llama.cpp-b4500-cpu"})
    assert got.release == "0.1.0"


def _refused(proof: Any, rule: ReleaseLogRule) -> str:
    with pytest.raises(MedclaveError) as err:
        verify_release_proof(proof, rule)
    return err.value.code


def test_every_part_of_the_proof_is_checked(world: World) -> None:
    world.publish(_statement("0.0.9", snp="11" * 48))
    proof = world.publish(_statement())
    assert _refused(proof, world.rule(quorum=3)) == "audit.cosignature_invalid"
    other_log = NoteSigner.generate(ORIGIN)
    assert _refused(proof, world.rule().model_copy(
        update={"log_key": other_log.verifier.vkey()})) == "audit.checkpoint_signature_invalid"
    # The statement changed after publication (another measurement): not the included leaf.
    forged = json.loads(json.dumps(proof))
    forged["entry"]["statement"]["measurements"]["sev-snp"] = ["22" * 48]
    assert _refused(forged, world.rule()) == "audit.inclusion_invalid"
    # One flipped proof hash, another index.
    bent = json.loads(json.dumps(proof))
    first = bent["proof"][0]
    bent["proof"][0] = ("B" if first[0] == "A" else "A") + first[1:]
    assert _refused(bent, world.rule()) == "audit.inclusion_invalid"
    assert _refused({**proof, "index": 0}, world.rule()) == "audit.inclusion_invalid"
    # Signed by someone the policy does not list: refused; no signer list: log inclusion only.
    stranger = NoteSigner.generate("release-signer")
    assert _refused(proof, world.rule().model_copy(
        update={"signers": (stranger.verifier.vkey(),)})) == "audit.release_invalid"
    assert verify_release_proof(proof, world.rule(signers=False)).release == "0.1.0"
    assert _refused({"not": "a proof"}, world.rule()) == "audit.release_invalid"


def test_a_statement_published_unsigned_by_the_signer_is_refused(world: World) -> None:
    """The log operator itself appends a statement with a signature by another key."""
    world.signer, real = NoteSigner.generate("release-signer"), world.signer
    proof = world.publish(_statement())
    rule = world.rule().model_copy(update={"signers": (real.verifier.vkey(),)})
    assert _refused(proof, rule) == "audit.release_invalid"


def test_check_release_names_the_build(world: World) -> None:
    proof = world.publish(_statement())
    runtime = {"release_proof": proof, "model_digest": MODEL}
    cases = [
        dict(platform="sev-snp", measurement="33" * 48, runtime=runtime),
        dict(platform="sim", measurement=SNP, runtime=runtime),
        dict(platform="sev-snp", measurement=None, runtime=runtime),
        dict(platform="sev-snp", measurement=SNP, runtime={**runtime, "model_digest": "0" * 64}),
        dict(platform="sev-snp", measurement=SNP,
             runtime={**runtime, "engine_build": "llama.cpp-other"}),
        dict(platform="sev-snp", measurement=SNP, runtime={"model_digest": MODEL}),
    ]
    for case in cases:
        with pytest.raises(PolicyError) as err:
            check_release(world.rule(), **case)  # type: ignore[arg-type]
        assert err.value.code == "policy.release_not_logged", case


_verification = Verification(platform="sev-snp", claims={"debug": False}, checks=())


def test_a_policy_with_the_rule_fails_closed_where_it_is_not_checked(world: World) -> None:
    policy = AppraisalPolicy.model_validate({"platforms": ["sev-snp"],
                                             "release_log": world.rule().model_dump()})
    result = appraisal_of(_verification, policy, now=NOW)
    assert "policy.release_not_logged" in {v["code"] for v in result.violations}
    assert not any(v["code"] == "policy.release_not_logged"
                   for v in appraisal_of(_verification, policy, now=NOW,
                                     release_proven=True).violations)
    # The digest of a policy without the rule is what it always was.
    plain = AppraisalPolicy.model_validate({"platforms": ["sev-snp"]})
    assert "release_log" not in json.dumps(plain.model_dump(mode="json", exclude_none=True))
    assert plain.digest() != policy.digest()
    with pytest.raises(ValueError):
        ReleaseLogRule(log_key=world.log_key.verifier.vkey(), quorum=1)


def test_statement_rules() -> None:
    with pytest.raises(MedclaveError):
        ReleaseStatement(release="1", measurements={"sev-snp": ("XYZ",)}).check()
    with pytest.raises(MedclaveError):
        ReleaseStatement(release="1", measurements={"sev-snp": ()}).check()
    with pytest.raises(MedclaveError):
        ReleaseStatement(release="1", measurements={"tdx": (TDX,)}, model_digests=("x",)).check()


def test_a_checkpoint_of_another_log_gives_no_proof(world: World) -> None:
    world.publish(_statement())
    other = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=world.log_key)
    other.append(b'{"other":1}')
    _, note = other.latest_checkpoint()
    with pytest.raises(AuditError) as err:
        proof_under(world.log, 0, note)
    assert err.value.code == "audit.consistency_invalid"


# --- the commands ---------------------------------------------------------------------------


def test_release_commands_end_to_end(tmp_path: Path) -> None:
    from medclave.cli.main import app

    run = CliRunner().invoke
    keys = {}
    for name, who, cosigner in (("log", ORIGIN, False), ("signer", "release-signer", False),
                                ("w1", "witness-1", True)):
        args = ["audit", "keygen", who, "--out", str(tmp_path / name)]
        result = run(app, [*args, "--cosigner"] if cosigner else args)
        assert result.exit_code == 0, result.output
        keys[name] = json.loads(result.output)["vkey"]
    (tmp_path / "wheel.whl").write_bytes(b"wheel bytes")
    (tmp_path / "uv.lock").write_bytes(b"lock bytes")
    made = run(app, ["release", "statement", "--release", "0.1.0", "--measurement",
                     f"sev-snp={SNP}", "--wheel", str(tmp_path / "wheel.whl"), "--commit",
                     "c" * 40, "--source", "git+https://example.invalid/medclave", "--builder",
                     "urn:medclave:builder:ci", "--lockfile", str(tmp_path / "uv.lock"),
                     "--out", str(tmp_path / "statement.json")])
    assert made.exit_code == 0, made.output
    subject = json.loads(made.output)["provenance"]["subject"][0]
    assert subject["digest"]["sha256"] == hashlib.sha256(b"wheel bytes").hexdigest()
    log = tmp_path / "releases.sqlite"
    published = run(app, ["release", "publish", str(tmp_path / "statement.json"), "--log",
                          str(log), "--origin", ORIGIN, "--log-key", str(tmp_path / "log"),
                          "--signer", str(tmp_path / "signer")])
    assert published.exit_code == 0, published.output
    (tmp_path / "checkpoint").write_text(json.loads(published.output)["checkpoint"])
    cosigned = run(app, ["audit", "witness", "--checkpoint", str(tmp_path / "checkpoint"),
                         "--log-key", keys["log"], "--witness-key", str(tmp_path / "w1"),
                         "--state", str(tmp_path / "w1.json"), "--from-log", str(log),
                         "--out", str(tmp_path / "cosigned")])
    assert cosigned.exit_code == 0, cosigned.output
    proved = run(app, ["release", "proof", "0", "--log", str(log), "--origin", ORIGIN,
                       "--checkpoint", str(tmp_path / "cosigned"),
                       "--out", str(tmp_path / "proof.json")])
    assert proved.exit_code == 0, proved.output
    verify = ["release", "verify", str(tmp_path / "proof.json"), "--log-key", keys["log"],
              "--witness", keys["w1"], "--quorum", "1", "--signer", keys["signer"],
              "--platform", "sev-snp"]
    ok = run(app, [*verify, "--measurement", SNP])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["statement"]["release"] == "0.1.0"
    refused = run(app, [*verify, "--measurement", "44" * 48])
    assert refused.exit_code == 1
    assert json.loads(refused.output)["error"]["code"] == "policy.release_not_logged"
