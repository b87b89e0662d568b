"""Attested micro-segmentation with real TLS handshakes on 127.0.0.1: the mesh CA on the real
broker issues only to attested workloads; services accept only the peers the segmentation
policy lists; revocation bites at the next handshake; rotation under load drops nothing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from medclave.errors import MedclaveError, MeshError
from medclave.kbs.client import KbsClient
from medclave.kbs.revocation import RevocationIn
from medclave.mesh.certs import MeshCA
from medclave.mesh.policy import WorkloadId
from medclave.mesh.tls import MeshTls
from medclave.mesh.workload import request_certificate
from tests.kbs.helpers import sim_attester, sim_policy, trusting
from tests.mesh.conftest import MEASUREMENTS, TENANT, Mesh, start

KEY = f"kbs:///{TENANT}/model-key/llama"


def _code(response: httpx.Response) -> str:
    code = response.json()["error"]["code"]
    assert isinstance(code, str)
    return code


def test_allowed_peers_succeed(mesh: Mesh, serve: list) -> None:  # type: ignore[type-arg]
    enclave, _ = mesh.workload("enclave")
    proxy, _ = mesh.workload("proxy")
    server = start(serve, enclave)
    with httpx.Client(verify=proxy.client_context("enclave")) as client:
        r = client.get(server.url + "/whoami")
    assert r.status_code == 200 and r.json() == {"peer": f"medclave://{TENANT}/proxy/w1"}
    # enclave -> broker: a real key release over mutual TLS
    token = mesh.broker.issue_owner_token(TENANT)
    mesh.broker.create_resource(TENANT, KEY, b"k" * 32, client_id="test")
    mesh.broker.set_policy(TENANT, KEY, sim_policy(measurement=MEASUREMENTS["enclave"]),
                           client_id="test")
    assert token
    with KbsClient(mesh.url, sim_attester(mesh.authority, measurement=MEASUREMENTS["enclave"]),
                   trusted=trusting(mesh.broker),
                   verify=enclave.client_context("broker")) as kbs:
        assert kbs.fetch(KEY) == b"k" * 32


def test_a_role_the_policy_does_not_allow_is_refused(mesh: Mesh, serve: list) -> None:  # type: ignore[type-arg]
    enclave, _ = mesh.workload("enclave")
    database, _ = mesh.workload("database")
    proxy, _ = mesh.workload("proxy")
    server = start(serve, enclave)
    # database -> enclave: a valid certificate of this mesh, a role not allowed to reach it.
    # Its own client refuses to go (below); a compromised one skips that check: the server
    # refuses it. (The plain context presents the database's certificate, checks nothing.)
    with httpx.Client(verify=database._current()[1]) as client:
        r = client.get(server.url + "/whoami")
    assert r.status_code == 403 and _code(r) == "mesh.peer_not_allowed"
    with httpx.Client(verify=database.client_context()) as client, \
            pytest.raises(MeshError, match="database may not reach enclave"):
        client.get(server.url + "/whoami")
    assert server._server.config.loaded_app.state.hits == 0  # type: ignore[union-attr]
    # proxy -> broker's workload routes: refused by the broker (the CA routes stay open)
    with httpx.Client(base_url=mesh.url, verify=proxy._current()[1]) as client:
        r = client.post("/kbs/v1/release", json={})
        assert r.status_code == 403 and _code(r) == "mesh.peer_not_allowed"
        assert client.post("/kbs/v1/challenge").status_code == 200
    # no certificate at all: only the CA's bootstrap routes
    bare = MeshTls(WorkloadId.of(TENANT, "enclave", "new"), ca_pem=mesh.ca_pem,
                   policy=mesh.policy)
    with httpx.Client(base_url=mesh.url, verify=bare.client_context(to_ca=True)) as client:
        r = client.post("/kbs/v1/standing", json={})
        assert r.status_code == 403 and _code(r) == "mesh.peer_unauthenticated"
    # the client side checks the server too: a proxy expecting an enclave meets a database
    db_server = start(serve, database)
    with httpx.Client(verify=proxy.client_context("enclave")) as client, \
            pytest.raises(MeshError) as refused:
        client.get(db_server.url + "/whoami")
    assert refused.value.code == "mesh.peer_not_allowed"
    assert db_server._server.config.loaded_app.state.hits == 0  # type: ignore[union-attr]


def _foreign(mesh: Mesh, *, now: datetime, lifetime: timedelta,
             ca: MeshCA | None = None) -> MeshTls:
    """A proxy holding a certificate from ``ca`` (default: another CA) made at ``now``."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from medclave.mesh.certs import new_key
    issuer = ca or MeshCA.generate(TENANT, now=now)
    identity = WorkloadId.of(TENANT, "proxy", "rogue")
    key = new_key()
    cert = issuer.issue(identity, key.public_key(), claims={}, now=now, lifetime=lifetime)
    tls = MeshTls(identity, ca_pem=mesh.ca_pem, policy=mesh.policy)
    tls.install(key, cert.public_bytes(Encoding.PEM), cert.not_valid_after_utc)
    return tls


def _refused_at_handshake(url: str, tls: MeshTls) -> None:
    # TLS 1.3: the client's side of the handshake is done before the server judges its
    # certificate, so the server's alert and close meet the client on its first read.
    with httpx.Client(verify=tls.client_context("enclave")) as client, \
            pytest.raises(httpx.TransportError):
        client.get(url + "/whoami")


def test_a_certificate_from_another_ca_is_refused(mesh: Mesh, serve: list) -> None:  # type: ignore[type-arg]
    enclave, _ = mesh.workload("enclave")
    server = start(serve, enclave)
    _refused_at_handshake(server.url, _foreign(mesh, now=datetime.now(UTC),
                                               lifetime=timedelta(hours=1)))
    assert server._server.config.loaded_app.state.hits == 0  # type: ignore[union-attr]
    # the same identity and dates from this mesh's CA pass: only the issuer differed
    own = _foreign(mesh, now=datetime.now(UTC), lifetime=timedelta(hours=1),
                   ca=mesh.state.issuer.ca)
    with httpx.Client(verify=own.client_context("enclave")) as client:
        assert client.get(server.url + "/whoami").status_code == 200


def test_an_expired_certificate_is_refused(mesh: Mesh, serve: list) -> None:  # type: ignore[type-arg]
    enclave, _ = mesh.workload("enclave")
    server = start(serve, enclave)
    ca = mesh.state.issuer.ca  # this mesh's own CA: only the dates are wrong
    expired = _foreign(mesh, now=datetime.now(UTC) - timedelta(hours=2),
                       lifetime=timedelta(hours=1), ca=ca)
    _refused_at_handshake(server.url, expired)
    fresh = _foreign(mesh, now=datetime.now(UTC), lifetime=timedelta(hours=1), ca=ca)
    with httpx.Client(verify=fresh.client_context("enclave")) as client:
        assert client.get(server.url + "/whoami").status_code == 200


def test_a_revoked_workload_gets_no_certificate_and_is_refused_at_the_next_handshake(
        mesh: Mesh, serve: list) -> None:  # type: ignore[type-arg]
    enclave, _ = mesh.workload("enclave")
    proxy, _ = mesh.workload("proxy")
    server = start(serve, enclave)
    client = httpx.Client(verify=proxy.client_context("enclave"))
    assert client.get(server.url + "/whoami").status_code == 200
    mesh.broker.revoke(TENANT, RevocationIn(kind="measurement",
                                            value=MEASUREMENTS["enclave"].hex()),
                       client_id="test")
    # no new certificate
    with httpx.Client(base_url=mesh.url, verify=enclave.client_context(to_ca=True)) as to_ca, \
            pytest.raises(MedclaveError) as refused:
        request_certificate(to_ca, enclave.identity,
                            sim_attester(mesh.authority, measurement=MEASUREMENTS["enclave"]))
    assert refused.value.code == "kbs.revoked"
    assert mesh.broker.store.decisions(owner=TENANT, limit=1)[0].code == "kbs.revoked"
    # the current certificate: refused by the proxy at its next handshake (new connection)
    proxy.deny.refresh()  # type: ignore[union-attr]
    client.close()
    with httpx.Client(verify=proxy.client_context("enclave")) as fresh, \
            pytest.raises(MeshError) as gone:
        fresh.get(server.url + "/whoami")
    assert gone.value.code == "mesh.peer_revoked"
    # and by the broker (its deny list refreshes every 0.2 s here)
    time.sleep(0.5)
    with httpx.Client(base_url=mesh.url, verify=enclave.client_context("broker")) as kbs:
        r = kbs.post("/kbs/v1/standing", json={})
    assert r.status_code == 403 and _code(r) == "mesh.peer_revoked"


def test_rotation_under_load_drops_nothing(mesh: Mesh, serve: list) -> None:  # type: ignore[type-arg]
    mesh.state.issuer.lifetime = timedelta(seconds=3)  # renewed at half-life: every 1.5 s
    enclave, enclave_renewer = mesh.workload("enclave")
    proxy, proxy_renewer = mesh.workload("proxy")
    server = start(serve, enclave)
    enclave_renewer.start()
    proxy_renewer.start()
    failures: list[str] = []
    done = [0]
    serials: set[str] = set()
    stop = threading.Event()

    def seen(response: httpx.Response) -> None:  # before the body: the connection is open
        tls = response.extensions["network_stream"].get_extra_info("ssl_object")
        serials.add(tls.getpeercert(True)[-40:].hex())

    def load(keep_alive: bool) -> None:
        client = httpx.Client(verify=proxy.client_context("enclave"),
                              event_hooks={"response": [seen]})
        try:
            while not stop.is_set():
                try:
                    r = client.get(server.url + "/whoami",
                                   headers={} if keep_alive else {"connection": "close"})
                    if r.status_code != 200:
                        failures.append(r.text)
                    done[0] += 1
                except Exception as exc:
                    failures.append(repr(exc))
        finally:
            client.close()

    threads = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(4.5)  # past the first certificates' expiry
    stop.set()
    for t in threads:
        t.join()
    enclave_renewer.stop()
    proxy_renewer.stop()
    assert not failures, failures[:3]
    assert enclave.rotations >= 3 and proxy.rotations >= 3
    assert len(serials) >= 3  # the server presented several certificates over the run
    assert done[0] > 20


def test_session_resumption_is_offered_and_taken(mesh: Mesh, serve: list) -> None:  # type: ignore[type-arg]
    enclave, _ = mesh.workload("enclave")
    proxy, proxy_renewer = mesh.workload("proxy")
    server = start(serve, enclave)
    reused: list[bool] = []

    def seen(response: httpx.Response) -> None:
        reused.append(response.extensions["network_stream"].get_extra_info("ssl_object")
                      .session_reused)

    with httpx.Client(verify=proxy.client_context("enclave"),
                      event_hooks={"response": [seen]}) as client:
        for _ in range(3):
            r = client.get(server.url + "/whoami", headers={"connection": "close"})
            assert r.status_code == 200 and r.json()["peer"].endswith("/proxy/w1")
    assert reused == [False, True, True]
    # a rotation of the client's certificate starts over with a full handshake
    proxy_renewer.renew_once()
    with httpx.Client(verify=proxy.client_context("enclave"),
                      event_hooks={"response": [seen]}) as client:
        for _ in range(2):
            client.get(server.url + "/whoami", headers={"connection": "close"})
    assert reused[3:] == [False, True]


def test_the_broker_rotates_its_own_certificate_without_a_restart(mesh: Mesh) -> None:
    enclave, _ = mesh.workload("enclave")
    seen: list[bytes] = []

    def cert(response: httpx.Response) -> None:
        tls = response.extensions["network_stream"].get_extra_info("ssl_object")
        seen.append(tls.getpeercert(True))

    def ask(tls: MeshTls) -> int:
        with httpx.Client(base_url=mesh.url, verify=tls.client_context("broker"),
                          event_hooks={"response": [cert]}) as client:
            return client.post("/kbs/v1/challenge").status_code

    assert ask(enclave) == 200
    before = mesh.state.tls.rotations
    mesh.state.renewer.renew_once()
    assert mesh.state.tls.rotations == before + 1
    # a full handshake (a workload with no session to resume) meets the new certificate; a
    # resumed session still shows the one of its full handshake, and still works
    fresh, _ = mesh.workload("enclave", "w2")
    assert ask(fresh) == 200
    assert ask(enclave) == 200
    assert len(seen) == 3 and seen[1] != seen[0] and seen[2] == seen[0]
