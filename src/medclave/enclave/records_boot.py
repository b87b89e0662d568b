"""Records retrieval at boot: the tenants' data keys, the sealed store, the index rebuilt.

A tenant's data key is released by the key broker as ``kbs:///TENANT/data-key/records`` under
the tenant's own release policy, through the same attested, signed release as the commitment
keys (:func:`medclave.enclave.commitkeys.broker_fetcher`'s path: fresh evidence over the
service's runtime, the broker's Ed25519 signature checked against the pinned broker keys before
the secret is opened). On sim, a local 0600 file may stand in (development only; refused on a
TEE). Every tenant already in the store is opened at boot: a row that does not authenticate
stops the boot with ``records.store_tampered`` (fail closed: a store the operator edited is not
served from).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from medclave.auth.authorizer import Authorizer, DecisionRecord
from medclave.auth.breakglass import BreakGlass
from medclave.enclave.attester import HostPlatform
from medclave.enclave.commitkeys import BrokerCommitKeys, CommitKey, read_key_file
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import InputError, RecordsError
from medclave.kbs.client import KbsClient
from medclave.kbs.names import ResourceName
from medclave.records.embed import Embedder
from medclave.records.pgstore import PostgresRecordStore
from medclave.records.service import KeySource, RecordsService
from medclave.records.store import MemoryRecordStore, RecordStore, SqliteRecordStore
from medclave.util.clock import Clock

log = logging.getLogger("medclave.enclave")

RESOURCE_TYPE = "data-key"
RESOURCE_NAME = "records"


def data_key_resource(tenant: str) -> str:
    """``kbs:///TENANT/data-key/records``."""
    return str(ResourceName.of(tenant, RESOURCE_TYPE, RESOURCE_NAME))


def data_keys(settings: EnclaveSettings, platform: HostPlatform,
              client: Callable[[Mapping[str, Any]], KbsClient] | None,
              runtime: Callable[[], dict[str, Any]], clock: Clock) -> KeySource:
    if settings.records_key_file is not None:
        if platform.secure:
            raise InputError("config.invalid", "records_key_file is for development on sim; on "
                             "a TEE the tenant's data key comes from the key broker (kbs_url)")
        log.warning("records are sealed under the development key file %s for every tenant",
                    settings.records_key_file.name)
        key = read_key_file(settings.records_key_file)
        return lambda tenant: key
    if client is None:
        def refuse(tenant: str) -> bytes:
            raise RecordsError("records.key_unavailable", "no data key source: set kbs_url (or, "
                               "on sim, records_key_file)")
        return refuse
    opener = client

    def fetch(tenant: str) -> CommitKey:
        with opener(runtime()) as kbs:
            released = kbs.fetch_release(data_key_resource(tenant))
        return CommitKey(released.secret, released.version)

    # The commitment keys' cache: one attested fetch per tenant, refusals remembered a while.
    cache = BrokerCommitKeys(fetch, clock=clock, retry_after=timedelta(
        seconds=settings.commitment_key_retry_seconds), parse=bytes, what="records data key")
    return lambda tenant: cache.key_for(tenant).key


def build_records(settings: EnclaveSettings, keys: KeySource, clock: Clock) -> RecordsService:
    store: RecordStore
    backend = settings.backend(settings.records_store)
    if backend == "memory":
        store = MemoryRecordStore()
    elif backend == "sqlite":
        store = SqliteRecordStore(Path(settings.data_dir) / "records" / "records.sqlite3")
    else:
        store = PostgresRecordStore(backend, allow_remote=settings.store_allow_remote)

    def authorizer(sink: Callable[[DecisionRecord], None]) -> Authorizer:
        return Authorizer(settings.auth_policies_dir, sink=sink, clock=clock,
                          break_glass=BreakGlass(max_ttl=timedelta(hours=4)))

    service = RecordsService(store, Embedder(threads=settings.embedding_threads), keys,
                             authorizer_factory=authorizer, clock=clock)
    try:
        service.rebuild()
    except BaseException:
        store.close()
        raise
    return service
