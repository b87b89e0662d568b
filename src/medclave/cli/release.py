"""``medclave release``: publish a release's reference values in a transparency log; verify.

For maintainers: ``statement`` writes the signed-to-be statement (measurements, model digests,
engine builds, in-toto/SLSA provenance); ``publish`` appends it, signed, to the release log
(an SQLite log in the audit log's format: ``medclave audit keygen`` makes its keys, and
witnesses cosign its checkpoints with ``medclave audit witness --from-log``); ``proof`` builds
the proof under a cosigned checkpoint, the file an enclave serves (``release_proof_file``).
For auditors and hospitals: ``verify`` checks a proof offline.

Output is JSON. Exit 0: done; 1: refused; 2: unusable input.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from medclave.attestation.policy import ReleaseLogRule
from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from medclave.audit.release import (
    ReleaseStatement,
    check_release,
    proof_under,
    provenance,
    publish,
    verify_release_proof,
)
from medclave.cli.output import emit, run
from medclave.errors import InputError

app = typer.Typer(help="Release transparency: reference values in an append-only log.",
                  no_args_is_help=True)

LogOpt = Annotated[Path, typer.Option("--log", help="the release log (SQLite)")]
OriginOpt = Annotated[str, typer.Option("--origin", help="the release log's origin (its name)")]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _skey(path: Path) -> NoteSigner:
    try:
        return NoteSigner.from_skey(path.read_text().strip())
    except OSError as exc:
        raise InputError("input.missing", f"cannot read {path.name}") from exc


@app.command("statement")
def statement_cmd(
    release: Annotated[str, typer.Option("--release", help="the release's version")],
    measurement: Annotated[list[str], typer.Option(
        "--measurement", help="PLATFORM=HEX (repeat): sev-snp, tdx, sim, ...")],
    wheel: Annotated[Path, typer.Option("--wheel", help="the built artifact (subject)")],
    commit: Annotated[str, typer.Option("--commit", help="the source commit")],
    source: Annotated[str, typer.Option("--source", help="the source repository URI")],
    builder: Annotated[str, typer.Option("--builder", help="the builder's id (URI)")],
    lockfile: Annotated[Path, typer.Option("--lockfile", help="the dependency lockfile")],
    model_digest: Annotated[list[str] | None, typer.Option("--model-digest")] = None,
    engine_build: Annotated[list[str] | None, typer.Option("--engine-build")] = None,
    out: Annotated[Path | None, typer.Option("--out")] = None,
) -> None:
    """Write a release statement with its in-toto/SLSA provenance."""
    def act() -> dict[str, Any]:
        by_platform: dict[str, list[str]] = {}
        for item in measurement:
            platform, _, value = item.partition("=")
            if not value:
                raise InputError("input.malformed", "--measurement is PLATFORM=HEX")
            by_platform.setdefault(platform, []).append(value.lower())
        statement = ReleaseStatement(
            release=release, measurements={k: tuple(v) for k, v in by_platform.items()},
            model_digests=tuple(model_digest or ()), engine_builds=tuple(engine_build or ()),
            provenance=provenance(subject=wheel.name, subject_sha256=_sha256_file(wheel),
                                  source_uri=source, commit=commit, builder=builder,
                                  lockfile_sha256=_sha256_file(lockfile))).check()
        body = statement.model_dump(mode="json")
        if out is not None:
            out.write_text(json.dumps(body, indent=2) + "\n")
        return body
    emit(run(act))


@app.command("publish")
def publish_cmd(
    statement: Annotated[Path, typer.Argument(help="the statement (from `statement`)")],
    log: LogOpt, origin: OriginOpt,
    log_key: Annotated[Path, typer.Option("--log-key", help="the log's PRIVATE+KEY file")],
    signer: Annotated[Path, typer.Option("--signer", help="the release signer's PRIVATE+KEY")],
    out: Annotated[Path | None, typer.Option("--out", help="write the proof here too")] = None,
) -> None:
    """Sign the statement and append it to the release log; print its proof."""
    def act() -> dict[str, Any]:
        parsed = ReleaseStatement.model_validate_json(statement.read_bytes()).check()
        release_log = AuditLog.open_sqlite(log, origin=origin, signer=_skey(log_key))
        try:
            proof = publish(release_log, parsed, _skey(signer))
        finally:
            release_log.close()
        body = json.loads(proof.to_json())
        if out is not None:
            out.write_bytes(proof.to_json())
        return dict(body)
    emit(run(act))


@app.command("proof")
def proof_cmd(
    index: Annotated[int, typer.Argument(help="the statement's leaf index")],
    log: LogOpt, origin: OriginOpt,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="a (cosigned) checkpoint")],
    out: Annotated[Path | None, typer.Option("--out")] = None,
) -> None:
    """The proof of entry INDEX under a checkpoint witnesses cosigned (what enclaves serve)."""
    def act() -> dict[str, Any]:
        release_log = AuditLog.open_sqlite(log, origin=origin)
        try:
            proof = proof_under(release_log, index, checkpoint.read_bytes())
        finally:
            release_log.close()
        if out is not None:
            out.write_bytes(proof.to_json())
        return dict(json.loads(proof.to_json()))
    emit(run(act))


@app.command("verify")
def verify_cmd(
    proof: Annotated[Path, typer.Argument(help="a release proof")],
    log_key: Annotated[str, typer.Option("--log-key", help="the log's verifier key")],
    witness: Annotated[list[str] | None, typer.Option("--witness")] = None,
    quorum: Annotated[int, typer.Option(help="witness cosignatures required")] = 0,
    signer: Annotated[list[str] | None, typer.Option(
        "--signer", help="a release signer's verifier key (repeat)")] = None,
    platform: Annotated[str | None, typer.Option(help="with --measurement")] = None,
    measurement: Annotated[str | None, typer.Option(help="check this build is released")] = None,
) -> None:
    """Check a release proof offline: signed checkpoint, quorum, inclusion, signer, and
    optionally that it names PLATFORM's MEASUREMENT."""
    def act() -> dict[str, Any]:
        try:
            rule = ReleaseLogRule(log_key=log_key, witnesses=tuple(witness or ()),
                                  quorum=quorum, signers=tuple(signer or ()))
        except ValueError as exc:
            raise InputError("input.malformed", "quorum exceeds the witnesses given") from exc
        try:
            data = json.loads(proof.read_bytes())
        except OSError as exc:
            raise InputError("input.missing", f"cannot read {proof.name}: {exc.strerror}"
                             ) from None
        except ValueError:
            raise InputError("input.malformed", f"{proof.name} is not JSON") from None
        if measurement is not None:
            stated = check_release(rule, platform=platform or "", measurement=measurement,
                                   runtime={"release_proof": data})
        else:
            stated = verify_release_proof(data, rule)
        return {"verified": True, "statement": stated.model_dump(mode="json")}
    emit(run(act))
