"""Boot with a sealed model: the enclave attests to the key broker, receives the model key only
under the vendor's release policy, unseals into memory and serves; a wrong enclave gets no key."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from medclave.attestation.policy import AppraisalPolicy
from medclave.attestation.sim import SimAuthority
from medclave.audit import open_commitment, parse_entry
from medclave.background import BackgroundServer
from medclave.client import MedclaveClient
from medclave.enclave.app import create_app as create_enclave_app
from medclave.enclave.boot import boot
from medclave.enclave.commitkeys import commitment_resource
from medclave.enclave.model import DEFAULT_MODEL_ID, DEFAULT_MODEL_SHA256, default_model_path
from medclave.enclave.openai_api import commitment_input
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import MedclaveError
from medclave.kbs.app import create_app
from medclave.kbs.client import OwnerClient
from medclave.kbs.factory import build_broker, open_signer
from medclave.kbs.keywrap import AesGcmKek
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.sealed_models import seal_model
from medclave.kbs.settings import KbsSettings
from medclave.kbs.store import MemoryKbsStore
from tests.e2e.helpers import MEASUREMENT, sim_policy

VENDOR = "test-vendor"
TENANT = "default"  # the tenant of every caller when authorization is off (sim only)
TENANT_KEY = hashlib.sha256(b"the default tenant's commitment key").hexdigest().encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """A broker holding the key of the sealed bundled model, released to MEASUREMENT only."""
    folder = tmp_path_factory.mktemp("sealed")
    root = SimAuthority.load_or_create(folder / "enclave").root_fingerprint
    settings = KbsSettings(data_dir=folder / "kbs", store="memory", sim_roots=(root,),
                           rate_per_second=1000.0, rate_burst=1000)
    broker = build_broker(settings, store=MemoryKbsStore(), wrapper=AesGcmKek(os.urandom(32)))
    with BackgroundServer(create_app(settings, broker=broker)) as server:
        with OwnerClient(server.url, broker.issue_owner_token(VENDOR)) as owner:
            result = seal_model(default_model_path(), folder / "sealed", owner=VENDOR,
                                broker=owner, kbs_url=server.url)
            assert result.key_ref is not None
            appraisal = AppraisalPolicy.model_validate({
                "platforms": ["sim"],
                "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT]}}}})
            owner.set_policy(result.key_ref.resource, ReleasePolicy(
                appraisal=appraisal, model_digests=(DEFAULT_MODEL_SHA256,)))
        # The (insecure_no_auth) enclave's one tenant keeps its audit commitment key there too.
        with OwnerClient(server.url, broker.issue_owner_token(TENANT)) as tenant:
            tenant.put(commitment_resource(TENANT), TENANT_KEY)
            tenant.set_policy(commitment_resource(TENANT), ReleasePolicy(
                appraisal=appraisal, model_digests=(DEFAULT_MODEL_SHA256,)))
        yield folder, server.url, root


def _settings(folder: Path, kbs: str, measurement: str) -> EnclaveSettings:
    # The broker's public key, as its administrator hands it out (`medclave kbs key show`).
    signer = open_signer(KbsSettings(data_dir=folder / "kbs"), create=False)
    return EnclaveSettings(data_dir=folder / "enclave", platform="sim", sim_measurement=measurement,
                           sealed_model=folder / "sealed", kbs_url=kbs, insecure_no_auth=True,
                           audit_store="memory", kbs_keys=(signer.public_key.hex(),))


def test_the_sealed_model_opens_only_in_the_attested_enclave(world: tuple[Path, str, str]
                                                            ) -> None:
    folder, kbs, root = world
    booted = boot(_settings(folder, kbs, MEASUREMENT))
    try:
        assert booted.model_digest == DEFAULT_MODEL_SHA256
        assert booted.service.runtime()["model_digest"] == DEFAULT_MODEL_SHA256
        with BackgroundServer(create_enclave_app(booted.service)) as server, \
                MedclaveClient(server.url, policy=sim_policy(), sim_roots=[root]) as client:
            done = client.chat.completions.create(
                model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": "Say hello."}],
                max_tokens=4, temperature=0)
            answer = done.choices[0].message.content
            assert answer
        # The entry's commitments open with the key the tenant registered, and only with it.
        log = booted.service.audit.audit_log  # type: ignore[attr-defined]
        entry = parse_entry(log.entry(log.size - 1))
        prompt = commitment_input([{"role": "user", "content": "Say hello."}])
        assert entry.prompt is not None and entry.answer is not None
        open_commitment(TENANT_KEY, "prompt", entry.salt, prompt, entry.prompt)
        open_commitment(TENANT_KEY, "answer", entry.salt, answer.encode(), entry.answer)
        # Plaintext weights lived in an anonymous memory file only.
        assert not any(p.suffix == ".gguf" for p in folder.rglob("*"))
    finally:
        booted.close()


def test_another_enclave_gets_no_key_and_does_not_boot(world: tuple[Path, str, str]) -> None:
    folder, kbs, _ = world
    other = hashlib.sha384(b"an enclave build the vendor never approved").hexdigest()
    with pytest.raises(MedclaveError) as caught:
        boot(_settings(folder, kbs, other))
    assert caught.value.code == "attestation.measurement_mismatch"


def test_a_sealed_model_reaches_the_engine_the_enclave_starts_only_in_memory(
        world: tuple[Path, str, str]) -> None:
    """engine_command: the unsealed weights go to the engine server as the enclave's sealed
    memory file, by descriptor; an engine someone else started cannot be given them."""
    from medclave.enclave.engines.base import SamplingParams
    from medclave.enclave.engines.launch import LaunchedEngine
    from tests.e2e.engine_server import SERVER_BUILD
    from tests.e2e.test_remote_engine import LLAMA_SERVER

    folder, kbs, _ = world
    base = _settings(folder, kbs, MEASUREMENT)
    booted = boot(base.model_copy(update={"engine": "openai-compatible",
                                          "engine_command": tuple(LLAMA_SERVER),
                                          "engine_build": SERVER_BUILD}))
    try:
        engine = booted.service.engine
        assert isinstance(engine, LaunchedEngine) and engine.pid is not None
        argv = Path(f"/proc/{engine.pid}/cmdline").read_bytes().split(b"\0")
        given = argv[argv.index(b"--model") + 1].decode()
        held = os.readlink(f"/proc/{engine.pid}/fd/{given.rsplit('/', 1)[1]}")
        assert held.startswith("/memfd:")  # memory only, never a file on disk
        done = engine.chat([{"role": "user", "content": "Name a bone."}],
                           SamplingParams(max_tokens=4, temperature=0.0))
        assert done.text and booted.model_digest == DEFAULT_MODEL_SHA256
    finally:
        booted.close()
    with pytest.raises(MedclaveError) as refused:
        boot(base.model_copy(update={"engine": "openai-compatible",
                                     "engine_url": "http://127.0.0.1:8000"}))
    assert refused.value.code == "config.invalid"
