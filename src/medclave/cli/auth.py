"""``medclave auth``: issue and check tokens, and ask the policies for a decision.

``token issue`` signs with the local development issuer's key (``--data``), and ``token verify``
checks against that same key unless ``--jwks`` or ``--issuer`` names another trust anchor.
``token verify`` exits 0 with the checked claims, 1 when the token is refused, 2 when its
inputs cannot be used; ``decide`` exits 0 on allow, 1 on deny, 2 when its inputs cannot be used.
Errors as in :mod:`medclave.cli.output`.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from medclave.auth.authorizer import Authorizer, load_policies
from medclave.auth.entities import EntityStore
from medclave.auth.issuer import (
    DEFAULT_AUDIENCE,
    DEFAULT_DATA_DIR,
    KEY_FILE,
    SigningAlg,
    TokenIssuer,
    load_or_create_signing_key,
)
from medclave.auth.jwks import AUTH_JOSE_ERRORS, HttpJwks, JwksProvider, StaticJwks
from medclave.auth.tokens import IssuerConfig, TokenOptions, TokenVerifier
from medclave.cli.output import fail
from medclave.crypto.jose import SUPPORTED_ALGORITHMS, parse_compact
from medclave.errors import InputError, MedclaveError

app = typer.Typer(help="Identity tokens and authorization decisions.", no_args_is_help=True)
token_app = typer.Typer(help="Issue and verify access tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")

DEFAULT_ISSUER = "http://127.0.0.1:8800"
MAX_REQUEST_BYTES = 1024 * 1024


def _now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"--at wants ISO 8601, got {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not value.isdigit():
        raise typer.BadParameter(f"--ttl wants seconds or e.g. 5m, got {text!r}")
    return timedelta(seconds=int(value) * units[unit])


@token_app.command("issue")
def issue(
    sub: Annotated[str, typer.Option(help="Subject (user or client id).")],
    tenant: Annotated[str, typer.Option(help="Tenant (hospital) the subject belongs to.")],
    roles: Annotated[str, typer.Option(help="Comma-separated roles, e.g. clinician,admin.")] = "",
    ttl: Annotated[str, typer.Option(help="Lifetime: seconds or Nm, at most 15m.")] = "5m",
    audience: Annotated[str, typer.Option(help="Audience (the service).")] = DEFAULT_AUDIENCE,
    issuer: Annotated[str, typer.Option(help="Issuer identifier (its URL).")] = DEFAULT_ISSUER,
    data: Annotated[Path, typer.Option(help="IdP data folder (signing key).")] = DEFAULT_DATA_DIR,
    alg: Annotated[str, typer.Option(help="Key type if one is created: EdDSA or ES256.")] = "EdDSA",
    jkt: Annotated[str | None, typer.Option(help="Bind to a DPoP key thumbprint.")] = None,
) -> None:
    """Print a signed access token from the local issuer key."""
    if alg not in ("EdDSA", "ES256"):
        raise typer.BadParameter("--alg is EdDSA or ES256")
    signing_alg: SigningAlg = "EdDSA" if alg == "EdDSA" else "ES256"
    try:
        key = load_or_create_signing_key(data, alg=signing_alg)
        token = TokenIssuer(issuer, key, audience=audience).issue(
            sub=sub,
            tenant=tenant,
            roles=[r.strip() for r in roles.split(",") if r.strip()],
            now=datetime.now(UTC),
            ttl=_duration(ttl),
            jkt=jkt,
        )
    except MedclaveError as exc:
        raise fail(exc, as_json=False) from None
    typer.echo(token)


def _local_keys(data: Path) -> StaticJwks:
    """The public key of the local development issuer (the key ``token issue`` signs with)."""
    if not (data / KEY_FILE).is_file():
        raise InputError("input.missing", f"give --issuer URL or --jwks FILE: there is no local "
                         f"issuer key in {data}/ (token issue --data makes one)")
    return StaticJwks.from_document({"keys": [load_or_create_signing_key(data).public_jwk()]})


def _keys(issuer: str | None, jwks: Path | None, data: Path, client: httpx.Client
          ) -> JwksProvider:
    if jwks is not None:
        return StaticJwks.from_file(jwks)
    if issuer is None:
        return _local_keys(data)
    return HttpJwks(issuer=issuer, client=client)


def run_verify(
    token: str,
    *,
    issuer: str | None,
    jwks: Path | None,
    audience: str,
    now: datetime,
    data: Path = DEFAULT_DATA_DIR,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """The command as a function: the checked claims, or raise. Keys: ``jwks`` if given, else
    discovery at ``issuer`` if given, else the local issuer key in ``data``."""
    own = client is None
    http = client or httpx.Client(timeout=5.0, follow_redirects=False)
    try:
        keys = _keys(issuer, jwks, data, http)
        if issuer is None:
            # Keys from a file the operator chose (a JWKS file, or the local issuer's key) are
            # the trust anchor; the issuer they sign for is read from the token and then
            # checked like any other claim.
            peek = parse_compact(token.strip(), algorithms=SUPPORTED_ALGORITHMS,
                                 errors=AUTH_JOSE_ERRORS).unverified_claims().get("iss")
            issuer = peek if isinstance(peek, str) else ""
        config = IssuerConfig(issuer=issuer, keys=keys)
        verifier = TokenVerifier([config], TokenOptions(audiences=frozenset({audience})))
        return verifier.verify(token.strip(), now=now).to_dict()
    finally:
        if own:
            http.close()


@token_app.command("verify")
def verify(
    token: Annotated[str, typer.Argument(help="The access token ('-' reads stdin).")],
    issuer: Annotated[str | None, typer.Option(help="Expected issuer; keys by discovery.")] = None,
    jwks: Annotated[Path | None, typer.Option(help="JWKS file with the issuer's keys.")] = None,
    audience: Annotated[str, typer.Option(help="Expected audience.")] = DEFAULT_AUDIENCE,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    at: Annotated[str | None, typer.Option(help="Verification time, ISO 8601 (default now).")] = None,
    data: Annotated[Path, typer.Option(
        help="IdP data folder: its key is used when neither --issuer nor --jwks is given.")
    ] = DEFAULT_DATA_DIR,
) -> None:
    """Verify a token and print its checked claims (keys: --jwks, --issuer's JWKS, or the local
    issuer's key)."""
    from_stdin = token == "-"  # noqa: S105 - the conventional "read stdin" argument
    text = sys.stdin.read(16384) if from_stdin else token
    try:
        claims = run_verify(text, issuer=issuer, jwks=jwks, audience=audience, now=_now(at),
                            data=data)
    except MedclaveError as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        typer.echo(json.dumps(claims, indent=2))
    else:
        for name, value in claims.items():
            typer.echo(f"{name}: {value}")


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_REQUEST_BYTES:
            raise InputError("input.too_large", f"{path.name} exceeds 1 MiB")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError("input.malformed", f"cannot read {path.name}: {exc}") from exc


@app.command("decide")
def decide(
    entities: Annotated[Path, typer.Option(help="Cedar entities JSON file.")],
    request: Annotated[Path, typer.Option(help="Request JSON {principal, action, resource, context}.")],
    policies: Annotated[
        Path | None, typer.Option(help="Folder of .cedar files (default: shipped policies).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate one request against the policies: exit 0 allow, 1 deny, 2 unusable input."""
    try:
        bundle = load_policies(policies)
        authorizer = Authorizer(policies=bundle)
        store = EntityStore.from_file(entities, schema=bundle.schema)
        decision = authorizer.evaluate(_read_json(request), store)
    except MedclaveError as exc:
        raise fail(exc, as_json=as_json) from None
    if as_json:
        typer.echo(json.dumps(decision.to_dict()))
    else:
        typer.echo(f"{decision.decision} ({', '.join(decision.reasons) or 'no policy applies'})")
        for error in decision.errors:
            typer.echo(f"  error: {error}")
    raise typer.Exit(0 if decision.allowed else 1)
