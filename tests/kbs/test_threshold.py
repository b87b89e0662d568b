"""Threshold release with three real brokers on 127.0.0.1: 2-of-3 releases, any single broker
cannot, a broker refusing on policy blocks the release when only k are reachable, and a broker
cannot pass off another's share or a wrong one."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.attestation import sim
from medclave.crypto import shamir
from medclave.errors import KbsError, MedclaveError
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.sealed_models import ThresholdPlan, load_sealed_model_threshold, seal_model
from medclave.kbs.signing import TrustedBrokers
from medclave.kbs.store import MemoryKbsStore
from medclave.kbs.threshold import (
    BrokerTarget,
    ShareRef,
    ThresholdRef,
    fetch_threshold,
    split_to_brokers,
)
from tests.kbs.conftest import Live
from tests.kbs.helpers import OTHER_MEASUREMENT, RESOURCE, sim_attester, sim_policy

LiveFactory = Callable[..., Live]
DEAD = "http://127.0.0.1:1"  # nothing listens on port 1: an unreachable broker


@pytest.fixture
def brokers(live_factory: LiveFactory, authority: sim.SimAuthority, tmp_path: Path) -> list[Live]:
    """Three independent brokers: own data folder (so own signing key), own store, own KEK."""
    return [live_factory(sim_roots=(authority.root_fingerprint,), store=MemoryKbsStore(),
                         data_dir=tmp_path / f"kbs{i}") for i in range(3)]


def _targets(brokers: list[Live]) -> list[BrokerTarget]:
    return [BrokerTarget(b.url, OwnerClient(b.url, b.token("vendor")), b.broker.signer.key_id)
            for b in brokers]


def _split(brokers: list[Live], secret: bytes, *, k: int = 2) -> ThresholdRef:
    targets = _targets(brokers)
    try:
        ref = split_to_brokers(secret, k, targets, RESOURCE)
        for t in targets:
            t.owner.set_policy(RESOURCE, sim_policy())
    finally:
        for t in targets:
            t.owner.close()
    return ref


def _opener(brokers: list[Live], authority: sim.SimAuthority,
            measurement: bytes | None = None) -> Callable[[ShareRef], KbsClient]:
    trusted = TrustedBrokers.of([b.broker.signer.public_key for b in brokers])
    attester = (sim_attester(authority) if measurement is None
                else sim_attester(authority, measurement=measurement))

    def open_client(share: ShareRef) -> KbsClient:
        return KbsClient(share.kbs, attester, trusted=trusted, signer=share.broker_key,
                         timeout=5.0)
    return open_client


def _released(live: Live) -> list[str | None]:
    return [d.code for d in live.decisions if d.action == "release"]


def test_two_of_three_release_the_key(brokers: list[Live], authority: sim.SimAuthority) -> None:
    secret = os.urandom(32)
    ref = _split(brokers, secret)
    assert ref.threshold == 2 and [s.index for s in ref.shares] == [1, 2, 3]
    assert fetch_threshold(ref, _opener(brokers, authority)) == secret
    # It stopped at k: the third broker was never asked.
    assert _released(brokers[0]) == [None] and _released(brokers[1]) == [None]
    assert _released(brokers[2]) == []
    # Every pair of brokers suffices (the other one unreachable).
    for down in range(3):
        shares = tuple(s.model_copy(update={"kbs": DEAD}) if i == down else s
                       for i, s in enumerate(ref.shares))
        assert fetch_threshold(ref.model_copy(update={"shares": shares}),
                               _opener(brokers, authority)) == secret


def test_each_broker_holds_a_share_that_alone_is_useless(brokers: list[Live],
                                                         authority: sim.SimAuthority) -> None:
    secret = os.urandom(32)
    ref = _split(brokers, secret)
    opener = _opener(brokers, authority)
    for i, share_ref in enumerate(ref.shares):
        with opener(share_ref) as client:
            share = shamir.Share.decode(client.fetch(RESOURCE))
        assert share.index == share_ref.index and secret not in share.value
        with pytest.raises(MedclaveError):
            shamir.combine([share])
        # With the two other brokers unreachable, one release is not enough.
        shares = tuple(s if j == i else s.model_copy(update={"kbs": DEAD})
                       for j, s in enumerate(ref.shares))
        with pytest.raises(KbsError) as err:
            fetch_threshold(ref.model_copy(update={"shares": shares}), opener)
        assert err.value.code == "kbs.threshold_not_met"
        assert "1 of 2" in err.value.detail


def test_a_broker_refusing_on_policy_blocks_when_only_k_are_available(
        brokers: list[Live], authority: sim.SimAuthority) -> None:
    secret = os.urandom(32)
    ref = _split(brokers, secret)
    # The auditor's broker (2) no longer accepts this build; the third broker is down.
    with OwnerClient(brokers[1].url, brokers[1].token("vendor")) as owner:
        owner.set_policy(RESOURCE, sim_policy(measurement=OTHER_MEASUREMENT))
    shares = (*ref.shares[:2], ref.shares[2].model_copy(update={"kbs": DEAD}))
    with pytest.raises(KbsError) as err:
        fetch_threshold(ref.model_copy(update={"shares": shares}), _opener(brokers, authority))
    assert err.value.code == "kbs.threshold_not_met"
    assert "attestation.measurement_mismatch" in err.value.detail
    assert _released(brokers[1]) == ["attestation.measurement_mismatch"]
    # With the third broker back, its own policy decides, and k are met again.
    assert fetch_threshold(ref, _opener(brokers, authority)) == secret


def test_an_enclave_no_policy_accepts_gets_nothing(brokers: list[Live],
                                                   authority: sim.SimAuthority) -> None:
    ref = _split(brokers, os.urandom(32))
    with pytest.raises(KbsError) as err:
        fetch_threshold(ref, _opener(brokers, authority, measurement=OTHER_MEASUREMENT))
    assert err.value.code == "kbs.threshold_not_met" and "0 of 2" in err.value.detail


def test_a_share_from_the_wrong_broker_is_not_counted(brokers: list[Live],
                                                      authority: sim.SimAuthority) -> None:
    """The operator edits key.json so broker 1's URL is listed as broker 2's as well: broker
    1's answer is signed by broker 1, not the broker the share names, so it counts once."""
    secret = os.urandom(32)
    ref = _split(brokers, secret)
    shares = (ref.shares[0], ref.shares[1].model_copy(update={"kbs": brokers[0].url}),
              ref.shares[2].model_copy(update={"kbs": DEAD}))
    with pytest.raises(KbsError) as err:
        fetch_threshold(ref.model_copy(update={"shares": shares}), _opener(brokers, authority))
    assert "kbs.answer_unauthenticated" in err.value.detail


def test_a_wrong_share_is_outvoted_by_honest_ones(brokers: list[Live],
                                                  authority: sim.SimAuthority) -> None:
    """Broker 1 answers a well-formed share of the same split but the wrong value: the
    combination fails its commitment, and brokers 2 and 3 still release the key."""
    secret = os.urandom(32)
    ref = _split(brokers, secret)
    with OwnerClient(brokers[0].url, brokers[0].token("vendor")) as owner:
        forged = shamir.Share(bytes.fromhex(ref.split_id), 2, 1, os.urandom(32))
        owner.rotate(RESOURCE, forged.encode())
    ref = ref.model_copy(update={"shares": (ref.shares[0].model_copy(update={"version": 2}),
                                            *ref.shares[1:])})
    assert fetch_threshold(ref, _opener(brokers, authority)) == secret
    assert len(_released(brokers[2])) == 1  # the third was needed


def test_descriptor_rules(brokers: list[Live]) -> None:
    ref = _split(brokers, os.urandom(32))
    with pytest.raises(MedclaveError):
        ref.model_copy(update={"threshold": 4}).check()
    dup = (ref.shares[0], ref.shares[1].model_copy(update={"broker_key": ref.shares[0].broker_key}))
    with pytest.raises(MedclaveError):
        ref.model_copy(update={"shares": dup}).check()


def test_sealed_model_with_a_threshold_key(brokers: list[Live], authority: sim.SimAuthority,
                                           tmp_path: Path) -> None:
    weights = os.urandom(100_000)
    (tmp_path / "llama.gguf").write_bytes(weights)
    targets = _targets(brokers)
    try:
        result = seal_model(tmp_path / "llama.gguf", tmp_path / "sealed", owner="vendor",
                            threshold=ThresholdPlan(2, tuple(targets)), chunk_size=64 * 1024)
        assert result.threshold_ref is not None
        digest = result.manifest.plaintext_sha256
        for t in targets:
            t.owner.set_policy(result.threshold_ref.shares[0].resource,
                               sim_policy(model_digests=(digest,)))
    finally:
        for t in targets:
            t.owner.close()
    trusted = TrustedBrokers.of([b.broker.signer.public_key for b in brokers])

    def open_client(share: ShareRef) -> KbsClient:
        return KbsClient(share.kbs, sim_attester(authority), trusted=trusted,
                         runtime={"model_digest": digest}, signer=share.broker_key)

    fd, _path, manifest = load_sealed_model_threshold(open_client, tmp_path / "sealed")
    try:
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    finally:
        os.close(fd)
    assert data == weights and hashlib.sha256(data).hexdigest() == manifest.plaintext_sha256


def test_cli_split_then_enclave_combines(brokers: list[Live], authority: sim.SimAuthority,
                                         tmp_path: Path) -> None:
    import base64
    import json

    from typer.testing import CliRunner

    from medclave.cli import kbs as kbs_cli

    spec = {"brokers": [{"url": b.url, "token": b.token("vendor"),
                         "key": base64.b64encode(b.broker.signer.public_key).decode()}
                        for b in brokers]}
    file = tmp_path / "brokers.json"
    file.write_text(json.dumps(spec))
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    args = ["threshold", "split", RESOURCE, "-k", "2", "--brokers", str(file),
            "--secret-file", str(secret)]
    file.chmod(0o644)
    refused = CliRunner().invoke(kbs_cli.app, args)
    assert refused.exit_code == 2 and "config.invalid" in refused.output  # tokens: 0600 only
    file.chmod(0o600)
    result = CliRunner().invoke(kbs_cli.app, args)
    assert result.exit_code == 0, result.output
    ref = ThresholdRef.model_validate_json(result.output)
    for b in brokers:
        with OwnerClient(b.url, b.token("vendor")) as owner:
            owner.set_policy(RESOURCE, sim_policy())
    assert fetch_threshold(ref, _opener(brokers, authority)) == secret.read_bytes()


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=600), st.text(max_size=600).map(str.encode),
                 st.dictionaries(st.sampled_from(["format", "threshold", "split_id",
                                                  "secret_digest", "shares"]),
                                 st.integers() | st.text(max_size=70) | st.lists(
                                     st.dictionaries(st.text(max_size=8), st.integers(0, 300),
                                                     max_size=5), max_size=4),
                                 max_size=5).map(lambda d: json.dumps({"threshold": 2, **d})
                                                 .encode())))
def test_the_key_json_reader_is_bounded_and_fails_closed(data: bytes) -> None:
    """key.json lies on the operator's disk: anything there is a descriptor or a refusal."""
    import tempfile

    from medclave.kbs.sealed_models import read_threshold_ref

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "key.json").write_bytes(data)
        try:
            ref = read_threshold_ref(Path(folder))
        except MedclaveError as exc:
            assert exc.code == "model.manifest_invalid"
            return
        assert ref is None or ref.threshold <= len(ref.shares)
