"""The boot sequence: evidence, keys made inside, the model key from the broker, the model
unsealed into memory and loaded, the doors (authorization, audit) in place.

Order matters: the OHTTP and audit keys exist before the model is fetched, so the runtime
the broker appraises already names them (the audit key, when the broker releases it, is fetched
first under the runtime without it); the model is decrypted only into an anonymous
memory file (``memfd``), never to disk.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from medclave.attestation import evidence_digest
from medclave.audit import AuditLog, MemoryLogStore, NoteSigner
from medclave.audit.pgstore import PostgresLogStore
from medclave.audit.store import LogStore, SqliteLogStore, log_name
from medclave.auth.authn import Authenticator
from medclave.auth.authorizer import Authorizer
from medclave.auth.jwks import HttpJwks, JwksProvider, StaticJwks
from medclave.auth.replay import open_replay_cache
from medclave.auth.tokens import IssuerConfig, TokenOptions
from medclave.enclave.attester import Attester, HostPlatform, select_platform
from medclave.enclave.commitkeys import (
    BrokerCommitKeys,
    CommitKeys,
    FileCommitKeys,
    NoCommitKeys,
    broker_fetcher,
)
from medclave.enclave.engines.base import Engine
from medclave.enclave.hooks import (
    AuditLogSink,
    AuthorizationHook,
    DecisionTrail,
    EnclaveFacts,
    InsecureNoAuthorization,
    TokenAuthorization,
)
from medclave.enclave.inner_apps import AppContext, AppFactory, InnerApp
from medclave.enclave.keys import KeyRing
from medclave.enclave.model import (
    DEFAULT_MODEL_SHA256,
    default_model_path,
    model_digest,
    verify_model_file,
)
from medclave.enclave.records_boot import build_records, data_keys
from medclave.enclave.response_store import ResponseStore
from medclave.enclave.retrieval import RetrievalApi
from medclave.enclave.routes import Route
from medclave.enclave.sealing.conversations import SealedConversations
from medclave.enclave.sealing.pgstore import PostgresSealedStore
from medclave.enclave.sealing.roots import (
    BrokerSealingRoots,
    FileSealingRoots,
    NoSealingRoots,
    SealingRoots,
)
from medclave.enclave.sealing.roots import broker_fetcher as sealing_fetcher
from medclave.enclave.sealing.store import MemorySealedStore, SealedStore, SqliteSealedStore
from medclave.enclave.service import SERVICE, EnclaveIdentity, InferenceService
from medclave.enclave.settings import EnclaveSettings
from medclave.enclave.speech import Transcriber
from medclave.enclave.standing import StandingCheck, StandingMonitor
from medclave.errors import InputError, KbsError
from medclave.kbs.client import KbsClient
from medclave.kbs.sealed_models import ShareRef
from medclave.kbs.signing import TrustedBrokers
from medclave.mesh.database import DatabaseTls
from medclave.mesh.workload import WorkloadConfig, WorkloadMesh
from medclave.postgres import is_postgres_url
from medclave.protocol import inference as proto
from medclave.protocol.evidence import EvidenceBundle
from medclave.records.access import load_links
from medclave.util.clock import Clock, system_clock

log = logging.getLogger("medclave.enclave")

EngineFactory = Callable[[str, EnclaveSettings], Engine]
# Routes served beside the OpenAI API by a layer above (the clinical apps), by inner path.
RoutesFactory = Callable[[EnclaveSettings], Mapping[str, Route]]


@dataclass
class Booted:
    """A ready service and what to release when it stops."""

    service: InferenceService
    platform: HostPlatform
    model_digest: str
    _closers: list[Callable[[], None]] = field(default_factory=list)
    standing: StandingMonitor | None = None
    mesh: WorkloadMesh | None = None  # attested micro-segmentation (settings.mesh_file)

    def close(self) -> None:
        while self._closers:
            try:
                self._closers.pop()()
            except Exception as exc:  # closing the rest matters more
                log.warning("shutdown step failed: %s", type(exc).__name__)


class _Recording:
    """An attester that remembers the digest of the last evidence it produced (the boot
    evidence the broker accepted), for the audit entries."""

    def __init__(self, inner: Attester) -> None:
        self._inner = inner
        self.evidence_digest: str | None = None

    def __call__(self, nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
        bundle = self._inner(nonce, runtime)
        # Its signed bytes, as the broker logs it: (r, n - s) is the same evidence.
        self.evidence_digest = evidence_digest(bundle.platform, bundle.evidence_bytes())
        return bundle


def check_engine_settings(settings: EnclaveSettings) -> None:
    """The remote engine's settings, refused before any key or model is touched: its address
    inside this VM (``config.engine_not_local``), and weights the enclave can hash."""
    if settings.engine != "openai-compatible":
        return
    from medclave.enclave.engines.openai_compat import engine_address

    if settings.engine_command:
        if settings.engine_url:
            raise InputError("config.invalid", "give engine_url or engine_command, not both: "
                             "the engine the enclave starts listens where the enclave says")
        return
    if not settings.engine_url:
        raise InputError("config.invalid", "engine openai-compatible needs engine_url")
    engine_address(settings.engine_url)
    if settings.sealed_model is not None:
        # A sealed model is unsealed into this process's memory only; an engine server started
        # by someone else could not load it (docs/engines.md). engine_command hands it over.
        raise InputError("config.invalid", "a sealed model needs the embedded engine or "
                         "engine_command (the enclave starts the engine on it)")


def default_engine(model_path: str, settings: EnclaveSettings) -> Engine:
    if settings.engine == "openai-compatible":
        from medclave.enclave.engines.openai_compat import open_engine

        check_engine_settings(settings)
        if settings.engine_command:
            from medclave.enclave.engines.launch import LaunchedEngine

            return LaunchedEngine(settings.engine_command, model_path=model_path,
                                  model=settings.model_id, build_id=settings.engine_build,
                                  start_seconds=settings.engine_start_seconds)
        assert settings.engine_url is not None
        return open_engine(settings.engine_url, model=settings.model_id,
                           build_id=settings.engine_build, model_path=model_path)
    from medclave.enclave.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(model_path, n_ctx=settings.n_ctx, n_threads=settings.n_threads,
                          max_queued=settings.max_queued_generations,
                          retry_after=settings.busy_retry_after_seconds,
                          seed=settings.seed)


def build_authorization(settings: EnclaveSettings, platform: HostPlatform, clock: Clock
                        ) -> AuthorizationHook:
    if settings.insecure_no_auth:
        if platform.secure:
            raise InputError("config.invalid", "insecure_no_auth is for development on sim only")
        log.warning("AUTHORIZATION DISABLED (insecure_no_auth): any caller may use the model")
        return InsecureNoAuthorization()
    if not settings.auth_issuer or not (settings.auth_jwks_file or settings.auth_jwks_url):
        raise InputError("config.invalid", "set auth_issuer and auth_jwks_file or auth_jwks_url "
                         "(or insecure_no_auth on sim for development)")
    # Whose tokens the door accepts, as the runtime states it (report_data binds it): the issuer
    # and where its keys come from (the JWKS URL, or SHA-256 of the static key set as loaded).
    # Without it the operator could point the enclave at an issuer of its own, mint tokens, and
    # have requests logged under any user; with it a hospital's policy names its own IdP.
    keys: JwksProvider
    if settings.auth_jwks_file:
        static = StaticJwks.from_file(settings.auth_jwks_file)
        keys, source = static, f"sha256:{static.source_sha256}"
    else:
        assert settings.auth_jwks_url  # checked above
        keys = HttpJwks(jwks_uri=settings.auth_jwks_url, allow_insecure=not platform.secure)
        source = settings.auth_jwks_url
    tenants = frozenset(settings.auth_tenants) or None
    issuer = IssuerConfig(issuer=settings.auth_issuer, keys=keys, tenants=tenants)
    # DPoP proofs' jti: refused across replicas when they share PostgreSQL (store).
    replay = open_replay_cache(settings.store, scope="enclave",
                               allow_remote=settings.store_allow_remote)
    authenticator = Authenticator([issuer], TokenOptions(audiences=frozenset({
        settings.auth_audience})), clock=clock, replay=replay)
    # Every Cedar decision goes to the audit log, through the trail, with its policy ids.
    trail = DecisionTrail()
    authorizer = Authorizer(settings.auth_policies_dir, clock=clock, sink=trail)
    return TokenAuthorization(authenticator, authorizer, model_id=settings.model_id,
                              roles=settings.auth_roles, tenants=tenants or frozenset(),
                              clock=clock, trail=trail,
                              fhir_users=load_links(settings.records_users_file),
                              token_issuers=({"issuer": settings.auth_issuer, "jwks": source},))


def trusted_brokers(settings: EnclaveSettings) -> TrustedBrokers | None:
    """The broker keys release answers must be signed by; required whenever a broker is used
    (an enclave that took unsigned answers would take the operator's keys)."""
    if not settings.kbs_url:
        return None
    if not settings.kbs_keys:
        raise InputError("config.invalid", "kbs_url needs kbs_keys: the broker's public key "
                         "(`medclave kbs key show` on the broker's host)")
    return TrustedBrokers.of(settings.kbs_keys)


# Attested micro-segmentation: the mesh of each booted enclave, by its mesh_file, so that every
# broker client opened during and after boot presents its workload certificate (one workload
# per mesh file; removed when the enclave closes).
_MESHES: dict[Path, WorkloadMesh] = {}


def _broker_tls(settings: EnclaveSettings) -> ssl.SSLContext | None:
    """Mutual TLS to the broker when the enclave is in a mesh; else None."""
    if settings.mesh_file is None:
        return None
    mesh = _MESHES.get(settings.mesh_file)
    if mesh is None:
        raise InputError("config.invalid", "the enclave's mesh is not started")
    return mesh.tls.client_context("broker")


def _start_mesh(settings: EnclaveSettings, attester: Attester, clock: Clock,
                closers: list[Callable[[], None]]) -> WorkloadMesh | None:
    """The enclave's workload certificate, on fresh evidence, before any broker is asked."""
    path = settings.mesh_file
    if path is None:
        return None
    if settings.kbs_url and not settings.kbs_url.startswith("https://"):
        # the mesh's client context is used only for https: plain http would bypass it
        raise InputError("config.invalid", "in a mesh, kbs_url is https://")
    mesh = WorkloadMesh(WorkloadConfig.load(path), attester, clock=clock)
    _MESHES[path] = mesh

    def close() -> None:
        _MESHES.pop(path, None)
        mesh.close()
    closers.append(close)
    if is_postgres_url(settings.store):
        # Every pool of the enclave's stores then connects over mutual TLS with the workload
        # certificate (verify-full against database_ca_file), or not at all: the policy's
        # enclave -> database edge must be listed (mesh/database.py).
        assert mesh.config.database_ca_file is not None  # WorkloadConfig.load sets it
        database = DatabaseTls(mesh.tls, root_ca=mesh.config.database_ca_file)
        closers.append(database.close)
        database.use_for(settings.store)
    return mesh


def broker_client(settings: EnclaveSettings, attester: Attester
                  ) -> Callable[[Mapping[str, Any]], KbsClient]:
    """Opens a client of the configured broker for a runtime (trusted keys, pinned TLS)."""
    trusted = trusted_brokers(settings)
    if trusted is None or not settings.kbs_url:
        raise InputError("config.invalid", "no key broker configured (kbs_url)")
    url, pinned = settings.kbs_url, trusted
    verify: ssl.SSLContext | str | bool = _broker_tls(settings) or (
        str(settings.kbs_ca_file) if settings.kbs_ca_file else True)

    def open_client(runtime: Mapping[str, Any]) -> KbsClient:
        return KbsClient(url, attester, trusted=pinned, runtime=runtime, verify=verify)

    return open_client


def share_clients(settings: EnclaveSettings, attester: Attester, runtime: Mapping[str, Any]
                  ) -> Callable[[ShareRef], KbsClient]:
    """Clients for a threshold release: one per share, each pinned to the key of the broker
    that holds that share (a key among ``kbs_keys``; the URL comes from the untrusted key.json
    and is trusted for nothing)."""
    if not settings.kbs_keys:
        raise InputError("config.invalid", "a threshold-released model needs kbs_keys: the "
                         "public keys of the brokers holding its shares")
    pinned = TrustedBrokers.of(settings.kbs_keys)
    # One TLS context for every share's client: loading a CA store costs tens of ms.
    verify = _broker_tls(settings) or (
        ssl.create_default_context(cafile=str(settings.kbs_ca_file))
        if settings.kbs_ca_file else ssl.create_default_context())

    def open_client(share: ShareRef) -> KbsClient:
        if share.broker_key not in pinned.fingerprints():
            raise KbsError("kbs.answer_unauthenticated",
                           "a share is held by a broker this enclave does not trust")
        return KbsClient(share.kbs, attester, trusted=pinned, runtime=runtime, verify=verify,
                         signer=share.broker_key)

    return open_client


def standing_checks(settings: EnclaveSettings, attester: Attester,
                    runtime: Callable[[], dict[str, Any]]) -> list[StandingCheck]:
    """One standing question per (broker, key resource) this enclave holds a key from."""
    from medclave.kbs.sealed_models import read_key_ref, read_threshold_ref

    checks: list[StandingCheck] = []

    def single(resource: str) -> StandingCheck:
        def ask() -> str:
            with broker_client(settings, attester)(runtime()) as kbs:
                return kbs.standing(resource)
        return StandingCheck(resource, ask)

    if settings.kbs_url and settings.audit_key_resource:
        checks.append(single(settings.audit_key_resource))
    if settings.sealed_model is not None:
        split = read_threshold_ref(settings.sealed_model)
        ref = read_key_ref(settings.sealed_model)
        if split is not None:
            for share in split.shares:
                def ask_share(share: ShareRef = share) -> str:
                    with share_clients(settings, attester, runtime())(share) as kbs:
                        return kbs.standing(share.resource)
                checks.append(StandingCheck(f"{share.resource}#{share.index}", ask_share))
        elif ref is not None and settings.kbs_url:
            checks.append(single(ref.resource))
    return checks


def build_commit_keys(settings: EnclaveSettings, platform: HostPlatform,
                      runtime: Callable[[], dict[str, Any]], clock: Clock) -> CommitKeys:
    """The tenants' commitment keys: a local file on sim (development), else the broker; with
    neither, every tenant is refused (``audit.commitment_key_unavailable``), never a made-up
    key."""
    if settings.commitment_key_file is not None:
        if platform.secure:
            # On a TEE the data folder is the operator's disk: a key kept there is theirs too.
            raise InputError("config.invalid", "commitment_key_file is for development on sim; "
                             "on a TEE the tenant's key comes from the key broker (kbs_url)")
        log.warning("audit commitments use the development key file %s for every tenant",
                    settings.commitment_key_file.name)
        return FileCommitKeys(settings.commitment_key_file)
    if settings.kbs_url:
        return BrokerCommitKeys(
            broker_fetcher(broker_client(settings, platform.attester), runtime), clock=clock,
            retry_after=timedelta(seconds=settings.commitment_key_retry_seconds))
    log.warning("no commitment key source (kbs_url or commitment_key_file): every inference "
                "will be refused with audit.commitment_key_unavailable")
    return NoCommitKeys()


def build_sealing_roots(settings: EnclaveSettings, platform: HostPlatform,
                       runtime: Callable[[], dict[str, Any]], clock: Clock) -> SealingRoots:
    """Tenants' sealing roots: a local file on sim (development), else the broker; with neither,
    sealed state is refused (``sealing.root_unavailable``)."""
    if settings.sealing_root_file is not None:
        if platform.secure:
            raise InputError("config.invalid", "sealing_root_file is for development on sim; "
                             "on a TEE the tenant's sealing root comes from the key broker")
        log.warning("sealed conversations use the development root file %s",
                    settings.sealing_root_file.name)
        return FileSealingRoots(settings.sealing_root_file)
    if settings.kbs_url:
        return BrokerSealingRoots(sealing_fetcher(broker_client(settings, platform.attester),
                                                  runtime), clock=clock)
    return NoSealingRoots()


def _sealed(settings: EnclaveSettings, platform: HostPlatform,
            runtime: Callable[[], dict[str, Any]], clock: Clock,
            closers: list[Callable[[], None]]) -> SealedConversations:
    store: SealedStore
    backend = settings.backend(settings.sealing_store)
    if backend == "memory":
        store = MemorySealedStore()
    elif backend == "sqlite":
        store = SqliteSealedStore(Path(settings.data_dir) / "sealed" / "conversations.sqlite3")
    else:
        store = PostgresSealedStore(backend, allow_remote=settings.store_allow_remote)
    closers.append(store.close)
    return SealedConversations(build_sealing_roots(settings, platform, runtime, clock), store,
                               clock=clock)


def _open_model(settings: EnclaveSettings, attester: Attester, base_runtime: dict[str, Any],
                closers: list[Callable[[], None]]) -> tuple[str, str]:
    """``(path for the engine, SHA-256 of the plaintext weights)``."""
    if settings.sealed_model is not None:
        from medclave.crypto import sealed
        from medclave.kbs.sealed_models import (
            load_sealed_model,
            load_sealed_model_threshold,
            read_threshold_ref,
        )

        manifest = sealed.load_manifest(settings.sealed_model)
        runtime = {**base_runtime, "model_digest": manifest.plaintext_sha256}
        if settings.requester:
            runtime["requester"] = settings.requester
        if read_threshold_ref(settings.sealed_model) is not None:
            fd, path, manifest = load_sealed_model_threshold(
                share_clients(settings, attester, runtime), settings.sealed_model)
        else:
            if not settings.kbs_url:
                raise InputError("config.invalid", "a sealed model needs kbs_url")
            with broker_client(settings, attester)(runtime) as kbs:
                fd, path, manifest = load_sealed_model(kbs, settings.sealed_model)
        closers.append(_once(lambda: os.close(fd)))
        log.info("model unsealed into memory: %s (%d bytes)", manifest.plaintext_sha256,
                 manifest.size)
        return path, manifest.plaintext_sha256
    if settings.model_path is not None:
        log.warning("model loaded from a plain file (%s): not sealed, the operator can read it",
                    settings.model_path.name)
        weights = settings.model_path
        if settings.engine_command and weights.is_file():
            # The engine the enclave starts gets this descriptor: it loads the inode hashed here.
            plain_fd = os.open(weights, os.O_RDONLY | os.O_CLOEXEC)
            closers.append(_once(lambda: os.close(plain_fd)))
            weights = Path(f"/proc/self/fd/{plain_fd}")
        digest = (verify_model_file(weights, settings.model_sha256)
                  if settings.model_sha256 else model_digest(weights))
        return str(weights), digest
    return str(default_model_path()), DEFAULT_MODEL_SHA256


def _open_speech(settings: EnclaveSettings, attester: Attester, base_runtime: dict[str, Any],
                 closers: list[Callable[[], None]]) -> Transcriber | None:
    """The Whisper worker, or None without ``speech``; the model checked as the chat model is
    (sealed: the broker's key, decrypted into memory; plain: its pinned digest)."""
    if not settings.speech:
        return None
    from medclave.enclave.audio import AudioLimits
    from medclave.enclave.speech import bundled_model, files_from_tar, load_folder

    model_id = settings.speech_model_id
    if settings.speech_sealed_model is not None:
        from medclave.crypto import sealed
        from medclave.kbs.sealed_models import load_sealed_model

        if not settings.kbs_url:
            raise InputError("config.invalid", "a sealed speech model needs kbs_url")
        manifest = sealed.load_manifest(settings.speech_sealed_model)
        runtime = {**base_runtime, "model_digest": manifest.plaintext_sha256}
        if settings.requester:
            runtime["requester"] = settings.requester
        with broker_client(settings, attester)(runtime) as kbs:
            fd, _, manifest = load_sealed_model(kbs, settings.speech_sealed_model)
        try:
            with os.fdopen(os.dup(fd), "rb") as memory:
                model = files_from_tar(memory.read(), model_id=model_id,
                                       expected=settings.speech_model_sha256)
        finally:
            os.close(fd)
    elif settings.speech_model_path is not None:
        log.warning("speech model loaded from a plain folder (%s): not sealed",
                    settings.speech_model_path.name)
        model = load_folder(settings.speech_model_path, model_id=model_id,
                            expected=settings.speech_model_sha256)
    else:
        model = bundled_model()
    speech = Transcriber(model, threads=settings.speech_threads, sandbox=settings.speech_sandbox,
                         limits=AudioLimits(max_bytes=settings.speech_max_bytes,
                                            max_seconds=settings.speech_max_seconds))
    closers.append(speech.close)
    log.info("speech ready: %s %s, sandbox %s", model.model_id, model.digest,
             speech.sandbox.mechanism)
    return speech


def boot(settings: EnclaveSettings, *, clock: Clock = system_clock,
         engine_factory: EngineFactory = default_engine,
         authorization: AuthorizationHook | None = None,
         apps: tuple[AppFactory, ...] = (),
         routes: RoutesFactory | None = None,
         speech: Transcriber | None = None) -> Booted:
    """Run the boot sequence; anything that fails stops the boot (fail closed). ``apps``:
    applications served inside the encapsulation (:mod:`medclave.enclave.inner_apps`); sealed
    state is opened only for them. ``routes``: the clinical apps' inner routes; ``speech``: a
    Whisper worker already running (tests and benchmarks share one; the caller closes it), else
    one is started when ``settings.speech``."""
    sim_measurement = bytes.fromhex(settings.sim_measurement) if settings.sim_measurement else None
    platform = select_platform(settings.platform, settings.data_dir,
                               sim_measurement=sim_measurement)
    attester = _Recording(platform.attester)
    closers: list[Callable[[], None]] = []
    try:
        # An engine outside this VM stops the boot before anything is attested or fetched.
        check_engine_settings(settings)
        mesh = _start_mesh(settings, platform.attester, clock, closers)
        # The door first: a misconfigured one stops the boot before any key or model is touched.
        hook = authorization or build_authorization(settings, platform, clock)
        # The broker sees the runtime of the running service (model, build, keys), fetched
        # when a tenant's key is first needed, so the service exists by then.
        served: list[InferenceService] = []

        def broker_runtime() -> dict[str, Any]:
            runtime = served[0].runtime()
            if settings.requester:
                runtime["requester"] = settings.requester
            return runtime

        commit_keys = build_commit_keys(settings, platform, broker_runtime, clock)
        rotation = (timedelta(seconds=settings.key_rotation_seconds)
                    if settings.key_rotation_seconds else None)
        # A random first key id: a restarted enclave (or another replica) then almost never
        # reuses the id a client pinned, so it answers crypto.key_unknown (re-attest) rather
        # than failing to decrypt (the client re-attests on either, client/session.py).
        keys = KeyRing(clock, rotation=rotation,
                       grace=timedelta(seconds=settings.key_grace_seconds),
                       first_key_id=secrets.randbelow(256))
        origin = settings.audit_origin or f"medclave-enclave/{secrets.token_hex(8)}"
        base_runtime: dict[str, Any] = {
            "service": SERVICE,
            "ohttp_key_config": base64.b64encode(keys.config.encode()).decode(),
            "audit_origin": origin,
        }
        release_proof = _release_proof(settings)
        if release_proof is not None:
            base_runtime["release_proof"] = release_proof
        brokers = trusted_brokers(settings) or (
            TrustedBrokers.of(settings.kbs_keys) if settings.kbs_keys else None)
        if brokers is not None:
            base_runtime["kbs_keys"] = brokers.fingerprints()
        signer = _audit_signer(settings, platform, origin, base_runtime)
        audit_public = signer.verifier.public_key
        base_runtime["audit_public_key"] = base64.b64encode(audit_public).decode()
        before = len(closers)
        model_path, model_digest = _open_model(settings, attester, base_runtime, closers)
        model_release = closers[before:]  # the unsealed weights' memory file
        engine = engine_factory(model_path, settings)
        close_engine = _once(engine.close)  # at shutdown, or earlier on revocation
        closers.append(close_engine)
        if speech is None:
            speech = _open_speech(settings, attester, base_runtime, closers)
        served_routes: dict[str, Route] = {}
        if speech is not None:
            from medclave.enclave.audio_api import transcriptions

            served_routes[proto.TRANSCRIPTIONS_PATH] = transcriptions
        if routes is not None:
            served_routes.update(routes(settings))
        if attester.evidence_digest is None:  # no broker asked: attest once at boot anyway
            attester(os.urandom(32), base_runtime)
        assert attester.evidence_digest is not None
        audit_log = _open_audit(settings, origin, signer)
        closers.append(audit_log.close)
        facts = EnclaveFacts(model_digest=model_digest, engine_build=engine.build_id,
                             evidence_digest=attester.evidence_digest, platform=platform.name,
                             secure=platform.secure, policy_digest=hook.policy_digest)
        sink = AuditLogSink(audit_log, facts, commit_keys)
        identity = EnclaveIdentity(model_id=settings.model_id, model_digest=model_digest,
                                   audit_public_key=audit_public, audit_origin=origin,
                                   policy_digest=hook.policy_digest,
                                   kbs_keys=tuple(base_runtime.get("kbs_keys", ())),
                                   token_issuers=hook.token_issuers,
                                   release_proof=release_proof)
        served_apps: tuple[InnerApp, ...] = ()
        if apps:
            context = AppContext(settings, _sealed(settings, platform, broker_runtime, clock,
                                                   closers), clock)
            served_apps = tuple(factory(context) for factory in apps)
        service = InferenceService(engine=engine, keys=keys, platform=platform,
                                   identity=identity, authorization=hook, audit=sink,
                                   clock=clock, max_tokens_limit=settings.max_tokens_limit,
                                   max_concurrent_per_tenant=settings.max_concurrent_per_tenant,
                                   retry_after=settings.busy_retry_after_seconds,
                                   response_store=ResponseStore(
                                       ttl=settings.responses_ttl_seconds,
                                       per_user=settings.responses_per_user,
                                       max_bytes=settings.responses_max_bytes),
                                   apps=served_apps, speech=speech, routes=served_routes)
        served.append(service)
        if isinstance(commit_keys, BrokerCommitKeys):
            service.on_revoke(commit_keys.drop)
        service.on_revoke(close_engine)
        for release in model_release:  # after the engine: it maps the weights
            service.on_revoke(release)
        monitor = StandingMonitor(
            standing_checks(settings, platform.attester, broker_runtime),
            service.revoke, interval=settings.standing_check_seconds,
            max_age=settings.standing_max_age_seconds)
        if settings.standing_check_seconds:
            monitor.start()
            closers.append(monitor.stop)
        if settings.records_enabled:
            client = broker_client(settings, platform.attester) if settings.kbs_url else None
            records = build_records(settings, data_keys(settings, platform, client,
                                                        broker_runtime, clock), clock)
            closers.append(records.close)
            service.records = RetrievalApi(records, url_allowlist=frozenset(
                h.lower() for h in settings.records_url_allowlist))
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    log.info("enclave ready: platform=%s model=%s engine=%s", platform.name, model_digest,
             engine.build_id)
    return Booted(service, platform, model_digest, closers, monitor, mesh)


def _release_proof(settings: EnclaveSettings) -> dict[str, Any] | None:
    """The release proof file, read once (bounded); its content is checked by relying parties,
    not here: the enclave only serves it."""
    path = settings.release_proof_file
    if path is None:
        return None
    import json

    try:
        with path.open("rb") as fh:
            raw = fh.read(256 * 1024 + 1)
        value = json.loads(raw) if len(raw) <= 256 * 1024 else None
    except (OSError, ValueError) as exc:
        raise InputError("config.invalid", f"cannot read the release proof {path.name}") from exc
    if not isinstance(value, dict):
        raise InputError("config.invalid", f"{path.name} is not a release proof")
    return value


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = threading.Lock()

    def run() -> None:
        if done.acquire(blocking=False):
            action()
    return run


def _audit_signer(settings: EnclaveSettings, platform: HostPlatform, origin: str,
                 runtime: dict[str, Any]) -> NoteSigner:
    """The audit log's key. With ``audit_key_resource``: the seed the broker releases to this
    measured enclave, so one log (origin + key) continues across restarts and a restart cannot
    start history afresh. The evidence for that release cannot name the key it fetches, so it
    binds ``runtime`` (the boot runtime without ``audit_public_key``); the release policy of
    the seed names the enclave's measurement, not its model."""
    resource = settings.audit_key_resource
    if resource is None:
        if platform.secure and settings.kbs_url:
            raise InputError("config.invalid", "on a TEE with a key broker set "
                             "audit_key_resource and audit_origin: a key made at each boot "
                             "lets a restart begin a new log and drop the old one unnoticed")
        log.warning("the audit key is made at boot: the log does not continue across "
                    "restarts (set audit_key_resource and audit_origin to keep one log)")
        return NoteSigner.generate(origin)
    if not settings.kbs_url or not settings.audit_origin:
        raise InputError("config.invalid", "audit_key_resource needs kbs_url and a fixed "
                         "audit_origin (the log's name, the same on every boot)")
    fetch_runtime = dict(runtime)
    if settings.requester:
        fetch_runtime["requester"] = settings.requester
    # The platform's own attester: the evidence entries record is the boot's full runtime.
    with broker_client(settings, platform.attester)(fetch_runtime) as kbs:
        signer = NoteSigner.from_seed(origin, kbs.fetch(resource))
    log.info("audit key released by the broker: %s", signer.verifier.vkey())
    return signer


def _open_audit(settings: EnclaveSettings, origin: str, signer: NoteSigner) -> AuditLog:
    backend = settings.backend(settings.audit_store)
    if backend == "memory":
        return AuditLog(MemoryLogStore(), origin=origin, signer=signer)
    # One log per (origin, key): a key released by the broker reopens its log on every boot
    # (checked against its own latest checkpoint first); a key made at boot starts a new one.
    # On PostgreSQL, replicas holding the same released key and origin share the one log and
    # append in one sequence (audit/log.py; docs/scaling-out.md).
    name = log_name(origin, signer.verifier.vkey())
    store: LogStore
    if backend == "sqlite":
        folder = Path(settings.data_dir) / "audit"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = SqliteLogStore(folder / f"{name}.sqlite3")
    else:
        store = PostgresLogStore(backend, log=name, allow_remote=settings.store_allow_remote)
    return AuditLog.resume(store, origin=origin, signer=signer)
