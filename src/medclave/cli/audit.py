"""``medclave audit``: verify a log, prove inclusion, check receipts, replay, export, witness.

Wiring only; the logic is in :mod:`medclave.audit`. Every command prints one JSON object on
stdout. Exit 0: verified / done; 1: refused (tampering, a proof or signature that fails, a
replay that differs); 2: unusable input (missing file, malformed key, unknown index).

The log is an SQLite file: ``--log FILE``, or ``audit.sqlite3`` under ``--data DIR``
(``MEDCLAVE_DATA_DIR``, default ``.medclave``). Keys are C2SP verifier keys
(``name+keyid+base64``), given inline or as ``@FILE``; the log key must come from the
enclave's attestation, never from the log itself. ``verify`` alone proves the log agrees with
itself; ``verify --checkpoint FILE`` (a receipt's or a witness's checkpoint) also proves it
extends what the auditor already holds, which is what catches a truncated or rewritten log.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from medclave.audit.entry import AuditEntry, parse_commitment_key, parse_entry
from medclave.audit.fhir import export_bundle
from medclave.audit.log import AuditLog
from medclave.audit.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    NoteSigner,
    NoteVerifier,
    VerifiedCheckpoint,
    verify_checkpoint,
)
from medclave.audit.pgstore import PostgresLogStore
from medclave.audit.receipt import decode_proof, verify_receipt
from medclave.audit.replay import ReplayEngine, replay
from medclave.audit.store import LogStore, SqliteLogStore, log_name
from medclave.audit.verify import inspect_log, open_trusted
from medclave.audit.witness import load_state, witness_checkpoint
from medclave.cli.output import emit, fail
from medclave.errors import AuditError, EnclaveError, InputError, MedclaveError
from medclave.util.files import create_secret_file

app = typer.Typer(
    help="Tamper-evident audit log: verify, prove, receipts, replay, FHIR export, witness.",
    no_args_is_help=True,
)
receipt_app = typer.Typer(help="Receipts that come with each answer.", no_args_is_help=True)
app.add_typer(receipt_app, name="receipt")

LOG_NAME = "audit.sqlite3"
# The engine replay uses unless --engine names another: the enclave's llama.cpp engine over the
# bundled model, exposed as a factory of a ``ReplayEngine`` under this name (any ``module:attr``
# can be plugged in with --engine; one that is missing says ``enclave.not_ready``).
DEFAULT_ENGINE = "medclave.enclave.engines:replay_engine"

LogOpt = Annotated[Path | None, typer.Option("--log", help="The SQLite log file.")]
DataOpt = Annotated[
    Path, typer.Option("--data", envvar="MEDCLAVE_DATA_DIR", help=f"Data folder with {LOG_NAME}.")
]
KeyOpt = Annotated[str, typer.Option("--key", help="The log's verifier key, or @FILE (required).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")]
WitnessOpt = Annotated[
    list[str] | None, typer.Option("--witness", help="A witness verifier key (repeatable).")
]
QuorumOpt = Annotated[int, typer.Option(help="Witness cosignatures required.")]


def _text(value: str) -> str:
    if value.startswith("@"):
        return _read(Path(value[1:])).decode().strip()
    return value


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError("input.missing", f"cannot read {path.name}: {exc.strerror}") from exc


def _verifier(value: str, alg: int = ALG_ED25519) -> NoteVerifier:
    key = NoteVerifier.from_vkey(_text(value))
    if key.alg != alg:
        raise InputError("input.malformed", f"{key.name} is not a type {alg:#04x} key")
    return key


def _log_path(log: Path | None, data: Path) -> Path:
    path = log if log is not None else data / LOG_NAME
    if not path.is_file():
        raise InputError("input.missing", f"no audit log at {path}")
    return path


def _open(log: Path | None, data: Path) -> AuditLog:
    store = SqliteLogStore(_log_path(log, data), readonly=True)
    origin = store.get_meta("origin")
    if origin is None:
        raise InputError("input.malformed", "the file is not a Medclave audit log")
    return AuditLog(store, origin=origin)


def _guard(fn: Callable[[], dict[str, Any]], out: Path | None = None) -> None:
    try:
        result = fn()
    except MedclaveError as exc:
        raise fail(exc) from None
    emit({"ok": True, **result}, out)


@app.command("verify")
def verify_cmd(
    key: KeyOpt,
    log_file: Annotated[Path | None, typer.Argument(metavar="LOG", help="The log file.")] = None,
    log: LogOpt = None,
    data: DataOpt = Path(".medclave"),
    no_parse: Annotated[
        bool, typer.Option("--no-parse-entries", help="Hash entries without schema checks.")
    ] = False,
    checkpoint: Annotated[list[Path] | None, typer.Option(
        "--checkpoint", metavar="FILE",
        help="A checkpoint kept outside the log (signed note, or a receipt holding one): the "
        "log must extend it. Repeatable.")] = None,
    witness: WitnessOpt = None,
    quorum: QuorumOpt = 0,
    db: Annotated[str | None, typer.Option(
        "--store", metavar="URL",
        help="The enclaves' postgresql:// store instead of a file: the log is the one of "
        "--key's origin and key. Read only.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Accepted for symmetry: the output is always JSON.")
    ] = False,
) -> None:
    """Recompute the whole tree; check every checkpoint, their consistency and every node.

    Without --checkpoint this proves only that the log agrees with itself: a log truncated or
    emptied together with its checkpoints still verifies. With --checkpoint it also proves,
    by a consistency proof, that the log extends each checkpoint given (rollback, divergence).
    """
    try:
        verifier = _verifier(key)
        witnesses = [_verifier(w, ALG_COSIGNATURE_V1) for w in witness or []]
        trusted = [_trusted(path, verifier, witnesses, quorum) for path in checkpoint or []]
        store: LogStore
        if db is not None:
            store = PostgresLogStore(db, log=log_name(verifier.name, verifier.vkey()),
                                     readonly=True, allow_remote=True)
        else:
            store = SqliteLogStore(_log_path(log_file or log, data), readonly=True)
        try:
            report = inspect_log(store, verifier, parse_entries=not no_parse,
                                 trusted=[t.checkpoint for t in trusted])
        finally:
            store.close()
    except MedclaveError as exc:
        raise fail(exc) from None
    result = report.to_dict()
    if checkpoint:
        result["trusted"] = [
            {"file": path.name, "size": t.checkpoint.size, "root": t.checkpoint.root.hex(),
             "cosigned_by": [c.name for c in t.cosignatures]}
            for path, t in zip(checkpoint, trusted, strict=True)
        ]
    emit(result)
    if not report.ok:
        raise typer.Exit(1)


def _trusted(
    path: Path, key: NoteVerifier, witnesses: list[NoteVerifier], quorum: int
) -> VerifiedCheckpoint:
    try:
        return open_trusted(_read(path), key, witnesses=witnesses, quorum=quorum)
    except AuditError as exc:  # say which of the files given was refused
        raise AuditError(exc.code, exc.detail, where=f"checkpoint {path.name}") from exc


@app.command("prove")
def prove_cmd(
    index: Annotated[int, typer.Argument(help="Leaf index.")],
    log: LogOpt = None,
    data: DataOpt = Path(".medclave"),
    since: Annotated[
        int | None, typer.Option(help="Add a consistency proof from this checkpoint size.")
    ] = None,
    out: OutOpt = None,
) -> None:
    """Print the receipt for entry INDEX under the latest checkpoint."""
    try:
        audit = _open(log, data)
        receipt = audit.receipt(index, since=since)
        audit.close()
    except MedclaveError as exc:
        raise fail(exc) from None
    text = receipt.to_json()
    if out is None:
        sys.stdout.write(text.decode() + "\n")
    else:
        out.write_bytes(text)


@receipt_app.command("verify")
def receipt_verify_cmd(
    key: KeyOpt,
    file: Annotated[Path, typer.Argument(help="The receipt (JSON).")],
    witness: WitnessOpt = None,
    quorum: QuorumOpt = 0,
) -> None:
    """Check a receipt offline: checkpoint signature, cosignatures, entry inclusion."""

    def run() -> dict[str, Any]:
        witnesses = [_verifier(w, ALG_COSIGNATURE_V1) for w in witness or []]
        got = verify_receipt(_read(file), _verifier(key), witnesses=witnesses, quorum=quorum)
        return {
            "index": got.index,
            "tree_size": got.checkpoint.size,
            "root": got.checkpoint.root.hex(),
            "cosigned_by": [c.name for c in got.cosignatures],
            "entry": got.entry.model_dump(mode="json"),
        }

    _guard(run)


def load_engine(spec: str) -> ReplayEngine:
    """``module:attribute`` naming a :class:`ReplayEngine` or a zero-argument factory of one."""
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = getattr(importlib.import_module(module_name), attr or "replay_engine")
    except (ImportError, AttributeError) as exc:
        raise EnclaveError("enclave.not_ready", f"no replay engine at {spec}: {exc}") from exc
    engine = target if isinstance(target, ReplayEngine) else target()
    if not isinstance(engine, ReplayEngine):
        raise EnclaveError("enclave.not_ready", f"{spec} is not a ReplayEngine")
    return engine


@app.command("replay")
def replay_cmd(
    index: Annotated[int, typer.Argument(help="Leaf index of the inference.")],
    prompt: Annotated[Path, typer.Option(
        help="The committed prompt, byte for byte (UTF-8 file): for the enclave, the model "
        "input as compact sorted JSON (medclave.enclave.commitment.commitment_input).")],
    tenant_key: Annotated[Path, typer.Option(help="File with the tenant's commitment key.")],
    key: KeyOpt,
    engine: Annotated[
        str, typer.Option(help="module:attr of the engine; default the enclave's llama.cpp.")
    ] = DEFAULT_ENGINE,
    log: LogOpt = None,
    data: DataOpt = Path(".medclave"),
) -> None:
    """Rerun an inference with its recorded model, parameters and seed; check the answer."""

    def run() -> dict[str, Any]:
        audit = _open(log, data)
        try:
            # Only replay what the log proves it recorded: the receipt must verify first.
            got = verify_receipt(audit.receipt(index), _verifier(key))
        finally:
            audit.close()
        secret = parse_commitment_key(_read(tenant_key))
        result = replay(got.entry, _read(prompt).decode(), load_engine(engine), secret)
        return {"index": index, "answer_commitment": result.commitment, "reproduced": True}

    _guard(run)


def _entries(audit: AuditLog, start: int, stop: int | None) -> Iterator[tuple[int, AuditEntry]]:
    end = audit.size if stop is None else min(stop, audit.size)
    for index, data, _leaf in audit.store.entries(start):
        if index >= end:
            break
        yield index, parse_entry(data)


@app.command("export")
def export_cmd(
    fhir: Annotated[bool, typer.Option("--fhir", help="FHIR R4 AuditEvent Bundle.")] = False,
    start: Annotated[int, typer.Option(help="First index.")] = 0,
    stop: Annotated[int | None, typer.Option(help="One past the last index.")] = None,
    log: LogOpt = None,
    data: DataOpt = Path(".medclave"),
    out: OutOpt = None,
) -> None:
    """Export entries; ``--fhir`` is the only format so far (IHE BALP-shaped AuditEvents)."""
    if not fhir:
        raise fail(InputError("input.missing", "choose a format: --fhir"))
    try:
        audit = _open(log, data)
        bundle = export_bundle(_entries(audit, start, stop), origin=audit.origin)
        audit.close()
    except MedclaveError as exc:
        raise fail(exc) from None
    emit(bundle, out)


@app.command("witness")
def witness_cmd(
    checkpoint: Annotated[Path, typer.Option(help="The log's signed checkpoint.")],
    log_key: Annotated[str, typer.Option(help="The log's verifier key, or @FILE.")],
    witness_key: Annotated[Path, typer.Option(help="This witness's PRIVATE+KEY file.")],
    state: Annotated[Path, typer.Option(help="JSON state: last cosigned size per log.")],
    proof: Annotated[
        Path | None, typer.Option(help="Consistency proof, one base64 hash per line.")
    ] = None,
    from_log: Annotated[
        Path | None, typer.Option(help="Take the proof from a copy of the log instead.")
    ] = None,
    out: OutOpt = None,
) -> None:
    """Cosign another deployment's checkpoint once it extends the last one cosigned."""
    try:
        signer = NoteSigner.from_skey(_read(witness_key).decode())
        note = _read(checkpoint)
        hashes = _witness_proof(note, _verifier(log_key), state, proof, from_log)
        cosigned = witness_checkpoint(
            note, _verifier(log_key), hashes, signer=signer, state_path=state,
            now=datetime.now(UTC),
        )
    except MedclaveError as exc:
        raise fail(exc) from None
    if out is None:
        sys.stdout.write(cosigned.decode())
    else:
        out.write_bytes(cosigned)


def _witness_proof(
    note: bytes, key: NoteVerifier, state: Path, proof: Path | None, from_log: Path | None
) -> list[bytes]:
    if proof is not None:
        return decode_proof(_read(proof).decode().split())
    if from_log is None:
        return []
    cp = verify_checkpoint(note, key).checkpoint
    prev = load_state(state).get(cp.origin)
    audit = _open(from_log, Path("."))
    try:
        return audit.prove_consistency(prev.size, cp.size) if prev else []
    finally:
        audit.close()


@app.command("keygen")
def keygen_cmd(
    name: Annotated[str, typer.Argument(help="Key name: the log origin, or the witness name.")],
    out: Annotated[Path, typer.Option(help="Where to write the PRIVATE+KEY (mode 0600).")],
    cosigner: Annotated[bool, typer.Option(help="A witness (cosignature/v1) key.")] = False,
) -> None:
    """Make an Ed25519 note key; print its verifier key."""
    try:
        signer = NoteSigner.generate(name, ALG_COSIGNATURE_V1 if cosigner else ALG_ED25519)
        create_secret_file(out, (signer.skey() + "\n").encode())
    except FileExistsError:
        raise fail(InputError("input.malformed", f"{out} exists; not overwriting a key")) from None
    except MedclaveError as exc:
        raise fail(exc) from None
    emit({"ok": True, "vkey": signer.verifier.vkey()})

