"""The DDL of earlier releases, verbatim, to build the databases an upgrade meets: each store's
tables exactly as the release before versioned migrations wrote them. Kept here as text (never
derived from the code under test), so a change to the current schema cannot change them."""

# medclave.kbs.sqlite_store: the tables every release before versions wrote alike (all but
# decisions, which each schema below spells out as it was).
_KBS_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owner_tokens (
    token_hash BLOB PRIMARY KEY, owner TEXT NOT NULL, created TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS owner_tokens_owner ON owner_tokens (owner);
CREATE TABLE IF NOT EXISTS resources (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, current INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS secret_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, wrapped BLOB NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, current INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS policy_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, document TEXT NOT NULL, digest TEXT NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS nonces (
    nonce BLOB PRIMARY KEY, expires_at REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at);
"""

# medclave.kbs.sqlite_store, schema 1 before the actor column (meta schema '1').
KBS_SCHEMA_1_BEFORE_ACTOR = _KBS_TABLES + """CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, action TEXT NOT NULL,
    resource TEXT NOT NULL, owner TEXT NOT NULL, outcome TEXT NOT NULL, client TEXT NOT NULL,
    code TEXT, version INTEGER, detail TEXT NOT NULL, policy_digest TEXT NOT NULL,
    evidence_sha256 TEXT NOT NULL, checks TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_owner ON decisions (owner, id);
INSERT OR IGNORE INTO meta VALUES ('schema', '1');
"""

# medclave.kbs.sqlite_store, schema 2 (decision-log retention), the last release without
# schema_version: the tables of schema 1 with actor, then the columns and indexes added.
KBS_SCHEMA_2 = _KBS_TABLES + """CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, action TEXT NOT NULL,
    resource TEXT NOT NULL, owner TEXT NOT NULL, outcome TEXT NOT NULL, client TEXT NOT NULL,
    code TEXT, version INTEGER, detail TEXT NOT NULL, policy_digest TEXT NOT NULL,
    evidence_sha256 TEXT NOT NULL, checks TEXT NOT NULL, actor TEXT NOT NULL DEFAULT '',
    count INTEGER NOT NULL DEFAULT 1, bucket TEXT);
CREATE INDEX IF NOT EXISTS decisions_owner ON decisions (owner, id);
CREATE INDEX IF NOT EXISTS decisions_actor ON decisions (actor, id);
CREATE UNIQUE INDEX IF NOT EXISTS decisions_aggregate
    ON decisions (bucket, action, resource, code, client) WHERE bucket IS NOT NULL;
CREATE INDEX IF NOT EXISTS decisions_aggregated ON decisions (id) WHERE bucket IS NOT NULL;
INSERT OR REPLACE INTO meta VALUES ('schema', '2');
"""

# medclave.audit.store.SqliteLogStore before versions (no schema_version, no meta row for it).
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries(idx INTEGER PRIMARY KEY, leaf BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes(id INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints(size INTEGER PRIMARY KEY, note BLOB NOT NULL);
""" + "".join(
    f"CREATE TRIGGER IF NOT EXISTS {t}_append_only_{op} BEFORE {op.upper()} ON {t} "
    f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;\n"
    for t in ("entries", "nodes", "checkpoints") for op in ("update", "delete"))

# medclave.client.apikeys before versions.
APIKEYS_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    roles TEXT NOT NULL,
    tenant TEXT,
    created TEXT NOT NULL,
    revoked TEXT
);
"""

# medclave.auth.replay.SqliteReplayCache before versions.
REPLAY_SCHEMA = "CREATE TABLE IF NOT EXISTS replay (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
