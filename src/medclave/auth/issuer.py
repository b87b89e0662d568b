"""A small token issuer: the embedded default's IdP and the one tests run against.

Real deployments point Medclave at their own IdP. This one keeps everything in a data folder:

- ``signing-key.pem``: the issuer's Ed25519 (default) or P-256 key, PKCS#8, mode 0600. A key
  file readable by group or others is refused rather than used.
- ``clients.json``: OAuth clients for the client-credentials grant (RFC 6749 §4.4). A client
  registered with ``act_for_users`` (the hospital's proxy) may also use token exchange
  (RFC 8693, :mod:`medclave.auth.exchange`) to get tokens for the users of its tenant.
- ``users.json``: the user directory: each user's tenant and roles, the most a token for them
  may carry; and a password for the development password grant (RFC 6749 §4.3), which the
  server enables only when asked to. A user without a password exists for token exchange only.

Secrets are stored as scrypt hashes (RFC 7914), compared in constant time, and an unknown name
costs the same hashing work as a known one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medclave.auth import exchange
from medclave.auth.dpop import verify_dpop_proof
from medclave.auth.jwks import StaticJwks
from medclave.auth.replay import FailureLog, MemoryFailureLog, MemoryReplayCache, ReplayCache
from medclave.auth.tokens import (
    MAX_LIFETIME,
    IssuerConfig,
    TokenOptions,
    TokenVerifier,
    is_valid_name,
)
from medclave.crypto.jose import (
    algorithm_for,
    b64url_decode,
    b64url_encode,
    jwk_thumbprint,
    public_jwk_members,
    sign_compact,
)
from medclave.errors import AuthError, CryptoError, InputError
from medclave.util.files import check_secret_file, write_secret_file

DEFAULT_DATA_DIR: Final = Path(".medclave/idp")
KEY_FILE: Final = "signing-key.pem"
CLIENTS_FILE: Final = "clients.json"
USERS_FILE: Final = "users.json"
DEFAULT_AUDIENCE: Final = "medclave"
SigningAlg = Literal["EdDSA", "ES256"]

_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1}


def _data_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@dataclass(frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    kid: str

    @property
    def algorithm(self) -> str:
        return algorithm_for(self.private_key)

    def public_jwk(self) -> dict[str, str]:
        return {
            **public_jwk_members(self.private_key.public_key()),
            "kid": self.kid,
            "alg": self.algorithm,
            "use": "sig",
        }


def _generate(alg: SigningAlg) -> Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    if alg == "EdDSA":
        return Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def load_or_create_signing_key(data_dir: Path, *, alg: SigningAlg = "EdDSA") -> SigningKey:
    """The issuer key in ``data_dir``, created (0600) on first use."""
    path = _data_dir(data_dir) / KEY_FILE
    if not path.exists():
        key = _generate(alg)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_secret_file(path, pem)
    check_secret_file(path, "issuer")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise InputError("config.invalid", f"cannot read {path.name}: {exc}") from exc
    wrong_curve = isinstance(loaded, ec.EllipticCurvePrivateKey) and not isinstance(
        loaded.curve, ec.SECP256R1
    )
    if not isinstance(loaded, Ed25519PrivateKey | ec.EllipticCurvePrivateKey) or wrong_curve:
        raise InputError("config.invalid", "the issuer key must be Ed25519 or P-256")
    return SigningKey(private_key=loaded, kid=jwk_thumbprint(loaded.public_key()))


class TokenIssuer:
    """Signs short-lived access tokens (RFC 9068 profile) with one key."""

    def __init__(
        self,
        issuer: str,
        key: SigningKey,
        *,
        audience: str = DEFAULT_AUDIENCE,
        default_ttl: timedelta = timedelta(minutes=5),
    ) -> None:
        if not issuer:
            raise InputError("config.invalid", "the issuer needs an identifier (its URL)")
        self.issuer = issuer
        self.key = key
        self.audience = audience
        self.default_ttl = min(default_ttl, MAX_LIFETIME)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.public_jwk()]}

    def issue(
        self,
        *,
        sub: str,
        tenant: str,
        roles: Sequence[str],
        now: datetime,
        ttl: timedelta | None = None,
        audience: str | None = None,
        jkt: str | None = None,
        client_id: str | None = None,
        actor: str | None = None,
    ) -> str:
        """A signed token; ``jkt`` binds it to a DPoP key (RFC 9449 §6.1); ``actor`` names the
        client acting for ``sub`` (RFC 8693 §4.1 ``act``)."""
        span = ttl if ttl is not None else self.default_ttl
        if not timedelta(0) < span <= MAX_LIFETIME:
            raise InputError("input.malformed", "a token lives between 1 second and 15 minutes")
        if not is_valid_name(tenant) or not all(is_valid_name(r) for r in roles):
            raise InputError("input.malformed", "tenant and role names must be plain identifiers")
        if not sub or len(sub) > 256 or not sub.isprintable():
            raise InputError("input.malformed", "the subject must be a short printable string")
        iat = int(now.timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": audience or self.audience,
            "iat": iat,
            "nbf": iat,
            "exp": iat + int(span.total_seconds()),
            "jti": str(uuid.UUID(bytes=secrets.token_bytes(16), version=4)),
            "tenant": tenant,
            "roles": list(dict.fromkeys(roles)),
        }
        if client_id is not None:
            claims["client_id"] = client_id
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        if actor is not None:
            claims["act"] = {"sub": actor}
        header = {"typ": "at+jwt", "kid": self.key.kid}
        return sign_compact(header, claims, self.key.private_key)


# --- clients and users ---------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${b64url_encode(salt)}${b64url_encode(digest)}"


_DUMMY_HASH: Final = "scrypt$" + "A" * 22 + "$" + "A" * 43


def check_secret(secret: str, stored: str) -> bool:
    try:
        scheme, salt_b64, digest_b64 = stored.split("$")
        salt, expected = b64url_decode(salt_b64), b64url_decode(digest_b64)
    except (ValueError, CryptoError):
        return False
    if scheme != "scrypt":
        return False
    actual = hashlib.scrypt(secret.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True, kw_only=True)
class Account:
    """A client or a user of the dev IdP, after its secret checked out."""

    name: str
    tenant: str
    roles: tuple[str, ...]
    act_for_users: bool = False  # a client that may exchange tokens for its tenant's users


class Directory:
    """``clients.json`` and ``users.json`` in the data folder (mode 0600)."""

    def __init__(self, data_dir: Path) -> None:
        self._dir = _data_dir(data_dir)
        self._lock = threading.Lock()

    def _load(self, name: str) -> dict[str, Any]:
        path = self._dir / name
        if not path.exists():
            return {}
        check_secret_file(path, "issuer")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError("config.invalid", f"cannot read {name}: {exc}") from exc
        if not isinstance(doc, dict):
            raise InputError("config.invalid", f"{name} is not a JSON object")
        return doc

    def _add(self, name: str, key: str, secret: str | None, tenant: str, roles: Iterable[str],
             **extra: bool) -> None:
        roles = tuple(roles)
        if not is_valid_name(key) or not is_valid_name(tenant):
            raise InputError("input.malformed", "names must be plain identifiers")
        if not all(is_valid_name(r) for r in roles):
            raise InputError("input.malformed", "role names must be plain identifiers")
        if secret is not None and len(secret) < 12:
            raise InputError("input.malformed", "secrets need at least 12 characters")
        record: dict[str, Any] = {"tenant": tenant, "roles": list(roles), **extra}
        if secret is not None:
            record["secret"] = hash_secret(secret)
        with self._lock:
            doc = self._load(name)
            doc[key] = record
            write_secret_file(self._dir / name, json.dumps(doc, indent=2).encode("utf-8"))

    def add_client(self, client_id: str, secret: str, *, tenant: str, roles: Iterable[str],
                   act_for_users: bool = False) -> None:
        """``act_for_users``: the client may exchange tokens for its tenant's users (RFC 8693)."""
        self._add(CLIENTS_FILE, client_id, secret, tenant, roles, act_for_users=act_for_users)

    def add_user(self, username: str, password: str | None, *, tenant: str,
                 roles: Iterable[str]) -> None:
        """``password`` None: a directory entry only (token exchange), no password grant."""
        self._add(USERS_FILE, username, password, tenant, roles)

    @staticmethod
    def _account(key: str, record: Mapping[str, Any]) -> Account:
        return Account(name=key, tenant=str(record["tenant"]),
                       roles=tuple(str(r) for r in record["roles"]),
                       act_for_users=record.get("act_for_users") is True)

    def _check(self, name: str, key: str, secret: str) -> Account:
        record = self._load(name).get(key)
        stored = record.get("secret") if isinstance(record, Mapping) else None
        # A record without a secret (a user for token exchange only) costs the same work.
        ok = check_secret(secret, stored if isinstance(stored, str) else _DUMMY_HASH)
        if not ok or not isinstance(record, Mapping) or not isinstance(stored, str):
            raise AuthError("auth.invalid_credentials", f"bad credentials for {key[:64]!r}")
        return self._account(key, record)

    def user(self, username: str) -> Account | None:
        """A user's directory entry (tenant, roles), without a secret check: for token exchange
        by a client allowed to act for users."""
        record = self._load(USERS_FILE).get(username)
        return self._account(username, record) if isinstance(record, Mapping) else None

    def authenticate_client(self, client_id: str, secret: str) -> Account:
        return self._check(CLIENTS_FILE, client_id, secret)

    def authenticate_user(self, username: str, password: str) -> Account:
        return self._check(USERS_FILE, username, password)


# --- the token endpoint, framework-free (the HTTP wrapper is in idp_server) -------------------


class TokenService:
    """RFC 6749 token endpoint logic: client credentials, token exchange (RFC 8693) for clients
    that may act for users, and the dev password grant.

    Repeated failures for one name are throttled (``auth.rate_limited``): five per minute.
    A DPoP proof (RFC 9449 §5) sent with the request binds the token to the proof's key.
    """

    MAX_FAILURES: Final = 5
    WINDOW: Final = timedelta(minutes=1)

    def __init__(
        self,
        issuer: TokenIssuer,
        directory: Directory,
        *,
        audiences: Iterable[str] = (DEFAULT_AUDIENCE,),
        dev_password: bool = False,
        replay: ReplayCache | None = None,
        failures: FailureLog | None = None,
    ) -> None:
        self.issuer = issuer
        self.directory = directory
        self.audiences = frozenset(audiences)
        self.dev_password = dev_password
        # Failed logins per name: shared by replicas when given (open_failure_log), so N
        # replicas do not grant N times the guesses.
        self._failures = failures if failures is not None else MemoryFailureLog()
        self._lock = threading.Lock()
        # DPoP proofs at the token endpoint: shared by replicas when given (open_replay_cache).
        self._replay = replay if replay is not None else MemoryReplayCache(max_entries=100_000)
        self.issued: Counter[str] = Counter()  # tokens issued, by grant type (monitoring)
        # Subject tokens of an exchange must be this issuer's own, for one of its audiences.
        own = IssuerConfig(issuer=issuer.issuer, keys=StaticJwks.from_document(issuer.jwks()))
        self._own_tokens = TokenVerifier([own], TokenOptions(audiences=self.audiences))

    @property
    def token_endpoint(self) -> str:
        return self.issuer.issuer.rstrip("/") + "/token"

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 / OpenID Connect Discovery metadata."""
        base = self.issuer.issuer.rstrip("/")
        grants = ["client_credentials", exchange.GRANT_TYPE] + (
            ["password"] if self.dev_password else [])
        return {
            "issuer": self.issuer.issuer,
            "jwks_uri": f"{base}/jwks.json",
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": grants,
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "dpop_signing_alg_values_supported": ["ES256", "EdDSA", "RS256"],
        }

    def _throttle(self, key: str, now: datetime) -> None:
        if self._failures.recent(key, now=now, window=self.WINDOW) >= self.MAX_FAILURES:
            raise AuthError("auth.rate_limited", f"too many failed attempts for {key[:64]!r}")

    def _failed(self, key: str, now: datetime) -> None:
        self._failures.add(key, now=now, window=self.WINDOW)

    def _checked(self, kind: str, name: str, secret: str, now: datetime) -> Account:
        key = f"{kind}:{name}"
        self._throttle(key, now)
        try:
            if kind == "client":
                return self.directory.authenticate_client(name, secret)
            return self.directory.authenticate_user(name, secret)
        except AuthError:
            self._failed(key, now)
            raise

    def token(
        self,
        form: Mapping[str, str],
        *,
        basic: tuple[str, str] | None,
        dpop: str | None,
        now: datetime,
    ) -> dict[str, Any]:
        """Answer one token request, or raise (``auth.*`` / ``input.*``)."""
        grant = form.get("grant_type")
        audience = form.get("audience") or form.get("resource") or self.issuer.audience
        if audience not in self.audiences:
            raise InputError("input.malformed", f"audience {audience[:64]!r} is not offered")
        subject: exchange.Exchanged | None = None
        if grant in ("client_credentials", exchange.GRANT_TYPE):
            form_id, form_secret = form.get("client_id"), form.get("client_secret")
            if basic is not None and (form_id is not None or form_secret is not None):
                raise InputError("input.malformed", "use one client authentication method")
            client_id, secret = basic if basic is not None else (form_id, form_secret)
            if not client_id or secret is None:
                raise AuthError("auth.invalid_credentials", "client authentication is required")
            account = self._checked("client", client_id, secret, now)
            if grant == exchange.GRANT_TYPE:
                subject = exchange.exchange(form, client=account, verifier=self._own_tokens,
                                            user=self.directory.user, now=now)
        elif grant == "password" and self.dev_password:
            username, password = form.get("username"), form.get("password")
            if not username or password is None:
                raise InputError("input.malformed", "username and password are required")
            account = self._checked("user", username, password, now)
        else:
            raise InputError("input.unrecognized", f"grant type {str(grant)[:40]!r} is not offered")
        jkt = None
        if dpop is not None:
            proof = verify_dpop_proof(
                dpop,
                method="POST",
                url=self.token_endpoint,
                now=now,
                access_token=None,
                expected_jkt=None,
                replay=self._replay,
            )
            jkt = proof.jkt
        ttl = self.issuer.default_ttl
        if subject is not None and subject.not_after is not None:
            # Never longer than the user's own token it was exchanged for (whole seconds).
            ttl = min(ttl, timedelta(seconds=int((subject.not_after - now).total_seconds())))
        token = self.issuer.issue(
            sub=subject.subject if subject else account.name,
            tenant=subject.tenant if subject else account.tenant,
            roles=subject.roles if subject else account.roles,
            now=now,
            ttl=ttl,
            audience=audience,
            jkt=jkt,
            client_id=account.name if grant != "password" else None,
            actor=subject.actor if subject else None,
        )
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "DPoP" if jkt else "Bearer",
            "expires_in": int(ttl.total_seconds()),
        }
        with self._lock:
            self.issued[str(grant)] += 1
        if subject is not None:
            answer["issued_token_type"] = exchange.ACCESS_TOKEN_TYPE  # RFC 8693 §2.2.1
        return answer
