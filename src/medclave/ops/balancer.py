"""An HAProxy configuration for enclave replicas behind one address (docs/scaling-out.md).

The balancer is the operator's and is trusted with nothing: it carries OHTTP ciphertext and
the attestation answers, and reads two headers outside the encapsulation
(``protocol/inference.py``):

* ``medclave-replica: NAME`` picks the replica's own backend (``use_backend``), so a replica's
  evidence, its key configuration and the requests encapsulated to that key all reach the one
  replica they belong to. A request without the header is balanced round robin (clients that
  attest and send in one go, e.g. the SDK against a single-key deployment, are not among them:
  a request opens only on the replica whose key it was encapsulated to). An unknown name is
  answered 503 without forwarding.
* ``medclave-not-forwarded: 1`` marks every error HAProxy makes itself for these backends
  (``http-error``, HAProxy 2.2+) — the 503 it answers when it could connect to no server
  (refused or reset during the handshake, after ``retries``; or the server is down by its
  health check; or the queue timed out). A request so answered never reached a replica, and the
  proxy sends it to another (``client/replicas.py``). HAProxy retries only connection failures
  by default (``retry-on conn-failure``), never a request a server has begun to receive, and
  its 502 (the server closed or reset mid-request) and 504 (server timeout) are not marked: the
  proxy never retries those.

With attested micro-segmentation (``tls_passthrough=True``) the proxy's mutual TLS must end at
the replica, so the balancer cannot read a header: it runs ``mode tcp`` and routes on the TLS
ClientHello's server name (``req.ssl_sni``, NAME + ``REPLICA_SNI_SUFFIX``), waiting for the
hello (``tcp-request inspect-delay``, ``req.ssl_hello_type 1``) and closing any connection that
is not TLS or names no known replica; it never terminates TLS. It cannot add a header there, so
"not forwarded" is what the proxy sees itself: the balancer that reaches no server of the
replica closes the connection before the TLS handshake with the replica completed, and a
request goes after that handshake only (``mesh/tls.py``). The proxy checks that the peer's
workload identity names the replica it meant (``mesh.peer_unexpected`` otherwise), so a
balancer that sends one replica's name to another is caught before anything is sent.

Why a rendered file rather than a template in ``deploy/``: the replica list, the ports and the
``acl`` that refuses unknown names must agree, and a function keeps them in one place for the
tests, the benchmark and ``medclave proxy balancer-config``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from medclave.errors import InputError
from medclave.protocol import inference as proto

_HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,253}$")  # a name or an address; nothing HAProxy parses


def _address(host: str, port: int) -> str:
    if _HOST.fullmatch(host) is None or not 0 < port < 65536:
        raise InputError("config.invalid", f"not a balancer address: {host!r}:{port}")
    return f"{host}:{port}"


def haproxy_config(listen: tuple[str, int], replicas: Mapping[str, tuple[str, int]], *,
                   connect_timeout_s: float = 1.0, server_timeout_s: float = 330.0,
                   check_interval_ms: int = 1000, log_requests: bool = True,
                   tls_passthrough: bool = False) -> str:
    """The configuration for HAProxy in front of ``replicas`` (name → host, port), listening
    on ``listen``. ``log_requests``: one line per request on stdout, ``backend server status
    method path`` (no query, no header, nothing of the content: there is none in clear); with
    ``tls_passthrough`` (the mesh: ``mode tcp``, routed on the SNI) one per connection,
    ``backend server termination-state bytes-up bytes-down``."""
    if not replicas:
        raise InputError("config.invalid", "no replica to balance")
    for name in replicas:
        if re.fullmatch(proto.REPLICA_NAME_PATTERN, name) is None:
            raise InputError("config.invalid", f"replica name {name!r} must match "
                             f"{proto.REPLICA_NAME_PATTERN}")
    if tls_passthrough:
        return _tcp_config(listen, replicas, connect_timeout_s=connect_timeout_s,
                           server_timeout_s=server_timeout_s,
                           check_interval_ms=check_interval_ms, log_requests=log_requests)
    header = proto.REPLICA_HEADER
    mark = proto.NOT_FORWARDED_HEADER
    names = " ".join(replicas)
    lines = [
        "# Medclave enclave replicas (rendered by medclave.ops.balancer; docs/scaling-out.md).",
        "global",
        "    log stdout format raw local0",
        "defaults",
        "    mode http",
        "    log global",
        '    log-format "%b %s %ST %HM %HP"',
        f"    timeout connect {int(connect_timeout_s * 1000)}ms",
        f"    timeout client {int(server_timeout_s * 1000)}ms",
        f"    timeout server {int(server_timeout_s * 1000)}ms",
        "    timeout queue 5s",
        "    timeout http-request 10s",
        "    retries 1",
        # A replica whose name does not resolve yet (a pod not yet scheduled) is down, not
        # fatal: HAProxy starts and serves the others.
        "    default-server init-addr last,libc,none",
        # Every error HAProxy makes itself says it forwarded nothing: the 503s (see above).
        f'    http-error status 503 content-type text/plain string "no replica reachable" '
        f"hdr {mark} 1",
        "frontend enclaves",
        f"    bind {_address(*listen)}",
        f"    acl named req.hdr({header}) -m found",
        f"    acl known req.hdr({header}) -m str {names}",
        f'    http-request return status 503 content-type text/plain string "unknown replica" '
        f"hdr {mark} 1 if named !known",
    ]
    if not log_requests:
        lines.insert(lines.index("defaults") + 2, "    option dontlog-normal")
    for name in replicas:
        lines.append(f"    use_backend replica-{name} if {{ req.hdr({header}) -m str {name} }}")
    lines.append("    default_backend replicas")
    check = f"check inter {check_interval_ms} fall 2 rise 1"
    for name, (host, port) in replicas.items():
        lines += [f"backend replica-{name}", "    option httpchk GET /healthz",
                  f"    server {name} {_address(host, port)} {check}"]
    lines += ["backend replicas", "    balance roundrobin", "    option httpchk GET /healthz"]
    lines += [f"    server {name} {_address(host, port)} {check}"
              for name, (host, port) in replicas.items()]
    return "\n".join(lines) + "\n"


def _tcp_config(listen: tuple[str, int], replicas: Mapping[str, tuple[str, int]], *,
                connect_timeout_s: float, server_timeout_s: float, check_interval_ms: int,
                log_requests: bool) -> str:
    """TLS passthrough (module docstring): one backend per replica, chosen by the SNI."""
    names = " ".join(proto.replica_server_name(n) for n in replicas)
    lines = [
        "# Medclave enclave replicas, TLS passthrough for the mesh (rendered by "
        "medclave.ops.balancer; docs/scaling-out.md).",
        "global",
        "    log stdout format raw local0",
        "defaults",
        "    mode tcp",
        "    log global",
        # %ts: how the connection ended (e.g. "SC": the server refused it); %U/%B: bytes from
        # the proxy and from the replica: ciphertext sizes, as the network always saw.
        '    log-format "%b %s %ts %U %B"',
        f"    timeout connect {int(connect_timeout_s * 1000)}ms",
        f"    timeout client {int(server_timeout_s * 1000)}ms",
        f"    timeout server {int(server_timeout_s * 1000)}ms",
        "    timeout queue 5s",
        # Only connection failures are retried (HAProxy's tcp mode cannot retry anything
        # else): nothing of the proxy's was forwarded before the connection to a server opened.
        "    retries 1",
        "    default-server init-addr last,libc,none",
        "frontend enclaves",
        f"    bind {_address(*listen)}",
        # Wait for the whole ClientHello (the SNI is in it), then route on it; a connection
        # that is not TLS, or names no known replica, is closed (nothing is forwarded).
        "    tcp-request inspect-delay 5s",
        "    tcp-request content reject unless { req.ssl_hello_type 1 }",
        f"    tcp-request content reject unless {{ req.ssl_sni -i {names} }}",
    ]
    if not log_requests:
        lines.insert(lines.index("defaults") + 2, "    option dontlog-normal")
    for name in replicas:
        lines.append(f"    use_backend replica-{name} if "
                     f"{{ req.ssl_sni -i {proto.replica_server_name(name)} }}")
    # A TCP connect check: the replica's mutual TLS lets nothing without a workload
    # certificate further, and the balancer holds none.
    check = f"check inter {check_interval_ms} fall 2 rise 1"
    for name, (host, port) in replicas.items():
        lines += [f"backend replica-{name}", f"    server {name} {_address(host, port)} {check}"]
    return "\n".join(lines) + "\n"
