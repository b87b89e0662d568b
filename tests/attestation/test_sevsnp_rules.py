"""SNP appraisal rules over the claims of real reports: every violation reported at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medclave.attestation import sevsnp
from medclave.attestation.sevsnp import SnpRules, appraise
from medclave.errors import CATALOGUE, PolicyError
from tests.attestation.test_sevsnp import CASES, opts, read


def claims(vectors: Path, index: int) -> dict[str, Any]:
    case = CASES[index]
    return dict(sevsnp.verify(read(vectors, case.report), opts(vectors, *case.chain)).claims)


@pytest.fixture(scope="module")
def s1(vectors: Path) -> dict[str, Any]:
    return claims(vectors, 0)  # debug allowed, SMT on, v2, VCEK


@pytest.fixture(scope="module")
def s4(vectors: Path) -> dict[str, Any]:
    return claims(vectors, 3)  # VLEK, VMPL 1, debug off


def codes(violations: list[Any]) -> list[tuple[str, str]]:
    return [(v.code, v.claim) for v in violations]


def test_default_rules_refuse_debug_only(s1: dict[str, Any], s4: dict[str, Any]) -> None:
    assert codes(appraise(s1, SnpRules())) == [("policy.debug_forbidden", "policy_bits.debug")]
    assert appraise(s4, SnpRules()) == []
    assert appraise(s1, SnpRules(allow_debug=True)) == []


def test_every_violation_at_once(s1: dict[str, Any]) -> None:
    rules = SnpRules(
        min_tcb={"bl": 2, "snp": 8, "ucode": 115}, allow_smt=False, vmpls=frozenset({1}),
        measurements=frozenset({"00" * 48}), host_data=frozenset({"11" * 32}),
        signing_keys=frozenset({"vlek"}), products=frozenset({"Genoa"}), min_guest_svn=1,
        require_single_socket=True,
    )
    got = codes(appraise(s1, rules))
    assert got == [
        ("policy.tcb_too_low", "reported_tcb_parts.snp"),
        ("policy.tcb_too_low", "reported_tcb_parts.ucode"),
        ("policy.debug_forbidden", "policy_bits.debug"),
        ("policy.smt_forbidden", "platform_info_bits.smt_enabled"),
        ("policy.refused", "policy_bits.single_socket"),
        ("policy.vmpl_not_allowed", "vmpl"),
        ("policy.tcb_too_low", "guest_svn"),
        ("attestation.measurement_mismatch", "measurement"),
        ("policy.host_data_mismatch", "host_data"),
        ("policy.signing_key_not_allowed", "signing_key"),
        ("policy.platform_not_allowed", "product"),
    ]
    # Every code is catalogued and can be raised by the policy module as a PolicyError.
    for code, _ in got:
        assert code in CATALOGUE
        PolicyError(code)


def test_accepting_rules_on_the_vlek_report(s4: dict[str, Any]) -> None:
    rules = SnpRules(
        min_tcb={"bl": 4, "tee": 0, "snp": 24, "ucode": 217}, vmpls=frozenset({1}),
        measurements=frozenset({s4["measurement"].upper()}),
        host_data=frozenset({s4["host_data"]}), signing_keys=frozenset({"vcek", "vlek"}),
        products=frozenset({"Milan"}), id_key_digests=frozenset({s4["id_key_digest"]}),
    )
    assert appraise(s4, rules) == []


def test_min_tcb_by_product(s1: dict[str, Any], vectors: Path) -> None:
    genoa = claims(vectors, 4)
    rules = SnpRules(allow_debug=True, min_tcb_by_product={
        "Milan": {"ucode": 69}, "Genoa": {"snp": 23, "ucode": 25}})
    assert codes(appraise(s1, rules)) == [("policy.tcb_too_low", "reported_tcb_parts.ucode")]
    assert appraise(genoa, rules) == []
    only_genoa = SnpRules(allow_debug=True, min_tcb_by_product={"Genoa": {"snp": 1}})
    assert codes(appraise(s1, only_genoa)) == [("policy.tcb_too_low", "product")]


def test_turin_only_component_on_milan_fails_closed(s1: dict[str, Any]) -> None:
    got = codes(appraise(s1, SnpRules(allow_debug=True, min_tcb={"fmc": 0, "xyz": 1})))
    assert got == [("policy.tcb_too_low", "reported_tcb_parts.fmc"),
                   ("policy.tcb_too_low", "reported_tcb_parts.xyz")]


def test_missing_claims_fail_closed() -> None:
    rules = SnpRules(min_tcb={"snp": 1}, allow_smt=False, vmpls=frozenset({0}),
                     measurements=frozenset({"aa"}), signing_keys=frozenset({"vcek"}))
    got = {code for code, _ in codes(appraise({}, rules))}
    assert got == {"policy.tcb_too_low", "policy.debug_forbidden",
                   "policy.migration_agent_forbidden", "policy.smt_forbidden",
                   "policy.vmpl_not_allowed", "attestation.measurement_mismatch",
                   "policy.signing_key_not_allowed"}


def test_migration_agent(s4: dict[str, Any]) -> None:
    with_ma = {**s4, "policy_bits": {**s4["policy_bits"], "migrate_ma": True}}
    assert codes(appraise(with_ma, SnpRules())) == [
        ("policy.migration_agent_forbidden", "policy_bits.migrate_ma")]
    assert appraise(with_ma, SnpRules(allow_migration_agent=True)) == []


def test_violation_serialises(s1: dict[str, Any]) -> None:
    (v,) = appraise(s1, SnpRules())
    # Every field pinned, the detail included: it is what an operator reads in a refusal.
    assert v.to_dict() == {
        "code": "policy.debug_forbidden",
        "claim": "policy_bits.debug",
        "detail": "the guest policy allows debugging (the host can read its memory)",
    }
    assert json.loads(json.dumps(v.to_dict())) == v.to_dict()  # plain JSON, as results carry it
