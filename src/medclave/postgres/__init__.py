"""PostgreSQL behind the store interfaces (issue 17): one way to open it, one migration discipline.

A deployment chooses its stores with one setting, ``store``: a folder of SQLite files (the embedded
default, one machine, ``make demo``) or a ``postgresql://`` URL shared by every replica. This package
is what the PostgreSQL implementations share:

- :func:`is_postgres_url` / :func:`open_pool`: a psycopg 3 connection pool, refused for any host
  that is not the local socket or loopback unless the operator says otherwise
  (``allow_remote=True``: a managed database reached over the network must be on the deployment's
  own segment; the default stays local so a typo cannot send data elsewhere);
- :func:`use_client_tls`: client TLS parameters for every pool of one URL, asked per new
  connection (the enclave's workload certificate in a mesh, ``mesh.database``);
- :mod:`medclave.postgres.migrations`: versioned schema migrations with the same discipline as
  :mod:`medclave.migrations` for SQLite (read the version first, refuse a newer one untouched,
  migrate forward in one transaction under an advisory lock so two replicas starting together
  do not race).
"""

from medclave.postgres.pool import (
    is_postgres_url,
    open_pool,
    redacted,
    store_setting,
    use_client_tls,
)

__all__ = ["is_postgres_url", "open_pool", "redacted", "store_setting", "use_client_tls"]
