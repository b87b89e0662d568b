"""``medclave attest verify``: scripts depend on its exact form, output and exit codes.

Exit 0: verified and the policy holds; 1: refused (a check or the policy failed); 2: unusable input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from medclave.attestation import (
    AppraisalPolicy,
    Verification,
    appraisal_of,
    default_policy,
    initdata,
    load_policy,
)
from medclave.attestation.verifier import (
    BUNDLE,
    detect,
    parse_bundle,
    split_trust_files,
    verify_bundle,
    verify_raw,
)
from medclave.cli.output import emit, error_object, exit_code, refusals
from medclave.errors import AttestationError, InputError, MedclaveError

app = typer.Typer(help="Verify and appraise attestation evidence.", no_args_is_help=True)

def _parse_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"--at wants ISO 8601, got {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _nonce(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise InputError("input.malformed", f"--nonce is not hex: {exc}") from exc


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AttestationError("attestation.malformed", f"cannot read {path.name}: {exc.strerror}") from exc


def run_verify(
    evidence: Path,
    certs: list[Path],
    collateral: list[Path],
    nonce: str | None,
    policy_file: Path | None,
    at: datetime,
    sim_roots: frozenset[str] = frozenset(),
    online: Any = None,
) -> tuple[int, dict[str, Any]]:
    """The whole command as a function: (exit code, the JSON object)."""
    out: dict[str, Any] = {
        "platform": None, "verified": False, "checks": [], "claims": {}, "tcb_status": "unknown",
        "policy": None, "error": None,
    }
    try:
        policy: AppraisalPolicy = load_policy(policy_file) if policy_file else default_policy()
        out["policy"] = {"name": policy.name, "digest": policy.digest(), "accepted": False, "violations": []}
        nonce_bytes = _nonce(nonce)
        data = _read(evidence)
        kind = detect(data)
        cert_blobs, key_blobs = split_trust_files([_read(p) for p in certs])
        coll_blobs = [_read(p) for p in collateral]
        result: Verification
        if kind == BUNDLE:
            bundle = parse_bundle(data)
            out["platform"] = bundle.platform
            result = verify_bundle(bundle, now=at, expected_nonce=nonce_bytes,
                                   certificates=cert_blobs, collateral=coll_blobs, keys=key_blobs,
                                   sim_roots=sim_roots, online=online)
        else:
            out["platform"] = kind
            result = verify_raw(data, now=at, platform=kind, certificates=cert_blobs,
                                collateral=coll_blobs, keys=key_blobs, nonce=nonce_bytes,
                                sim_roots=sim_roots,
                                online=online)
    except MedclaveError as exc:
        out["checks"] = [c.to_dict() for c in getattr(exc, "checks", ())]
        out.update(error_object(exc))
        return exit_code(exc), out

    out.update({k: v for k, v in result.to_dict().items() if k in ("platform", "verified", "checks",
                                                                     "claims", "tcb_status", "secure",
                                                                     "warnings")})
    runtime = result.claims.get("runtime")
    model = runtime.get("model_digest") if isinstance(runtime, dict) else None
    appraisal = appraisal_of(result, policy, now=at, model_digest=model)
    out["policy"] = {"name": policy.name, "digest": appraisal.policy_digest,
                     "accepted": appraisal.accepted, "violations": list(appraisal.violations)}
    if not appraisal.accepted:
        first = appraisal.violations[0]
        out["error"] = {"code": first["code"] if len(appraisal.violations) == 1 else "policy.refused",
                        "message": "; ".join(f"{v['claim']}: {v['detail']}" for v in appraisal.violations)}
        return 1, out
    return 0, out


def render(out: dict[str, Any], console: Console) -> None:
    if out.get("secure") is False and out.get("platform") == "sim":
        console.print("[bold red]SIM: a software TEE for development. It protects nothing.[/]")
    for warning in out.get("warnings") or ():
        console.print(f"[bold red]WARNING[/] {warning}")
    table = Table(title=f"{out['platform'] or 'unknown'} evidence", show_lines=False)
    table.add_column("check")
    table.add_column("ok")
    table.add_column("detail", overflow="fold")
    for c in out["checks"]:
        table.add_row(c["name"], "[green]yes[/]" if c["ok"] else "[red]NO[/]", c["detail"])
    console.print(table)
    for key in ("measurement", "mr_td", "report_data", "driver_version", "vbios_version", "fwid", "nonce"):
        if key in out["claims"]:
            console.print(f"{key}: {out['claims'][key]}")
    console.print(f"TCB status: {out['tcb_status']}")
    pol = out.get("policy") or {}
    for v in pol.get("violations", []):
        console.print(f"[red]policy violation[/] {v['code']} ({v['claim']}): {v['detail']}")
    if out["error"]:
        console.print(f"[bold red]REFUSED[/] {out['error']['code']}: {out['error']['message']}")
    else:
        console.print(f"[bold green]VERIFIED[/] and accepted by policy {pol.get('name')}")


@app.command("verify")
def verify_cmd(
    evidence: Annotated[Path, typer.Argument(
        help="SNP report, TDX quote, NVIDIA hex, CoCo vTPM JSON or evidence bundle")],
    cert: Annotated[list[Path] | None, typer.Option(
        "--cert", help="PEM or DER certificate file(s); a JWKS, PEM public key or "
                       "tastore.json as a trust anchor (gcp-cs, cca)")] = None,
    collateral: Annotated[list[Path] | None, typer.Option(
        "--collateral", help="PCS JSON, CRL, dcap-qvl bundle, RIM")] = None,
    nonce: Annotated[str | None, typer.Option(help="expected nonce, hex")] = None,
    policy: Annotated[Path | None, typer.Option(help="appraisal policy (TOML or JSON)")] = None,
    at: Annotated[str | None, typer.Option("--at", help="verification time, ISO 8601 (default now)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    sim_root: Annotated[list[str] | None, typer.Option(
        "--sim-root", help="accept sim evidence under this root fingerprint (development only)")] = None,
    online: Annotated[bool, typer.Option(
        "--online", help="fetch missing SNP endorsements from AMD KDS, check NVIDIA OCSP, "
                         "fetch Google's Confidential Space JWKS")] = False,
    cache: Annotated[Path, typer.Option(help="cache folder for --online")] = Path(".medclave/kds"),
) -> None:
    """Verify EVIDENCE against the pinned roots and appraise it against a policy.

    Offline unless --online is given: then, and only then, AMD's key distribution service,
    NVIDIA's OCSP responder and Google's Confidential Space JWKS are contacted."""
    provider = None
    if online:
        from medclave.attestation.online import OnlineEndorsements

        provider = OnlineEndorsements(cache_dir=cache)
    try:
        code, out = run_verify(evidence, cert or [], collateral or [], nonce, policy,
                               _parse_time(at), frozenset(sim_root or ()), provider)
    finally:
        if provider is not None:
            provider.close()
    if as_json:
        emit(out)
    else:
        render(out, Console())
    raise typer.Exit(code)


def _initdata_result(doc: initdata.InitData) -> dict[str, Any]:
    values = doc.reference_values()
    return {
        "ok": True,
        "algorithm": doc.algorithm,
        "files": sorted(doc.data),
        "annotation": {initdata.ANNOTATION: initdata.annotation(doc)},
        # What the hardware reports for this document, as appraisal policy rules take it.
        "reference_values": {
            "sev-snp": {"host_data": values["host_data"]},
            "tdx": {"mr_config_id": values["mr_config_id"]},
            "cca": {"realm.personalization_value": values["realm.personalization_value"]},
        },
    }


@app.command("initdata")
def initdata_cmd(
    files: Annotated[list[Path] | None, typer.Argument(
        help="files to carry, each under its file name: aa.toml, cdh.toml, policy.rego")] = None,
    algorithm: Annotated[str, typer.Option(help="sha256, sha384 or sha512")] = "sha384",
    decode: Annotated[Path | None, typer.Option(
        "--decode", help="read an existing annotation value from this file instead")] = None,
    document: Annotated[Path | None, typer.Option(
        "--document", help="also write the init data TOML document here")] = None,
) -> None:
    """Confidential Containers init data for the enclave pod (Helm value enclave.coco.initdata)
    and the HOST_DATA / MRCONFIGID values an appraisal policy pins for it (docs/kubernetes.md).

    Prints one JSON object; exit 2 for unusable input."""
    with refusals():
        if decode is not None:
            if files:
                raise InputError("input.malformed", "give files or --decode, not both")
            doc = initdata.decode_annotation(_read(decode).decode("ascii", "replace").strip())
        else:
            if not files:
                raise InputError("input.missing", "name the files to carry (or --decode)")
            names = [p.name for p in files]
            if len(set(names)) != len(names):
                raise InputError("input.malformed", "two files have the same name")
            try:
                data = {p.name: _read(p).decode("utf-8") for p in files}
            except UnicodeDecodeError:
                raise InputError("input.malformed", "init data files must be UTF-8") from None
            doc = initdata.build(data, algorithm)
        if document is not None:
            document.write_text(doc.text, encoding="utf-8")
    emit(_initdata_result(doc))
