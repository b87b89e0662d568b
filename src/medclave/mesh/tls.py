"""A workload's mutual TLS: contexts that rotate in place, and the checks on every peer.

:class:`MeshTls` holds one workload's identity, the mesh CA (the only trust anchor), the
segmentation policy, the deny list and its current certificate. From them it makes

* the **server** context a service runs under (uvicorn, ``serving.ServiceConfig``): TLS 1.3,
  client certificates required (or optional where a service has open bootstrap routes), chain
  verified against the mesh CA by OpenSSL; the peer's identity is then checked by
  :meth:`MeshTls.check_peer` on every new connection, before any request is read;
* **client** contexts for httpx (:meth:`MeshTls.client_context`): the server's chain verified
  against the mesh CA, its identity checked right after the handshake and before a byte of the
  request is sent (so a request never reaches a peer the policy does not allow); hostnames are
  not checked, the identity URI is. For an enclave replica behind a TLS-passthrough balancer
  the context also sends the replica's server name (the balancer routes on it) and accepts only
  that replica's identity (``mesh.peer_unexpected``, docs/scaling-out.md).

Rotation (:meth:`MeshTls.install`) builds fresh contexts and swaps them in: new handshakes use
the new certificate, connections already open finish on the old one, so nothing is dropped. The
server context stays the object uvicorn was given; its ``sni_callback`` (called on every
ClientHello, with or without SNI) moves each new connection to the current context. Clients
get a facade whose ``wrap_socket`` uses the current one.

Session resumption (TLS 1.3 PSK, RFC 8446 §2.2): httpx never offers a session, so the client
facade keeps the last ticket per server and offers it on the next connection. A resumed session
carries the peer certificate of the full handshake, which is checked again every time
(deny list, expiry), so resumption never outlives a revocation or the certificate.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.errors import MedclaveError, MeshError
from medclave.mesh.certs import PeerCert
from medclave.mesh.policy import SegmentationPolicy, WorkloadId
from medclave.util.clock import Clock, system_clock
from medclave.util.lru import Lru

log = logging.getLogger("medclave.mesh")

Revoked = Mapping[str, frozenset[str]]  # kind -> revoked values (kbs/revocation.py kinds)
# A session is offered for resumption only while its server certificate has this long to run.
RESUME_MARGIN = timedelta(seconds=1)


class DenyList:
    """The tenant's revoked identities, refreshed from the CA (``fetch``) every ``interval``.

    Fails closed: when no refresh has succeeded for ``max_age`` seconds every peer is refused
    (``mesh.denylist_stale``), so blocking the CA cannot keep a revoked workload connected;
    ``max_age`` bounds how long a revocation can go unnoticed.
    """

    def __init__(self, fetch: Callable[[], Revoked], *, interval: float = 30.0,
                 max_age: float = 300.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._interval = interval
        self._max_age = max_age
        self._monotonic = monotonic
        self._revoked: Revoked = {}
        self._fetched_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        revoked = self._fetch()
        self._revoked = {k: frozenset(v) for k, v in revoked.items()}
        self._fetched_at = self._monotonic()

    def check(self, peer: PeerCert) -> None:
        if self._fetched_at is None or self._monotonic() - self._fetched_at > self._max_age:
            raise MeshError("mesh.denylist_stale", "no current deny list from the mesh CA")
        for kind, values in peer.claims.items():
            hit = values & self._revoked.get(kind, frozenset())
            if hit:
                raise MeshError("mesh.peer_revoked", f"{peer.identity}: {kind} "
                                                     f"{sorted(hit)[0][:24]} revoked")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="medclave-mesh-deny",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except MedclaveError as exc:
                log.warning("mesh deny list refresh failed: %s", exc.code)
            except Exception as exc:  # the thread must not die silently
                log.error("mesh deny list refresh failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _load_chain(context: ssl.SSLContext, key: ec.EllipticCurvePrivateKey,
                chain_pem: bytes) -> None:
    # ssl loads certificates and keys from files only: a private directory, removed at once.
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with tempfile.TemporaryDirectory(prefix="medclave-mesh-") as folder:
        path = Path(folder) / "identity.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem + chain_pem)
        context.load_cert_chain(path)


class _SessionSocket(ssl.SSLSocket):
    """Keeps its TLS 1.3 ticket when closed (it arrives after the handshake, with data)."""

    _medclave_keep: Callable[[ssl.SSLSession], None] | None = None

    def close(self) -> None:
        keep = self._medclave_keep
        if keep is not None and getattr(self, "_sslobj", None) is not None:
            session = self.session
            if session is not None and session.has_ticket:
                keep(session)
        super().close()


class _ClientFacade(ssl.SSLContext):
    """What httpx is given: every ``wrap_socket`` uses the workload's current client context
    and checks the server's identity before returning the socket."""

    _mesh: MeshTls
    _expect_role: str | None
    _to_ca: bool
    _server_name: str | None
    _expect_name: str | None

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        return self._mesh._connect(sock, self._server_name or server_hostname,
                                   self._expect_role, self._to_ca, self._expect_name)


class MeshTls:
    """One workload's side of the mesh (module docstring)."""

    def __init__(self, identity: WorkloadId, *, ca_pem: bytes, policy: SegmentationPolicy,
                 deny: DenyList | None = None, clock: Clock = system_clock,
                 resumption: bool = True) -> None:
        if identity.tenant != policy.trust_domain:
            raise MeshError("mesh.identity_invalid", f"{identity} is outside trust domain "
                                                     f"{policy.trust_domain}")
        self.identity = identity
        self.policy = policy
        self.deny = deny
        self._ca = ca_pem.decode()
        self._clock = clock
        self._resumption = resumption
        self._lock = threading.Lock()
        self._server: ssl.SSLContext | None = None  # current
        self._client: ssl.SSLContext | None = None  # current
        # server -> (its last TLS 1.3 session, when the server certificate in it expires)
        self._sessions: dict[tuple[str, Any], tuple[ssl.SSLSession, datetime]] = {}
        self._identity: tuple[ec.EllipticCurvePrivateKey, bytes] | None = None
        self._parsed: Lru[bytes, PeerCert] = Lru(1024)
        self.not_after: datetime | None = None
        self.rotations = 0
        self._listeners: list[Callable[[ec.EllipticCurvePrivateKey, bytes], None]] = []
        # Before the first certificate: server authentication only, to reach the CA.
        self._bootstrap = self._context(ssl.PROTOCOL_TLS_CLIENT)

    # --- certificate ------------------------------------------------------------------------

    def install(self, key: ec.EllipticCurvePrivateKey, chain_pem: bytes,
                not_after: datetime) -> None:
        """Use this key and certificate for every new handshake from now on."""
        server = self._context(ssl.PROTOCOL_TLS_SERVER)
        client = self._context(ssl.PROTOCOL_TLS_CLIENT)
        _load_chain(server, key, chain_pem)
        _load_chain(client, key, chain_pem)
        with self._lock:
            self._server, self._client = server, client
            self._identity = (key, chain_pem)
            self._sessions.clear()  # tickets belong to the context that took them
            self.not_after = not_after
            self.rotations += 1
            listeners = list(self._listeners)
        for listener in listeners:  # outside the lock: a listener may ask for the identity
            listener(key, chain_pem)

    def subscribe(self, listener: Callable[[ec.EllipticCurvePrivateKey, bytes], None]) -> None:
        """Call ``listener(key, chain_pem)`` with the current certificate (if any) and after
        every :meth:`install` (mesh/database.py: libpq's certificate files)."""
        with self._lock:
            self._listeners.append(listener)
            current = self._identity
        if current is not None:
            listener(*current)

    def _context(self, protocol: int) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_verify_locations(cadata=self._ca)
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            context.check_hostname = False  # the identity URI is checked instead
            context.sslsocket_class = _SessionSocket
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _current(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        with self._lock:
            if self._server is None or self._client is None:
                raise MeshError("mesh.peer_unauthenticated", "this workload has no certificate yet")
            return self._server, self._client

    # --- server side ------------------------------------------------------------------------

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        """The context a server listens with; it follows every later :meth:`install`.
        ``require_client_cert=False`` lets peers without a certificate finish the handshake
        (a service's open bootstrap routes); their requests are then gated by path.

        OpenSSL keeps the verify mode of this base context and decrypts session tickets with
        its keys (``SSL_set_SSL_CTX`` moves only the certificate), so resumption survives a
        rotation on the server side."""
        with self._lock:
            identity = self._identity
        if identity is None:
            raise MeshError("mesh.peer_unauthenticated", "this workload has no certificate yet")
        base = self._context(ssl.PROTOCOL_TLS_SERVER)
        if not require_client_cert:
            base.verify_mode = ssl.CERT_OPTIONAL
        _load_chain(base, *identity)  # a context with no certificate fails before the callback

        def follow(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None,
                   _: ssl.SSLContext) -> None:
            server, _client = self._current()
            obj.context = server

        base.sni_callback = follow
        return base

    def check_peer(self, der: bytes | None, *, inbound: bool,
                   expect_role: str | None = None, to_ca: bool = False) -> PeerCert:
        """The peer's identity if this connection may go on; else ``mesh.*`` refusals.
        ``to_ca``: the peer is the mesh CA (the broker), which every workload may reach for
        its certificate and deny list whatever the segmentation policy says (like Contrast's
        coordinator); its role and trust domain are still checked."""
        peer = self.identify(der, deny=not to_ca)  # the CA is where the deny list comes from
        self.allow(peer, inbound=inbound, expect_role=expect_role, to_ca=to_ca)
        return peer

    def identify(self, der: bytes | None, *, deny: bool = True) -> PeerCert:
        """Who the peer is, if its certificate (chain-verified by TLS) is current and not
        revoked; the policy is not asked yet."""
        if der is None:
            raise MeshError("mesh.peer_unauthenticated", "the peer presented no certificate")
        # Parsed once per certificate (a peer reconnects with the same one until it rotates);
        # expiry and the deny list are checked every time.
        digest = hashlib.sha256(der).digest()
        peer = self._parsed.get(digest)
        if peer is None:
            peer = PeerCert.from_der(der)
            self._parsed.put(digest, peer)
        if peer.not_after <= self._clock():  # a resumed session outliving its certificate
            raise MeshError("mesh.peer_unauthenticated", f"{peer.identity}: certificate expired")
        if deny and self.deny is not None:
            self.deny.check(peer)
        return peer

    def allow(self, peer: PeerCert, *, inbound: bool, expect_role: str | None = None,
              to_ca: bool = False) -> None:
        """Whether the segmentation policy lets this identified peer and me talk."""
        if expect_role is not None and peer.identity.role != expect_role:
            raise MeshError("mesh.peer_not_allowed", f"expected a {expect_role}, "
                                                     f"met {peer.identity}")
        if to_ca:
            if peer.identity.tenant != self.policy.trust_domain:
                raise MeshError("mesh.peer_not_allowed", f"{peer.identity} is not this mesh's CA")
            return
        self.policy.check(peer.identity, me=self.identity, inbound=inbound)

    # --- client side ------------------------------------------------------------------------

    def client_context(self, expect_role: str | None = None, *, to_ca: bool = False,
                       server_name: str | None = None,
                       expect_name: str | None = None) -> ssl.SSLContext:
        """An SSLContext for httpx (``verify=``) to reach a service of ``expect_role``;
        ``to_ca``: the mesh CA's routes on the broker, reachable before this workload has a
        certificate (it then presents none).

        ``server_name``: the SNI sent instead of the URL's host (a TLS-passthrough balancer
        routes on it, ``ops/balancer.py``); ``expect_name``: the one workload this context
        may reach, ``medclave://TENANT/ROLE/expect_name`` (an enclave replica): any other
        peer, however allowed by the policy, is refused with ``mesh.peer_unexpected`` before a
        byte of the request is sent, so a balancer that routes elsewhere is caught."""
        facade = _ClientFacade(ssl.PROTOCOL_TLS_CLIENT)
        facade._mesh = self
        facade._expect_role = "broker" if to_ca else expect_role
        facade._to_ca = to_ca
        facade._server_name = server_name
        facade._expect_name = expect_name
        return facade

    def _connect(self, sock: socket.socket, server_hostname: str | bytes | None,
                 expect_role: str | None, to_ca: bool,
                 expect_name: str | None = None) -> ssl.SSLSocket:
        """The TLS socket to a checked peer. Every refusal here comes before a byte of a
        request left (``sent=False``: a caller may try another replica)."""
        with self._lock:
            current = self._client
        if current is None and to_ca:
            current = self._bootstrap
        if current is None:
            raise MeshError("mesh.peer_unauthenticated", "this workload has no certificate yet")
        context = current
        try:
            key = (str(server_hostname), sock.getpeername())
        except OSError:
            key = (str(server_hostname), None)
        with self._lock:
            kept = self._sessions.get(key) if self._resumption else None
        # A resumed session carries the server certificate of its full handshake: once that
        # certificate is about to expire, a full handshake fetches the server's current one.
        session = kept[0] if kept is not None and kept[1] > self._clock() + RESUME_MARGIN \
            else None
        try:
            tls = context.wrap_socket(sock, server_hostname=server_hostname, session=session)
        except ssl.SSLError as exc:
            # Also what a TLS-passthrough balancer that reached no server looks like: it
            # closes the connection during the handshake (docs/scaling-out.md).
            raise MeshError("mesh.handshake_failed", f"TLS handshake failed: {exc}",
                            sent=False) from exc
        try:
            peer = self.check_peer(tls.getpeercert(binary_form=True), inbound=False,
                                   expect_role=expect_role, to_ca=to_ca)
            if expect_name is not None and peer.identity.name != expect_name:
                raise MeshError("mesh.peer_unexpected", f"meant {expect_role or 'a'} "
                                f"{expect_name!r}, met {peer.identity}")
        except MeshError as exc:
            tls.close()
            exc.context.setdefault("sent", False)
            raise
        if self._resumption and isinstance(tls, _SessionSocket):
            def keep(session: ssl.SSLSession, _context: ssl.SSLContext = context) -> None:
                with self._lock:
                    if self._client is _context:  # not from before a rotation
                        self._sessions[key] = (session, peer.not_after)
            tls._medclave_keep = keep
        return tls
