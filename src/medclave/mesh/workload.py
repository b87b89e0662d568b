"""Obtaining and renewing a workload's certificate from the mesh CA (hosted by the broker).

Issuance (``POST /kbs/v1/mesh/certificate``, kbs/mesh_ca.py): the workload makes a fresh P-256
key inside, asks the broker for a challenge, has its TEE produce evidence over the broker's
nonce with the runtime ``{"mesh_identity": URI, "tls_key": SHA-256 of the key's SPKI}`` (so the
hardware signature binds the key and the identity, attestation/binding.py), and sends the
evidence with a certificate request for that key. The private key never leaves the workload.

:class:`Renewer` renews at ``fraction`` of the lifetime (default half) with fresh evidence each
time, and installs the new certificate into the workload's :class:`~medclave.mesh.tls.MeshTls`
without dropping connections; a failed renewal is retried every ``retry`` seconds until the
certificate runs out (its peers then refuse it: fail closed).
"""

from __future__ import annotations

import base64
import logging
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medclave.attestation import gather, report_data_for, sim
from medclave.errors import CATALOGUE, InputError, MedclaveError, MeshError
from medclave.mesh.certs import make_csr, new_key, spki_sha256
from medclave.mesh.policy import SegmentationPolicy, WorkloadId
from medclave.mesh.tls import DenyList, MeshTls, Revoked
from medclave.protocol.evidence import EvidenceBundle
from medclave.util.clock import Clock, system_clock

log = logging.getLogger("medclave.mesh")

Attester = Callable[[bytes, dict[str, Any]], EvidenceBundle]
CHALLENGE_PATH: Final = "/kbs/v1/challenge"
CERTIFICATE_PATH: Final = "/kbs/v1/mesh/certificate"
REVOCATIONS_PATH: Final = "/kbs/v1/mesh/revocations"
MAX_ANSWER_BYTES: Final = 256 * 1024


def mesh_runtime(identity: WorkloadId, key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """What the evidence binds for a certificate (the module docstring)."""
    return {"mesh_identity": identity.uri, "tls_key": spki_sha256(key)}


def _answer(response: httpx.Response) -> dict[str, Any]:
    if len(response.content) > MAX_ANSWER_BYTES:
        raise MedclaveError("kbs.unavailable", "the mesh CA's answer is too large")
    try:
        body = response.json()
    except ValueError as exc:
        raise MedclaveError("kbs.unavailable", "the mesh CA answered non-JSON") from exc
    if not isinstance(body, dict):
        raise MedclaveError("kbs.unavailable", "the mesh CA answered a non-object")
    if response.status_code >= 400:
        error = body.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        raise MedclaveError(code if isinstance(code, str) and code in CATALOGUE else "internal",
                            f"the mesh CA refused: {code}")
    return body


def _post(http: httpx.Client, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        return _answer(http.post(path, **kwargs))
    except httpx.HTTPError as exc:
        raise MedclaveError("kbs.unavailable", f"mesh CA unreachable: {exc!r}") from exc


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    chain_pem: bytes
    not_after: datetime


def request_certificate(http: httpx.Client, identity: WorkloadId, attester: Attester
                        ) -> Issued:
    """A fresh key and its certificate from the CA ``http`` points at (base URL)."""
    key = new_key()
    challenge = _post(http, CHALLENGE_PATH)
    nonce_hex = challenge.get("nonce")
    if not isinstance(nonce_hex, str) or len(nonce_hex) != 64:
        raise MedclaveError("kbs.unavailable", "the mesh CA's challenge is malformed")
    bundle = attester(bytes.fromhex(nonce_hex), mesh_runtime(identity, key.public_key()))
    answer = _post(http, CERTIFICATE_PATH, json={
        "nonce": nonce_hex, "evidence": bundle.model_dump(mode="json"),
        "csr": make_csr(key, identity).decode()})
    chain = answer.get("certificate")
    if not isinstance(chain, str):
        raise MedclaveError("kbs.unavailable", "the mesh CA's answer has no certificate")
    try:
        cert = x509.load_pem_x509_certificate(chain.encode())
    except ValueError as exc:
        raise MedclaveError("kbs.unavailable", "the mesh CA's certificate is unreadable") from exc
    if cert.public_key() != key.public_key():
        raise MedclaveError("kbs.unavailable", "the mesh CA certified another key")
    return Issued(key, chain.encode(), cert.not_valid_after_utc)


def revocations_fetcher(http: httpx.Client, tenant: str) -> Callable[[], Revoked]:
    """The deny list's source: the tenant's revocation list as the broker (the CA) has it.
    ``http`` must present the workload's certificate: make it after the first one is
    installed (a pooled connection opened before then has no identity)."""
    def fetch() -> Revoked:
        try:
            response = http.get(f"{REVOCATIONS_PATH}/{tenant}")
        except httpx.HTTPError as exc:
            raise MeshError("mesh.denylist_stale", f"mesh CA unreachable: {exc!r}") from exc
        body = _answer(response)
        found: dict[str, set[str]] = {}
        entries = body.get("revoked")
        if not isinstance(entries, list):
            raise MeshError("mesh.denylist_stale", "the deny list is malformed")
        for entry in entries:
            if not (isinstance(entry, dict) and isinstance(entry.get("kind"), str)
                    and isinstance(entry.get("value"), str)):
                raise MeshError("mesh.denylist_stale", "the deny list is malformed")
            found.setdefault(entry["kind"], set()).add(entry["value"])
        return {k: frozenset(v) for k, v in found.items()}
    return fetch


class Renewer:
    """Keeps ``tls`` holding a valid certificate from ``obtain`` (the module docstring)."""

    def __init__(self, tls: MeshTls, obtain: Callable[[], Issued], *, fraction: float = 0.5,
                 retry: float = 5.0, clock: Clock = system_clock) -> None:
        if not 0 < fraction < 1:
            raise ValueError("renew at a fraction of the lifetime between 0 and 1")
        self._tls, self._obtain, self._fraction, self._retry = tls, obtain, fraction, retry
        self._clock = clock
        self._renew_at: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renew_once(self) -> Issued:
        issued_at = self._clock()
        issued = self._obtain()
        self._tls.install(issued.key, issued.chain_pem, issued.not_after)
        self._renew_at = issued_at + (issued.not_after - issued_at) * self._fraction
        return issued

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="medclave-mesh-renew",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            wait = self._retry if self._renew_at is None else max(
                0.0, (self._renew_at - self._clock()).total_seconds())
            if self._stop.wait(wait):
                return
            try:
                self.renew_once()
            except MedclaveError as exc:
                self._renew_at = None  # retry soon; peers refuse the old one once it expires
                log.warning("mesh certificate renewal failed: %s", exc.code)
            except Exception as exc:  # the thread must not die silently
                self._renew_at = None
                log.error("mesh certificate renewal failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class WorkloadConfig(BaseModel):
    """A workload's ``mesh_file`` (TOML; paths relative to it)::

        identity = "medclave://stmary/enclave/llama-1"
        policy = "segmentation.toml"      # the deployment's segmentation policy
        ca_file = "mesh-ca.pem"           # the mesh CA's certificate (the broker's DATA dir)
        ca_url = "https://kbs.stmary.example:8450"   # the broker hosting the mesh CA
        database_ca_file = "db-ca.pem"    # what signed the database's server certificate
                                          # (default: ca_file, the mesh CA)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    identity: str
    policy: Path
    ca_file: Path
    ca_url: str = Field(pattern=r"^https://")
    database_ca_file: Path | None = None
    # Where a workload that is not an enclave (the proxy) takes its evidence from: the TEE it
    # runs in ("auto": SEV-SNP or TDX, CPU evidence only) or the software "sim" (development;
    # its authority in sim_dir, its measurement sim_measurement). The enclave uses its own.
    platform: Literal["auto", "sim"] = "auto"
    sim_dir: Path | None = None
    sim_measurement: str | None = Field(default=None, pattern=r"^[0-9a-f]{96}$")
    renew_fraction: float = Field(default=0.5, gt=0, lt=1)
    denylist_seconds: float = Field(default=30.0, gt=0, le=3600)
    denylist_max_age_seconds: float = Field(default=300.0, gt=0, le=86400)

    @classmethod
    def load(cls, path: Path) -> WorkloadConfig:
        try:
            doc = cls.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise InputError("config.invalid", f"mesh file {path.name}: {exc}") from exc
        return doc.model_copy(update={
            "policy": path.parent / doc.policy, "ca_file": path.parent / doc.ca_file,
            "sim_dir": None if doc.sim_dir is None else path.parent / doc.sim_dir,
            "database_ca_file": path.parent / (doc.database_ca_file or doc.ca_file)})

    def attester(self) -> Attester:
        """Evidence for a workload that is not an enclave (the ``platform`` field)."""
        if self.platform == "sim":
            if self.sim_dir is None:
                raise InputError("config.invalid", "platform sim needs sim_dir")
            log.warning("SIM PLATFORM: this workload's mesh evidence is simulated, NOT SECURE")
            authority = sim.SimAuthority.load_or_create(self.sim_dir)
            measurement = bytes.fromhex(self.sim_measurement) if self.sim_measurement else None

            def simulated(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
                return sim.make_bundle(authority, nonce=nonce, runtime=runtime,
                                       measurement=measurement)
            return simulated
        if gather.detect() == "none":
            raise InputError("config.invalid", "no TEE on this machine for mesh evidence; "
                                               "platform = \"sim\" for development")

        def hardware(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
            got = gather.gather(report_data_for(nonce, runtime))
            evidence = got.evidence + got.auxblob if got.platform == "sev-snp" else got.evidence
            return EvidenceBundle(platform=got.platform, nonce=nonce.hex(), runtime=runtime,
                                  evidence=base64.b64encode(evidence).decode())
        return hardware


class WorkloadMesh:
    """A workload's whole mesh life: its first certificate at start (none: the start fails,
    closed), renewal before expiry, the deny list kept current; :attr:`tls` for its server and
    its clients."""

    def __init__(self, config: WorkloadConfig, attester: Attester, *,
                 clock: Clock = system_clock) -> None:
        identity = WorkloadId.parse(config.identity)
        self.config = config
        try:
            ca_pem = config.ca_file.read_bytes()
        except OSError as exc:
            raise InputError("config.invalid", f"mesh CA file unreadable: {exc}") from exc
        self.tls = MeshTls(identity, ca_pem=ca_pem, policy=SegmentationPolicy.load(config.policy),
                           clock=clock)
        self._to_ca = httpx.Client(base_url=config.ca_url, timeout=10.0,
                                   verify=self.tls.client_context(to_ca=True))
        self.renewer = Renewer(self.tls, lambda: request_certificate(self._to_ca, identity,
                                                                     attester),
                               fraction=config.renew_fraction, clock=clock)
        self._deny_http: httpx.Client | None = None
        try:
            self.renewer.renew_once()
            # made after the first certificate, so that it presents it
            self._deny_http = httpx.Client(base_url=config.ca_url, timeout=10.0,
                                           verify=self.tls.client_context(to_ca=True))
            self.tls.deny = DenyList(revocations_fetcher(self._deny_http, identity.tenant),
                                     interval=config.denylist_seconds,
                                     max_age=config.denylist_max_age_seconds)
            self.tls.deny.refresh()
        except BaseException:
            self.close()
            raise
        self.renewer.start()
        self.tls.deny.start()

    def close(self) -> None:
        self.renewer.stop()
        if self.tls.deny is not None:
            self.tls.deny.stop()
        self._to_ca.close()
        if self._deny_http is not None:
            self._deny_http.close()
