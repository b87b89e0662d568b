"""Enclave -> PostgreSQL over mutual TLS with the workload certificate.

libpq reads its client certificate and key from files (``sslcert``/``sslkey``; it has no way
to take them from memory), so :class:`DatabaseTls` writes the workload's current key and
certificate chain, owner-only (0600), into a fresh 0700 folder on a memory-backed file system
(``/dev/shm``: tmpfs, never the data dir, gone at reboot), and writes a **new pair of files**
at every rotation (:meth:`medclave.mesh.tls.MeshTls.subscribe`). Each new pool connection
asks for the current pair (``postgres.use_client_tls``: psycopg_pool's callable ``kwargs``),
so it never reads a certificate and a key from two different rotations; the pair before the
previous one is deleted (a connection being opened may still be reading the previous one).

The server is checked with ``sslmode=verify-full`` (chain to ``database_ca_file``, and the host
dialled among the certificate's subjectAltNames, RFC 6125); the segmentation policy's
``enclave -> database`` edge must be listed, or the enclave refuses to connect at all
(``mesh.peer_not_allowed``). The server admits the client by its certificate: see
docs/continuous-trust.md, "Enclave to database".
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.errors import InputError, MeshError
from medclave.mesh.policy import SCHEME, WorkloadId
from medclave.mesh.tls import MeshTls
from medclave.postgres.pool import use_client_tls

MEMORY_DIR: Final = Path("/dev/shm")  # noqa: S108 - only mkdtemp in it (0700, random name)
ROLE: Final = "database"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


class DatabaseTls:
    """The libpq TLS parameters of a workload's database connections (module docstring)."""

    def __init__(self, tls: MeshTls, *, root_ca: Path, memory_dir: Path = MEMORY_DIR) -> None:
        if not tls.policy.may_reach(tls.identity, ROLE):
            raise MeshError("mesh.peer_not_allowed",
                            f"{tls.identity.role} may not reach {ROLE}: the segmentation "
                            "policy does not list the edge")
        if not root_ca.is_file():
            raise InputError("config.invalid", f"database CA file {root_ca.name} unreadable")
        if not memory_dir.is_dir():
            raise InputError("config.invalid", f"{memory_dir} (memory-backed) is missing: the "
                             "database client key is never written to disk")
        self.root_ca = root_ca
        self.folder = Path(tempfile.mkdtemp(prefix="medclave-db-tls-", dir=memory_dir))
        self._lock = threading.Lock()
        self._generation = 0
        self._current: tuple[Path, Path] | None = None
        self._closed = False
        self._undo: list[Callable[[], None]] = []
        tls.subscribe(self._install)

    def _install(self, key: ec.EllipticCurvePrivateKey, chain_pem: bytes) -> None:
        with self._lock:
            if self._closed:  # a renewal racing the enclave's shutdown: nothing to write
                return
            self._generation += 1
            n = self._generation
            cert, key_file = self.folder / f"client-{n}.crt", self.folder / f"client-{n}.key"
            _write_private(key_file, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            _write_private(cert, chain_pem)
            self._current = (cert, key_file)
            for old in (self.folder / f"client-{n - 2}.crt", self.folder / f"client-{n - 2}.key"):
                old.unlink(missing_ok=True)

    def params(self) -> dict[str, str]:
        """libpq's ssl* parameters for a new connection: the current certificate files."""
        with self._lock:
            current = self._current
        if current is None:  # no certificate: no connection (fail closed)
            raise MeshError("mesh.handshake_failed", "no workload certificate for the database")
        return {"sslmode": "verify-full", "sslrootcert": str(self.root_ca),
                "sslcert": str(current[0]), "sslkey": str(current[1]),
                "ssl_min_protocol_version": "TLSv1.3"}

    def use_for(self, url: str, *, max_lifetime: float = 300.0) -> None:
        """Every pool opened for ``url`` from now on uses these parameters, and replaces each
        connection after ``max_lifetime`` seconds (it keeps the certificate it opened with)."""
        self._undo.append(use_client_tls(url, self.params, max_lifetime=max_lifetime))

    def close(self) -> None:
        while self._undo:
            self._undo.pop()()
        with self._lock:
            self._current = None
            self._closed = True
        shutil.rmtree(self.folder, ignore_errors=True)


_PG_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class ServerConfig:
    """What a PostgreSQL server adds to its configuration to admit only a tenant's enclaves."""

    postgresql_conf: str
    pg_hba_conf: str
    pg_ident_conf: str


def server_config(tenant: str, user: str, *, database: str | None = None,
                  ca_file: str = "mesh-ca.pem", cert_file: str = "server.crt",
                  key_file: str = "server.key", crl_file: str | None = None) -> ServerConfig:
    """The lines docs/continuous-trust.md shows, for ``tenant``'s enclaves logging in as
    ``user`` to ``database`` (default: ``user``).

    The map matches the certificate's subject CN, which the mesh CA sets to the identity URI
    cut to 64 characters (X.520's ub-common-name; mesh/certs.py): cutting only drops a suffix,
    so a CN that starts with ``medclave://TENANT/enclave/`` comes from an identity of that
    tenant and role, and nothing else can match (tenant and role come before the name)."""
    WorkloadId.of(tenant, "enclave", "x")  # a valid tenant, or mesh.identity_invalid
    database = database or user
    for name in (user, database):
        if not _PG_NAME.fullmatch(name):
            raise InputError("config.invalid", f"{name!r} is not a plain PostgreSQL name")
    conf = (f"ssl = on\nssl_cert_file = '{cert_file}'\nssl_key_file = '{key_file}'\n"
            f"ssl_ca_file = '{ca_file}'\nssl_min_protocol_version = 'TLSv1.3'\n")
    if crl_file is not None:
        conf += f"ssl_crl_file = '{crl_file}'\n"
    hba = (f"hostssl {database} {user} all cert clientcert=verify-full map=enclaves\n"
           "hostnossl all all all reject\n")
    ident = f"enclaves /^{SCHEME}{tenant}/enclave/[A-Za-z0-9._-]+$ {user}\n"
    return ServerConfig(conf, hba, ident)
