"""Opening a PostgreSQL connection pool (psycopg 3 + psycopg_pool) from a ``postgresql://`` URL."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from medclave.errors import InputError, ServiceError

if TYPE_CHECKING:  # psycopg is the `postgres` extra: settings check URLs without it
    from psycopg_pool import ConnectionPool

SCHEMES = ("postgresql", "postgres")

# Client TLS for a store URL: libpq's ssl* connection parameters, asked again for every new
# connection, so a rotated client certificate is used from the next one on
# (mesh/database.py registers the enclave's workload certificate here).
TlsParams = Callable[[], dict[str, str]]
_TLS: dict[str, tuple[TlsParams, float]] = {}
_TLS_LOCK = threading.Lock()


def use_client_tls(url: str, params: TlsParams, *, max_lifetime: float = 300.0
                   ) -> Callable[[], None]:
    """Every pool opened for ``url`` from now on connects with ``params()`` (TLS), and
    replaces each connection after ``max_lifetime`` seconds: the server checks a client
    certificate only at connection time, so an open connection must not outlive its
    certificate's rotation by long. Returns the function that undoes it. A URL already given
    other parameters is ``config.invalid``: two workloads in one process must not share a
    database URL with different identities."""
    with _TLS_LOCK:
        if url in _TLS and _TLS[url][0] is not params:
            raise InputError("config.invalid", f"store {redacted(url)} already has client TLS")
        _TLS[url] = (params, max_lifetime)

    def undo() -> None:
        with _TLS_LOCK:
            if url in _TLS and _TLS[url][0] is params:
                del _TLS[url]
    return undo


def is_postgres_url(store: str) -> bool:
    """Whether a ``store`` setting names PostgreSQL (else it is a SQLite path)."""
    return urlsplit(store).scheme in SCHEMES


def store_setting(value: str, *, names: tuple[str, ...]) -> str:
    """A ``store`` setting's validator: one of ``names`` (the embedded backends) or a
    ``postgresql://`` URL; ``ValueError`` otherwise, so a settings model refuses it at start."""
    if value in names or is_postgres_url(value):
        return value
    either = f"{', '.join(names)} or " if names else ""
    raise ValueError(f"store must be {either}a postgresql:// URL, not {redacted(value)!r}")


def redacted(url: str) -> str:
    """``url`` without its password: what logs, errors and ``config show`` may print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def _hosts(url: str) -> list[str]:
    """Every host the URL may connect to: the netloc's and any ``host=`` query parameters
    (libpq accepts both, comma-separated lists included); a ``/path`` host is a Unix socket."""
    parts = urlsplit(url)
    hosts: list[str] = []
    if parts.hostname:
        hosts.append(parts.hostname)
    for value in parse_qs(parts.query).get("host", []) + parse_qs(parts.query).get("hostaddr", []):
        hosts.extend(h for h in value.split(",") if h)
    return hosts


def check_local(url: str) -> None:
    """Refuse (``config.invalid``) a URL whose hosts are not a Unix socket or loopback.

    With no host at all libpq uses its default Unix socket, which is local too."""
    for host in _hosts(url):
        if host.startswith("/") or host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host.strip("[]")).is_loopback:
                continue
        except ValueError:
            pass
        raise InputError("config.invalid",
                         f"store {redacted(url)}: host {host!r} is not local; set "
                         "allow_remote to reach a database on the deployment's network")


def open_pool(url: str, *, min_size: int = 1, max_size: int = 8, allow_remote: bool = False,
              timeout: float = 10.0) -> ConnectionPool:
    """A started pool for ``url``; ``service.start_failed`` when the database cannot be reached.

    Connections are in autocommit mode: each store opens its own transactions
    (``with conn.transaction():``), so a statement never sits in an implicit one holding locks."""
    if not is_postgres_url(url):
        raise InputError("config.invalid", "store is not a postgresql:// URL")
    try:
        from psycopg_pool import ConnectionPool
    except ImportError as exc:  # pragma: no cover - the `postgres` extra installs it
        raise InputError("config.invalid", "a postgresql:// store needs the `postgres` extra "
                         "(psycopg)") from exc
    if not allow_remote:
        check_local(url)
    with _TLS_LOCK:
        tls = _TLS.get(url)
    kwargs: dict[str, Any] | Callable[[], dict[str, Any]] = {"autocommit": True}
    max_lifetime = 3600.0  # psycopg_pool's default
    if tls is not None:
        hosts = _hosts(url)
        if not hosts or any(h.startswith("/") for h in hosts):
            # libpq never uses TLS on a Unix socket: the client certificate would be ignored
            raise InputError("config.invalid", f"store {redacted(url)}: mutual TLS needs a "
                             "TCP host, not a Unix socket")
        params, max_lifetime = tls
        kwargs = lambda: {"autocommit": True, **params()}  # noqa: E731
    pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                          kwargs=kwargs, timeout=timeout, name="medclave", max_lifetime=max_lifetime)
    try:
        pool.open(wait=True, timeout=timeout)
    except Exception as exc:
        pool.close()
        raise ServiceError("service.start_failed",
                           f"database {redacted(url)} unreachable: {type(exc).__name__}") from exc
    return pool
