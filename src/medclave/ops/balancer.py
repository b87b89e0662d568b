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
                   check_interval_ms: int = 1000, log_requests: bool = True) -> str:
    """The configuration for HAProxy in front of ``replicas`` (name → host, port), listening
    on ``listen``. ``log_requests``: one line per request on stdout, ``backend server status
    method path`` (no query, no header, nothing of the content: there is none in clear)."""
    if not replicas:
        raise InputError("config.invalid", "no replica to balance")
    for name in replicas:
        if re.fullmatch(proto.REPLICA_NAME_PATTERN, name) is None:
            raise InputError("config.invalid", f"replica name {name!r} must match "
                             f"{proto.REPLICA_NAME_PATTERN}")
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
