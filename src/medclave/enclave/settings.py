"""The enclave server's configuration: one pydantic-settings model, ``MEDCLAVE_ENCLAVE_*``.

Where the model comes from, in order: ``sealed_model`` (a sealed folder whose key the broker at
``kbs_url`` releases on attestation: the production path), else ``model_path`` (a plain GGUF,
for development: the operator can read it), else the bundled default model (plain, public).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.ops.settings import OpsSettings
from medclave.postgres.pool import store_setting
from medclave.serving import ServingSettings


class EnclaveSettings(BaseSettings, ServingSettings, OpsSettings):
    """Network settings (trusted proxies, read deadlines) are :class:`ServingSettings`';
    metrics, logs, drain and tracing are :class:`~medclave.ops.settings.OpsSettings`'."""

    model_config = SettingsConfigDict(env_prefix="MEDCLAVE_ENCLAVE_", extra="forbid",
                                      frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    data_dir: Path = Path("medclave-enclave")
    # --- stores (docs/scaling-out.md) -----------------------------------------------------
    # Where the audit log, the sealed conversations and the records rest: "sqlite" (files under
    # data_dir: audit/, sealed/, records/; one machine, the default), "memory" (all of them,
    # lost on exit: development and tests), or a postgresql:// URL (one database, shared by
    # every replica; local socket or loopback unless store_allow_remote). A store whose own
    # setting (audit_store, sealing_store, records_store) is "memory" stays in memory.
    store: str = Field(default="sqlite", max_length=2048)
    store_allow_remote: bool = False

    # --- attestation ----------------------------------------------------------------------
    # auto: the TEE this machine has (configfs-tsm, /dev/sev-guest); sim: the software stand-in
    # for development, which protects nothing.
    platform: Literal["auto", "sim"] = "auto"
    # sim only: report this measurement (hex SHA-384) instead of the code measurement.
    sim_measurement: str | None = Field(default=None, pattern=r"^[0-9a-f]{96}$")

    # --- model and engine -----------------------------------------------------------------
    sealed_model: Path | None = None
    kbs_url: str | None = None
    # The broker keys release answers must be signed by (base64 or hex of the raw Ed25519 public
    # key, `medclave kbs key show`); required with kbs_url. Their fingerprints go into the
    # runtime the evidence binds, so a hospital's policy can require its own broker (kbs_keys).
    kbs_keys: tuple[str, ...] = Field(default=(), max_length=16)
    # HTTPS to the broker: pin this CA (or the broker's self-signed certificate) file.
    kbs_ca_file: Path | None = None
    # Attested micro-segmentation (docs/continuous-trust.md): a TOML file naming this
    # enclave's mesh identity, the segmentation policy, the mesh CA and its URL. Set, the
    # enclave obtains a workload certificate on fresh evidence at boot, serves mutual TLS and
    # reaches the broker over it (instead of kbs_ca_file); unset, nothing changes.
    mesh_file: Path | None = None
    requester: str | None = Field(default=None, max_length=256)  # runtime["requester"] for KBS
    # Continuous trust (enclave/standing.py): re-check standing with the brokers that released
    # this enclave's keys every standing_check_seconds (0: never); with no good answer for
    # standing_max_age_seconds, stop serving as if revoked (fail closed).
    # Release transparency (audit/release.py): the proof that this build is a published
    # release (`medclave release publish`), served in the runtime of every attestation.
    release_proof_file: Path | None = None
    standing_check_seconds: int = Field(default=300, ge=0, le=86400)
    standing_max_age_seconds: int = Field(default=1800, ge=1, le=7 * 86400)
    model_path: Path | None = None
    model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    model_id: str = Field(default=DEFAULT_MODEL_ID, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    engine: Literal["llama.cpp", "openai-compatible"] = "llama.cpp"
    # openai-compatible (vLLM in this confidential VM, docs/engines.md): a loopback IP literal
    # (http://127.0.0.1:8000) or a Unix socket (unix:///run/vllm.sock), nothing else; the
    # weights it serves are model_path (file or folder), hashed at boot, and model_id is the
    # only model it may serve.
    engine_url: str | None = None
    # Or the enclave starts the engine itself (enclave/engines/launch.py): this argv, with
    # {model} (the weights, handed over as a descriptor), {port} and {model_id} filled in;
    # engine_url is then the enclave's choice. Sealed models work this way too.
    engine_command: tuple[str, ...] = Field(default=(), max_length=128)
    engine_start_seconds: float = Field(default=600.0, gt=0, le=3600)
    # As audit entries record it (default: vLLM's GET /version).
    engine_build: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
    n_ctx: int = Field(default=2048, ge=128, le=131072)
    n_threads: int = Field(default=2, ge=1, le=256)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    max_tokens_limit: int = Field(default=1024, ge=1, le=131072)

    # --- speech and the clinical scribe (issue 14) -----------------------------------------
    # speech: Whisper in a write-forbidden worker, serving /v1/audio/transcriptions; the
    # scribe (/v1/medclave/scribe, a clinical app one layer up) is added by `medclave enclave
    # serve --scribe`, which also turns speech on. Which Whisper:
    # speech_sealed_model (a tar of a CTranslate2 folder, sealed; key from kbs_url), else
    # speech_model_path (a plain folder, development), else the bundled tiny.en (pinned).
    speech: bool = False
    speech_sealed_model: Path | None = None
    speech_model_path: Path | None = None
    speech_model_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    speech_model_id: str = Field(default="whisper-tiny.en",
                                 pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    speech_threads: int = Field(default=2, ge=1, le=256)
    speech_max_seconds: float = Field(default=20 * 60.0, gt=0, le=4 * 3600)
    speech_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024, le=25 * 1024 * 1024)
    # Landlock for the worker where the kernel has it; the runtime states whether it is active.
    speech_sandbox: bool = True

    # --- OHTTP keys -----------------------------------------------------------------------
    key_rotation_seconds: int | None = Field(default=None, ge=60)
    key_grace_seconds: int = Field(default=300, ge=0, le=86400)

    # --- authorization at the door (the identity issue) -------------------------------------
    auth_issuer: str | None = None
    auth_jwks_file: Path | None = None
    auth_jwks_url: str | None = None
    auth_audience: str = "medclave"
    auth_tenants: tuple[str, ...] = ()  # tenants this deployment serves (empty: the issuer's)
    auth_roles: tuple[str, ...] = ("clinician",)  # roles that may call the model
    auth_policies_dir: Path | None = None  # Cedar policies (default: the bundled ones)
    # Development only: accept requests without a token. Logged loudly, refused with a real TEE.
    insecure_no_auth: bool = False

    # --- audit --------------------------------------------------------------------------
    audit_store: Literal["sqlite", "memory"] = "sqlite"
    audit_origin: str | None = None
    # kbs:///OWNER/audit-key/NAME: a 32-byte Ed25519 seed the broker at kbs_url releases to
    # this measured enclave, so the log (origin + key) continues across restarts. Needs a fixed
    # audit_origin. Without it each boot signs a new log under a new key (refused on a TEE
    # that has a broker: a restart there must not be able to start history afresh).
    audit_key_resource: str | None = Field(default=None, max_length=256,
                                           pattern=r"^kbs:///[^/]+/[^/]+/[^/]+$")
    # Tenants' commitment keys come from the broker at kbs_url (kbs:///TENANT/commitment-key/
    # audit); development on sim may use one local key file instead (mode 0600 enforced).
    commitment_key_file: Path | None = None
    commitment_key_retry_seconds: int = Field(default=30, ge=1, le=3600)

    # Room for a transcription upload (25 MB of audio, proto.MAX_AUDIO_BODY) in chunked OHTTP.
    max_request_bytes: int = Field(default=40 * 1024 * 1024, ge=1024)

    # --- records retrieval (docs/retrieval.md) --------------------------------------------
    # FHIR records ingested, sealed at rest under each tenant's data key (from the broker at
    # kbs_url: kbs:///TENANT/data-key/records; on sim, one local 0600 key file for development),
    # searched in enclave memory, every candidate authorized by Cedar before the model sees it.
    records_enabled: bool = False
    records_store: Literal["sqlite", "memory"] = "sqlite"
    records_key_file: Path | None = None
    # {"SUBJECT": "Patient/ID" | "Practitioner/ID" | "Practitioner?identifier=SYS|VALUE"}: whose
    # records a token's subject is (a token's own fhirUser claim wins).
    records_users_file: Path | None = None
    # Hosts whose URLs may stay in retrieval answers (all others are removed).
    records_url_allowlist: tuple[str, ...] = Field(default=(), max_length=64)
    embedding_threads: int = Field(default=2, ge=1, le=64)

    # --- concurrency (issue 9 §6) -----------------------------------------------------------
    # Inference runs under limits of its own, so attestation never waits behind it: at most
    # max_concurrent_inferences in progress over all callers (more: 429 outside the
    # encapsulation) and max_concurrent_per_tenant per tenant (more: 429 inside it, the tenant
    # being known only there). A streamed answer holds its slots until it ends. A full limit is
    # answered at once with Retry-After, never queued; admitted requests then take turns at
    # the engine (max_queued_generations).
    max_concurrent_inferences: int = Field(default=32, ge=1, le=4096)
    max_concurrent_per_tenant: int = Field(default=8, ge=1, le=4096)
    # Attestation has its own thread limit (signing evidence may call the TEE's firmware).
    max_concurrent_attestations: int = Field(default=8, ge=1, le=1024)
    busy_retry_after_seconds: int = Field(default=1, ge=1, le=3600)
    # Generations waiting for the embedded engine, which runs one at a time and takes them in
    # turns by tenant, then user (issue 10 §4); one more is answered enclave.queue_full (429
    # with Retry-After, inside the encapsulation). Below max_concurrent_inferences, so that
    # the line at the engine is bounded before the admission limit is reached.
    max_queued_generations: int = Field(default=16, ge=0, le=4096)

    # --- sealed state and the triage chat (docs/triage.md) ------------------------------------
    # Sealed conversations rest here (data_dir/sealed/conversations.sqlite3), ciphertext only.
    sealing_store: Literal["sqlite", "memory"] = "sqlite"
    # Tenants' sealing roots come from the broker at kbs_url (kbs:///TENANT/sealing-root/
    # conversations); development on sim may derive them from one local key file (mode 0600).
    sealing_root_file: Path | None = None
    triage: bool = False  # serve /v1/medclave/conversations (wired by `medclave enclave serve`)
    triage_lexicon_file: Path | None = None  # default: the bundled apps/triage/lexicon.toml
    triage_crisis_file: Path | None = None  # default: the bundled US responses (988, 911)
    triage_prompt_file: Path | None = None  # default: the bundled safe-messaging prompt
    triage_patient_roles: tuple[str, ...] = ("patient",)
    triage_staff_roles: tuple[str, ...] = ("clinician", "admin")

    # --- Responses API state (previous_response_id) ------------------------------------------
    # Kept in the enclave's memory only (never on disk, never outside), per tenant and user,
    # for at most responses_ttl_seconds; lost on restart. 0 responses: nothing is kept.
    responses_ttl_seconds: int = Field(default=3600, ge=1, le=7 * 86400)
    responses_per_user: int = Field(default=64, ge=0, le=4096)
    responses_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0, le=2**34)

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, value: object) -> str:
        if value is None:  # unset, as configurations written for the replay cache alone say
            return "sqlite"
        if not isinstance(value, str):
            raise ValueError("store is a string")
        return store_setting(value, names=("sqlite", "memory"))

    def backend(self, own: Literal["sqlite", "memory"]) -> str:
        """Where one store rests, from ``store`` and that store's own setting ``own``:
        "memory", "sqlite" or the PostgreSQL URL."""
        return "memory" if own == "memory" else self.store


@lru_cache(maxsize=1)
def get_settings() -> EnclaveSettings:
    """The process's settings (from the environment); tests override this dependency."""
    return EnclaveSettings()
