"""Clients of the broker: :class:`KbsClient` (the enclave side of key release) and
:class:`OwnerClient` (the owner API, used by ``medclave kbs resource|policy``).

``KbsClient.fetch`` does the whole release: challenge, evidence over a fresh ephemeral X25519
key placed in ``runtime`` (so report_data binds it), release, then (signing.py) the answer's
signature by a broker key the enclave trusts over resource, version, nonce, ephemeral key, the
digest of the evidence sent and the sealed bytes, and only then HPKE open. The runtime states
the trusted broker keys (``kbs_keys``), so the evidence says which brokers may hand this enclave
keys. The ephemeral private key never leaves this object's stack frame; a new one is drawn for
every fetch. TLS to the broker is supported (``verify``: a pinned CA file) but not relied on.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from medclave import errors
from medclave.crypto import hpke
from medclave.errors import InputError, KbsError, MedclaveError
from medclave.kbs.models import RELEASE_INFO, ReleasePolicy, release_aad
from medclave.kbs.names import ResourceName
from medclave.kbs.signing import (
    TrustedBrokers,
    bundle_digest,
    release_statement,
    standing_statement,
)
from medclave.protocol.evidence import EvidenceBundle

# Builds evidence whose report_data binds (nonce, runtime): sim.make_bundle, or real hardware.
Attester = Callable[[bytes, dict[str, Any]], EvidenceBundle]

log = logging.getLogger("medclave.kbs.client")

MAX_RESPONSE_BYTES = 1 << 20
_NONCE = re.compile(r"^[0-9a-f]{64}$")


def error_from_response(response: httpx.Response) -> MedclaveError:
    """The catalogue error a broker answered with (``kbs.unavailable`` if it made no sense)."""
    try:
        body = response.json()
        code = body["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return KbsError("kbs.unavailable", f"broker answered HTTP {response.status_code}")
    if not isinstance(code, str) or code not in errors.CATALOGUE:
        return KbsError("kbs.unavailable", f"broker answered unknown code {code!r}")
    family = code.split(".", 1)[0]
    for cls in _error_classes():
        if family in cls.family:
            return cls(code)
    return MedclaveError(code)


def _error_classes() -> list[type[MedclaveError]]:
    found: list[type[MedclaveError]] = []
    todo: list[type[MedclaveError]] = [MedclaveError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def _check(response: httpx.Response) -> httpx.Response:
    if len(response.content) > MAX_RESPONSE_BYTES:
        raise KbsError("kbs.unavailable", "broker response too large")
    if response.status_code >= 400:
        raise error_from_response(response)
    return response


def _json_dict(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise KbsError("kbs.unavailable", "broker answered non-JSON") from exc
    if not isinstance(body, dict):
        raise KbsError("kbs.unavailable", "broker answered a non-object")
    return body


class _Http:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        http: httpx.Client | None,
        headers: Mapping[str, str] | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        self._own = http is None
        self._http = http or httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=dict(headers or {}),
            verify=tls_context(verify),
        )

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return _check(self._http.request(method, url, **kwargs))
        except httpx.HTTPError as exc:
            raise KbsError("kbs.unavailable", f"broker unreachable: {type(exc).__name__}") from exc

    def close(self) -> None:
        if self._own:
            self._http.close()


def tls_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext | bool:
    """``verify`` for httpx: a path is a CA file to pin (the broker's own certificate or its
    CA), replacing the system roots."""
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise InputError("config.invalid", "the broker CA file does not load") from exc
    return verify


@dataclass(frozen=True)
class Released:
    """A secret the broker released, and the version it released."""

    version: int
    secret: bytes


class KbsClient(_Http):
    """The enclave side of key release."""

    def __init__(
        self,
        base_url: str,
        attester: Attester,
        *,
        trusted: TrustedBrokers,
        runtime: Mapping[str, Any] | None = None,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        verify: ssl.SSLContext | str | bool = True,
        signer: str | None = None,
    ) -> None:
        super().__init__(base_url, timeout=timeout, http=http, verify=verify)
        self._attester = attester
        self._trusted = trusted
        # Threshold release (kbs/threshold.py): each share must come from its own broker, so an
        # answer signed by another trusted broker is refused, not counted as this one's share.
        if signer is not None and signer not in trusted.fingerprints():
            raise InputError("config.invalid", "the expected broker key is not a trusted one")
        self._signer = signer
        self._runtime = dict(runtime or {})
        fingerprints = trusted.fingerprints()
        stated = self._runtime.setdefault("kbs_keys", fingerprints)
        if stated != fingerprints:
            # The runtime is what the evidence vouches for: it must name exactly the keys used.
            raise InputError("config.invalid", "runtime kbs_keys differ from the trusted keys")

    def fetch(self, resource: str, *, version: int | None = None) -> bytes:
        """The secret ``resource`` (current version unless ``version``), or the refusal."""
        return self.fetch_release(resource, version=version).secret

    def fetch_release(self, resource: str, *, version: int | None = None) -> Released:
        """Like :meth:`fetch`, with the version released (audit entries name it)."""
        name = str(ResourceName.parse(resource))
        body = _json_dict(self._call("POST", "/kbs/v1/challenge"))
        nonce_hex = body.get("nonce")
        if not isinstance(nonce_hex, str) or not _NONCE.fullmatch(nonce_hex):
            raise KbsError("kbs.unavailable", "broker challenge is not a 32-byte hex nonce")
        nonce = bytes.fromhex(nonce_hex)
        private, public = hpke.generate_keypair()
        runtime = {**self._runtime, "ephemeral_key": base64.b64encode(public).decode()}
        bundle = self._attester(nonce, runtime)
        request: dict[str, Any] = {
            "resource": name,
            "nonce": nonce_hex,
            "evidence": bundle.model_dump(mode="json"),
        }
        if version is not None:
            request["version"] = version
        answer = _json_dict(self._call("POST", "/kbs/v1/release", json=request))
        got_version = answer.get("version")
        sealed_b64 = answer.get("sealed")
        key_id, signature = answer.get("key_id"), answer.get("signature")
        if (
            not isinstance(got_version, int)
            or isinstance(got_version, bool)
            or not isinstance(sealed_b64, str)
            or (version is not None and got_version != version)
        ):
            raise KbsError("kbs.unavailable", "broker release answer is malformed")
        try:
            sealed = base64.b64decode(sealed_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KbsError("kbs.unavailable", "sealed is not base64") from exc
        statement = release_statement(resource=name, version=got_version, nonce=nonce,
                                      ephemeral_key=public, evidence=bundle_digest(bundle),
                                      sealed=sealed)
        try:
            self._trusted.verify(key_id, signature, statement)
            if self._signer is not None and key_id != self._signer:
                raise KbsError("kbs.answer_unauthenticated",
                               "the answer is signed by another broker than the one asked")
        except KbsError as exc:
            # The operator's log says why nothing is served (no content: names and codes only).
            log.error("release of %s refused: %s (%s)", name, exc.code, exc.detail)
            raise
        # The AAD names what we asked for: an answer for another resource or nonce won't open.
        secret = hpke.open(private, sealed, RELEASE_INFO, release_aad(name, got_version, nonce))
        return Released(got_version, secret)

    def standing(self, resource: str) -> str:
        """``"good"`` or ``"revoked"``: whether the broker still stands by this enclave for
        ``resource``'s owner (kbs/revocation.py). Fresh evidence over a broker nonce; the answer
        must be signed by a trusted broker over this nonce, resource and evidence, or it is
        refused (``kbs.answer_unauthenticated``): nobody on the path can say "good"."""
        name = str(ResourceName.parse(resource))
        body = _json_dict(self._call("POST", "/kbs/v1/challenge"))
        nonce_hex = body.get("nonce")
        if not isinstance(nonce_hex, str) or not _NONCE.fullmatch(nonce_hex):
            raise KbsError("kbs.unavailable", "broker challenge is not a 32-byte hex nonce")
        nonce = bytes.fromhex(nonce_hex)
        bundle = self._attester(nonce, dict(self._runtime))
        answer = _json_dict(self._call("POST", "/kbs/v1/standing", json={
            "resource": name, "nonce": nonce_hex, "evidence": bundle.model_dump(mode="json")}))
        standing = answer.get("standing")
        if standing not in ("good", "revoked") or answer.get("resource") != name:
            raise KbsError("kbs.unavailable", "broker standing answer is malformed")
        assert isinstance(standing, str)
        statement = standing_statement(resource=name, nonce=nonce, evidence=bundle_digest(bundle),
                                       standing=standing)
        key_id = answer.get("key_id")
        self._trusted.verify(key_id, answer.get("signature"), statement)
        if self._signer is not None and key_id != self._signer:
            raise KbsError("kbs.answer_unauthenticated",
                           "the answer is signed by another broker than the one asked")
        return standing

    def __enter__(self) -> KbsClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class OwnerClient(_Http):
    """The owner API with a bearer token (``mkt1.OWNER.SECRET``)."""

    def __init__(
        self, base_url: str, token: str, *, timeout: float = 10.0, http: httpx.Client | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        super().__init__(
            base_url, timeout=timeout, http=http, headers={"Authorization": f"Bearer {token}"},
            verify=verify,
        )
        if http is not None:
            http.headers["Authorization"] = f"Bearer {token}"

    @staticmethod
    def _path(resource: str) -> str:
        return ResourceName.parse(resource).path

    @staticmethod
    def _secret(secret: bytes | None, expected: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "secret": None if secret is None else base64.b64encode(secret).decode()
        }
        if expected is not None:
            body["expected_version"] = expected
        return body

    def put(self, resource: str, secret: bytes | None = None) -> int:
        r = self._call(
            "PUT", f"/kbs/v1/owner/resources/{self._path(resource)}", json=self._secret(secret)
        )
        return int(_json_dict(r)["version"])

    def rotate(
        self, resource: str, secret: bytes | None = None, *, expected_version: int | None = None
    ) -> int:
        r = self._call(
            "POST",
            f"/kbs/v1/owner/resources/{self._path(resource)}/rotate",
            json=self._secret(secret, expected_version),
        )
        return int(_json_dict(r)["version"])

    def retire(self, resource: str, version: int) -> None:
        self._call("DELETE", f"/kbs/v1/owner/resources/{self._path(resource)}/versions/{version}")

    def delete(self, resource: str) -> None:
        self._call("DELETE", f"/kbs/v1/owner/resources/{self._path(resource)}")

    def list_resources(self) -> list[dict[str, Any]]:
        body = self._call("GET", "/kbs/v1/owner/resources").json()
        return list(body) if isinstance(body, list) else []

    def get(self, resource: str) -> dict[str, Any]:
        return _json_dict(self._call("GET", f"/kbs/v1/owner/resources/{self._path(resource)}"))

    def set_policy(
        self, resource: str, policy: ReleasePolicy, *, expected_version: int | None = None
    ) -> dict[str, Any]:
        params = {} if expected_version is None else {"expected_version": expected_version}
        return _json_dict(
            self._call(
                "PUT",
                f"/kbs/v1/owner/policies/{self._path(resource)}",
                json=policy.model_dump(mode="json"),
                params=params,
            )
        )

    def get_policy(self, resource: str, version: int | None = None) -> dict[str, Any]:
        params = {} if version is None else {"version": version}
        return _json_dict(
            self._call("GET", f"/kbs/v1/owner/policies/{self._path(resource)}", params=params)
        )

    def retire_policy(self, resource: str, version: int) -> None:
        self._call("DELETE", f"/kbs/v1/owner/policies/{self._path(resource)}/versions/{version}")

    def revoke(self, kind: str, value: str, reason: str = "") -> dict[str, Any]:
        return _json_dict(self._call("POST", "/kbs/v1/owner/revocations",
                                     json={"kind": kind, "value": value, "reason": reason}))

    def unrevoke(self, kind: str, value: str) -> None:
        self._call("DELETE", f"/kbs/v1/owner/revocations/{kind}/{value}")

    def revocations(self) -> list[dict[str, Any]]:
        body = self._call("GET", "/kbs/v1/owner/revocations").json()
        return list(body) if isinstance(body, list) else []

    def decisions(self, resource: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if resource is not None:
            params["resource"] = resource
        body = self._call("GET", "/kbs/v1/owner/decisions", params=params).json()
        return list(body) if isinstance(body, list) else []

    def __enter__(self) -> OwnerClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
