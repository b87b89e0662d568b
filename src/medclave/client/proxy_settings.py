"""The proxy's settings (``MEDCLAVE_PROXY_*``), and the parts of the proxy built from them.

One pydantic model holds every setting of :mod:`medclave.client.proxy`; the functions below turn
it into the services the app is given (the enclave session or replica set, the trust watch,
admission, the caller mapping, the workload mesh), so that the app and the CLI build them the
same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medclave.attestation import load_policy
from medclave.attestation.collateral import load_collateral
from medclave.auth.replay import ReplayCache, open_replay_cache
from medclave.client.admission import AdmissionConfig, ProxyAdmission, build_admission
from medclave.client.apikeys import open_api_keys
from medclave.client.callers import Callers
from medclave.client.continuous import TrustWatch
from medclave.client.credentials import Credentials, IdpClientConfig
from medclave.client.replicas import Enclaves, ReplicaSet, replica_names
from medclave.client.session import EnclaveSession
from medclave.errors import InputError
from medclave.mesh.tls import MeshTls
from medclave.mesh.workload import WorkloadConfig, WorkloadMesh
from medclave.ops.settings import OpsSettings
from medclave.postgres.pool import store_setting
from medclave.protocol import inference as proto
from medclave.serving import ServingSettings
from medclave.util.clock import system_clock

DEFAULT_DATA_DIR = Path(".medclave/proxy")


class ProxySettings(BaseSettings, ServingSettings, OpsSettings):
    """Network settings (trusted proxies, read deadlines) are :class:`ServingSettings`';
    metrics, logs, drain and tracing :class:`~medclave.ops.settings.OpsSettings`'."""

    model_config = SettingsConfigDict(env_prefix="MEDCLAVE_PROXY_", extra="forbid", frozen=True)

    upstream: str
    policy_file: Path
    # Enclave replicas behind a load balancer at ``upstream`` (docs/scaling-out.md): each is
    # attested on its own and requests are routed across the verified ones; empty: one enclave.
    replicas: tuple[str, ...] = Field(default=(), max_length=64)
    replica_down_seconds: float = Field(default=5.0, gt=0, le=3600)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    sim_roots: tuple[str, ...] = ()
    reattest_seconds: int = Field(default=300, ge=1)
    # Continuous trust (client/continuous.py): the relying party's collateral (TCB baseline,
    # revoked measurements); it and policy_file are re-read every trust_poll_seconds and a
    # change re-attests at once. A failed re-attestation is retried every
    # reattest_retry_seconds; until one passes, requests are refused.
    collateral_file: Path | None = None
    trust_poll_seconds: float = Field(default=2.0, gt=0, le=3600)
    reattest_retry_seconds: int = Field(default=30, ge=1)
    timeout_seconds: float = Field(default=300.0, gt=0)
    max_in_flight: int = Field(default=256, ge=1, le=100_000)
    data_dir: Path = DEFAULT_DATA_DIR  # API keys (apikeys.db, unless store is PostgreSQL)
    # A postgresql:// URL shared by the proxy's replicas: API keys live there, and an app's
    # DPoP proof is accepted once across all of them (docs/scaling-out.md). None: API keys in
    # data_dir, replay caches in this process's memory.
    store: str | None = None
    store_allow_remote: bool = False
    # Attested micro-segmentation (docs/continuous-trust.md): the proxy's mesh file (identity,
    # segmentation policy, mesh CA, where its evidence comes from). Set, the proxy reaches the
    # enclave over mutual TLS only (upstream is then https://); unset, nothing changes.
    mesh_file: Path | None = None
    # --- credentials at the hospital's IdP (off unless idp_token_url is set) -----------------
    idp_token_url: str | None = None
    idp_client_id: str | None = None
    idp_client_secret: SecretStr | None = None
    idp_audience: str = "medclave"
    idp_dpop: bool = True
    identity_header: str | None = None  # e.g. X-Forwarded-User, from trusted_proxies only
    identity_roles: tuple[str, ...] = ()  # roles asked for header users (none: the directory's)
    # --- admission (off unless auth_issuer is set) --------------------------------------
    auth_issuer: str | None = None
    auth_jwks_file: Path | None = None
    auth_jwks_url: str | None = None
    auth_audience: str = "medclave"
    auth_tenant: str | None = None  # the hospital this proxy serves (None: the token's own)
    auth_roles: tuple[str, ...] = ("clinician",)  # roles that may call the model
    auth_policies_dir: Path | None = None  # Cedar policies (default: the bundled ones)
    # The triage page's development sign-in: the IdP token endpoint its password grant goes to.
    triage_signin_url: str | None = None

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        return None if value is None else store_setting(value, names=())

    def replay_cache(self, scope: str) -> ReplayCache:
        """The DPoP replay cache of one checker in this proxy (``store``)."""
        return open_replay_cache(self.store, scope=scope, max_entries=100_000,
                                 allow_remote=self.store_allow_remote)

    @field_validator("replicas")
    @classmethod
    def _replica_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return replica_names(value)

    def admission(self) -> AdmissionConfig | None:
        """The admission configuration, or None when admission is off; ``config.invalid`` for
        half a configuration (a JWKS without an issuer, or the reverse)."""
        if self.auth_issuer is None:
            if self.auth_jwks_file is not None or self.auth_jwks_url is not None:
                raise InputError("config.invalid", "a JWKS was given without auth_issuer")
            return None
        return AdmissionConfig(issuer=self.auth_issuer, jwks_file=self.auth_jwks_file,
                               jwks_url=self.auth_jwks_url, audience=self.auth_audience,
                               tenant=self.auth_tenant, roles=self.auth_roles,
                               policies_dir=self.auth_policies_dir)

    def idp_client(self) -> IdpClientConfig | None:
        """The IdP client, or None when the proxy manages no credentials; ``config.invalid``
        for half a configuration."""
        parts = (self.idp_token_url, self.idp_client_id, self.idp_client_secret)
        if all(p is None for p in parts):
            if self.identity_header is not None:
                raise InputError("config.invalid", "identity_header needs the IdP client")
            return None
        if any(p is None for p in parts):
            raise InputError("config.invalid", "the IdP client needs idp_token_url, "
                             "idp_client_id and idp_client_secret")
        assert self.idp_token_url and self.idp_client_id and self.idp_client_secret
        return IdpClientConfig(token_url=self.idp_token_url, client_id=self.idp_client_id,
                               client_secret=self.idp_client_secret.get_secret_value(),
                               audience=self.idp_audience, dpop=self.idp_dpop)

    def serving(self) -> ServingSettings:
        """What uvicorn is given: forwarded headers are handled inside the app (so that the TCP
        peer stays known for the identity header), never by uvicorn as well."""
        return ServingSettings(header_timeout_seconds=self.header_timeout_seconds,
                               body_timeout_seconds=self.body_timeout_seconds,
                               keep_alive_seconds=self.keep_alive_seconds)


@lru_cache(maxsize=1)
def get_settings() -> ProxySettings:
    return ProxySettings()  # type: ignore[call-arg]  # from the environment


def mesh_for(settings: ProxySettings) -> WorkloadMesh | None:
    """The proxy's workload certificate (attested micro-segmentation), when configured."""
    if settings.mesh_file is None:
        return None
    if not settings.upstream.startswith("https://"):
        # the mesh's client context is used only for https: plain http would bypass it
        raise InputError("config.invalid", "in a mesh, the upstream enclave is https://")
    config = WorkloadConfig.load(settings.mesh_file)
    return WorkloadMesh(config, config.attester())


def session_for(settings: ProxySettings, mesh: WorkloadMesh | None = None) -> Enclaves:
    """One session to the enclave at ``upstream``, or with ``replicas`` a :class:`ReplicaSet`
    that attests and routes to each replica behind the balancer there."""
    collateral = (load_collateral(settings.collateral_file) if settings.collateral_file
                  else None)
    if settings.replicas:
        return ReplicaSet(settings.upstream, settings.replicas, load_policy(settings.policy_file),
                          sim_roots=frozenset(settings.sim_roots),
                          reattest_after=timedelta(seconds=settings.reattest_seconds),
                          retry_failed_after=timedelta(seconds=settings.reattest_retry_seconds),
                          down_after_failure=timedelta(seconds=settings.replica_down_seconds),
                          timeout=settings.timeout_seconds, collateral=collateral,
                          tls_for=None if mesh is None else replica_tls(mesh.tls))
    return EnclaveSession(settings.upstream, load_policy(settings.policy_file),
                          sim_roots=frozenset(settings.sim_roots),
                          reattest_after=timedelta(seconds=settings.reattest_seconds),
                          retry_failed_after=timedelta(seconds=settings.reattest_retry_seconds),
                          timeout=settings.timeout_seconds, collateral=collateral,
                          tls=None if mesh is None else mesh.tls.client_context("enclave"))


def replica_tls(tls: MeshTls) -> Callable[[str], ssl.SSLContext]:
    """Each replica's mutual TLS in a mesh: the server name a TLS-passthrough balancer routes
    on (``ops/balancer.py``), and the one identity it may present,
    ``medclave://TENANT/enclave/NAME`` (docs/scaling-out.md)."""
    return lambda name: tls.client_context("enclave", server_name=proto.replica_server_name(name),
                                           expect_name=name)


def watch_for(settings: ProxySettings, session: Enclaves) -> TrustWatch:
    return TrustWatch(session, policy_file=settings.policy_file,
                      collateral_file=settings.collateral_file, poll=settings.trust_poll_seconds)


def admission_for(settings: ProxySettings) -> ProxyAdmission | None:
    config = settings.admission()
    return None if config is None else build_admission(
        config, clock=system_clock, replay=settings.replay_cache("proxy-admission"))


def callers_for(settings: ProxySettings) -> Callers:
    """The caller mapping from the settings (an IdP client, API keys, the identity header)."""
    client = settings.idp_client()
    credentials = None if client is None else Credentials(client)
    keys = None if credentials is None else open_api_keys(
        settings.data_dir, settings.store, allow_remote=settings.store_allow_remote)
    return Callers(credentials=credentials, keys=keys, identity_header=settings.identity_header,
                   trusted_proxies=settings.trusted_proxies,
                   header_roles=settings.identity_roles,
                   replay=settings.replay_cache("proxy-apps"))
