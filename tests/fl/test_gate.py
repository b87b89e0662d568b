"""Continuous verification without processes: GatedGrid (the aggregator) over a grid whose
"sites" run the real attest mod, in this process. Each way a reply can be wrong is dropped with
its code and the site excluded; each way the aggregator can be wrong is refused by the site."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.attestation import sim
from medclave.attestation.policy import parse_policy
from medclave.fl.evidence import Appraiser
from medclave.fl.gate import (
    ATTEST_RECORD,
    STATE_RECORD,
    Admitted,
    GatedGrid,
    SiteIdentity,
    Verdict,
    make_attest_mod,
)
from medclave.fl.local import demo_policy
from medclave.fl.site import TAMPERED_MEASUREMENT
from medclave.protocol.evidence import EvidenceBundle

FED = "fed-1"
KEYS = {1: "11" * 32, 2: "22" * 32}


@pytest.fixture(autouse=True, scope="module")
def task_identity() -> Iterator[None]:
    """Flower stamps new messages with the process's task identity (set by its runtimes)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> sim.SimAuthority:
    return sim.SimAuthority.load_or_create(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def appraiser(authority: sim.SimAuthority) -> Appraiser:
    policy = parse_policy(demo_policy(sim.code_measurement()).encode())
    return Appraiser(policy, frozenset([authority.root_fingerprint]))


def _attester(authority: sim.SimAuthority, measurement: bytes | None = None
              ) -> Callable[[bytes, dict[str, Any]], EvidenceBundle]:
    def attest(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
        return sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=measurement)
    return attest


class Sites(Grid):
    """Delivers each message to an in-process site: the attest mod around ``train``."""

    def __init__(self, identities: dict[int, SiteIdentity],
                 after_mod: Callable[[int, Message], Message] | None = None) -> None:
        self.mods = {n: make_attest_mod(lambda _c, i=i: i) for n, i in identities.items()}
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(),
                                    run_config={}) for n in identities}
        self.after_mod = after_mod or (lambda _n, reply: reply)
        self.fresh: dict[int, list[bool]] = {n: [] for n in identities}

    def set_run(self, run: Any) -> None: ...

    @property
    def run(self) -> Any:
        raise NotImplementedError

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.mods)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            ctx = self.contexts[node]

            def train(m: Message, c: Context, node: int = node) -> Message:
                self.fresh[node].append(c.state.config_records[STATE_RECORD]["fresh"] is True)
                assert ATTEST_RECORD not in m.content, "the site's app never sees the record"
                return Message(RecordDict({"update": ConfigRecord({"w": [1.0, float(node)]})}),
                               reply_to=m)

            reply = self.mods[node](msg, ctx, train)
            out.append(self.after_mod(node, reply))
        return out


def _identity(node: int, authority: sim.SimAuthority, appraiser: Appraiser, *,
              node_key: str | None = None, measurement: bytes | None = None) -> SiteIdentity:
    return SiteIdentity(FED, f"site{node}", node_key or KEYS[node], appraiser,
                        lambda _round: _attester(authority, measurement))


def _gate(inner: Grid, authority: sim.SimAuthority, appraiser: Appraiser,
          aggregator_measurement: bytes | None = None) -> tuple[GatedGrid, list[Verdict]]:
    verdicts: list[Verdict] = []
    grid = GatedGrid(inner, federation=FED,
                     members={n: Admitted(f"site{n}", k) for n, k in KEYS.items()},
                     appraiser=appraiser, attest=_attester(authority, aggregator_measurement),
                     on_verdict=verdicts.append)
    return grid, verdicts


def _round(grid: GatedGrid, round_: int) -> list[Message]:
    msgs = [Message(RecordDict({"cfg": ConfigRecord({"r": round_})}), n, "train",
                    group_id=str(round_)) for n in grid.get_node_ids()]
    return list(grid.send_and_receive(msgs))


def test_honest_sites_pass_and_train_only_once_the_aggregator_answered_their_challenge(
        authority: sim.SimAuthority, appraiser: Appraiser) -> None:
    sites = Sites({n: _identity(n, authority, appraiser) for n in KEYS})
    grid, verdicts = _gate(sites, authority, appraiser)
    for r in (1, 2):
        replies = _round(grid, r)
        assert len(replies) == 2
        assert all(ATTEST_RECORD not in m.content for m in replies)
    assert all(v.accepted and v.evidence_digest and len(v.update) == 64 for v in verdicts)
    # The first message could not answer a challenge the site had not sent yet.
    assert sites.fresh == {1: [False, True], 2: [False, True]}


def test_an_update_changed_after_attestation_is_dropped_and_the_site_excluded(
        authority: sim.SimAuthority, appraiser: Appraiser) -> None:
    def tamper(node: int, reply: Message) -> Message:
        if node == 2:
            reply.content["update"] = ConfigRecord({"w": [9.0, 9.0]})
        return reply

    sites = Sites({n: _identity(n, authority, appraiser) for n in KEYS}, after_mod=tamper)
    grid, verdicts = _gate(sites, authority, appraiser)
    replies = _round(grid, 1)
    assert [m.metadata.src_node_id for m in replies] == [1]
    assert [(v.site, v.code) for v in verdicts if not v.accepted] == [("site2", "fl.update_unbound")]
    assert list(grid.get_node_ids()) == [1]
    assert [m.metadata.src_node_id for m in _round(grid, 2)] == [1]


def test_evidence_for_another_node_key_is_dropped(authority: sim.SimAuthority,
                                                  appraiser: Appraiser) -> None:
    sites = Sites({1: _identity(1, authority, appraiser),
                   2: _identity(2, authority, appraiser, node_key="33" * 32)})
    grid, verdicts = _gate(sites, authority, appraiser)
    _round(grid, 1)
    assert [(v.site, v.code) for v in verdicts if not v.accepted] == [("site2", "fl.node_key_mismatch")]


def test_evidence_replayed_from_an_earlier_message_is_dropped(authority: sim.SimAuthority,
                                                              appraiser: Appraiser) -> None:
    saved: dict[int, Any] = {}

    def replay(node: int, reply: Message) -> Message:
        record = reply.content.config_records[ATTEST_RECORD]
        if node == 2 and 2 in saved:
            reply.content[ATTEST_RECORD] = saved[2]
        saved.setdefault(node, record)
        return reply

    sites = Sites({n: _identity(n, authority, appraiser) for n in KEYS}, after_mod=replay)
    grid, verdicts = _gate(sites, authority, appraiser)
    _round(grid, 1)
    _round(grid, 2)
    refused = [(v.round, v.site, v.code) for v in verdicts if not v.accepted]
    assert refused == [(2, "site2", "attestation.nonce_mismatch")]


def test_a_site_whose_code_changed_is_dropped(authority: sim.SimAuthority,
                                              appraiser: Appraiser) -> None:
    sites = Sites({1: _identity(1, authority, appraiser),
                   2: _identity(2, authority, appraiser, measurement=TAMPERED_MEASUREMENT)})
    grid, _verdicts = _gate(sites, authority, appraiser)
    _round(grid, 1)
    assert grid.excluded == {2: "attestation.measurement_mismatch"}


def test_sites_refuse_an_aggregator_running_other_code(authority: sim.SimAuthority,
                                                      appraiser: Appraiser) -> None:
    sites = Sites({n: _identity(n, authority, appraiser) for n in KEYS})
    grid, verdicts = _gate(sites, authority, appraiser, TAMPERED_MEASUREMENT)
    assert _round(grid, 1) == []
    assert {v.code for v in verdicts} == {"fl.aggregator_refused"}
    assert sites.fresh == {1: [], 2: []}, "no site ran its app for that aggregator"


@settings(max_examples=60, deadline=None)
@given(evidence=st.binary(max_size=600), site_nonce=st.one_of(st.text(max_size=80), st.none()))
def test_arbitrary_attestation_records_are_refused_never_crash(
        tmp_path_factory: pytest.TempPathFactory, evidence: bytes, site_nonce: str | None) -> None:
    appraiser = Appraiser(parse_policy(demo_policy(b"\0" * 48).encode()), frozenset())

    class Garbage(Sites):
        def __init__(self) -> None:
            self.mods = {1: None}  # type: ignore[dict-item]

        def send_and_receive(self, messages: Iterable[Message], *,
                             timeout: float | None = None) -> Iterable[Message]:
            out = []
            for m in messages:
                record: dict[str, Any] = {"evidence": evidence}
                if site_nonce is not None:
                    record["site_nonce"] = site_nonce
                out.append(Message(RecordDict({ATTEST_RECORD: ConfigRecord(record)}), reply_to=m))
            return out

    verdicts: list[Verdict] = []
    grid = GatedGrid(Garbage(), federation=FED, members={1: Admitted("site1", KEYS[1])},
                     appraiser=appraiser, attest=lambda n, r: _fixed_bundle(n, r),
                     on_verdict=verdicts.append)
    assert _round(grid, 1) == []
    assert len(verdicts) == 1 and not verdicts[0].accepted and verdicts[0].code


_AUTHORITY: dict[str, sim.SimAuthority] = {}


def _fixed_bundle(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
    if "a" not in _AUTHORITY:
        import tempfile
        _AUTHORITY["a"] = sim.SimAuthority.load_or_create(Path(tempfile.mkdtemp()))
    return sim.make_bundle(_AUTHORITY["a"], nonce=nonce, runtime=runtime)
