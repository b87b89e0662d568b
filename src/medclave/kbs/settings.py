"""The broker's configuration: one pydantic-settings model, ``MEDCLAVE_KBS_*`` in the environment.

How it meets the network (trusted proxies, read deadlines) is :class:`~medclave.serving.
ServingSettings`: ``MEDCLAVE_KBS_TRUSTED_PROXIES`` and the rest. The client address the rate
limit and the decision log use is the TCP peer's, or, only behind a listed proxy, the address that
proxy forwarded.

The KEK comes from ``MEDCLAVE_KBS_KEK`` (base64, for containers handed a secret) when set, else
from the 0600 file ``kek_file`` (default ``DATA/kek.key``, created on first start).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medclave.ops.settings import OpsSettings
from medclave.postgres.pool import store_setting
from medclave.serving import ServingSettings


class KbsSettings(BaseSettings, ServingSettings, OpsSettings):
    model_config = SettingsConfigDict(env_prefix="MEDCLAVE_KBS_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8450, ge=0, le=65535)
    data_dir: Path = Path("medclave-kbs")
    # Where resources, policies, nonces, the decision log and revocation lists live, and the
    # rate-limit buckets: "sqlite" (DATA/kbs.sqlite3, one broker), "memory" (throwaway), or a
    # postgresql:// URL shared by every broker replica (docs/scaling-out.md). The URL may leave
    # the password to libpq (PGPASSWORD, ~/.pgpass); hosts other than the local socket or
    # loopback are refused unless store_allow_remote.
    store: str = "sqlite"
    store_allow_remote: bool = False
    kek: SecretStr | None = None
    kek_file: Path | None = None
    # The Ed25519 key every release answer is signed with (base64 of its 32-byte seed in
    # MEDCLAVE_KBS_SIGNING_KEY, else the 0600 file, default DATA/signing.key, made on first start).
    signing_key: SecretStr | None = None
    signing_key_file: Path | None = None
    # HTTPS: the broker serves TLS with this certificate and key when both are set. Enclaves
    # may pin it (their kbs_ca_file); release answers are signed either way.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Attested micro-segmentation (docs/continuous-trust.md): a TOML file naming the broker's
    # mesh identity and the segmentation policy. Set, the broker runs the mesh CA (its key in
    # DATA/mesh-ca.key) and serves mutual TLS instead of tls_cert_file; unset, nothing changes.
    mesh_file: Path | None = None
    # SHA-256 fingerprints of sim roots whose evidence may verify (still only under a policy
    # naming "sim"). Empty: sim evidence never verifies here.
    sim_roots: tuple[str, ...] = ()
    nonce_ttl_seconds: int = Field(default=60, ge=1, le=3600)
    rate_per_second: float = Field(default=20.0, gt=0)
    rate_burst: int = Field(default=40, ge=1)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        return store_setting(value, names=("sqlite", "memory"))

    @property
    def postgres(self) -> bool:
        return self.store not in ("sqlite", "memory")

    @property
    def kek_path(self) -> Path:
        return self.kek_file or self.data_dir / "kek.key"

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.data_dir / "signing.key"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "kbs.sqlite3"


@lru_cache(maxsize=1)
def get_settings() -> KbsSettings:
    """The process's settings (from the environment); tests override this dependency."""
    return KbsSettings()
