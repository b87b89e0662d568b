"""Attestation-gated admission: every refusal the issue names, each with its code, and the
register call (Flower's ``flwr supernode register``) made only after evidence passed."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from medclave.attestation import sim
from medclave.errors import MedclaveError
from medclave.fl.federation import Federation, admission_runtime
from medclave.fl.local import demo_policy
from medclave.fl.site import TAMPERED_MEASUREMENT, Site, init_site
from medclave.protocol.evidence import EvidenceBundle

DATA = "ab" * 32


class Registry:
    """Stands in for the SuperLink's allowed keys: records what admission registers."""

    def __init__(self) -> None:
        self.keys: list[tuple[bytes, str]] = []

    def __call__(self, public_key: bytes, site: str) -> int:
        self.keys.append((public_key, site))
        return 1000 + len(self.keys)


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim")


SIM_DIRS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def authority(sim_dir: Path) -> sim.SimAuthority:
    found = sim.SimAuthority.load_or_create(sim_dir)
    SIM_DIRS[found.root_fingerprint] = sim_dir
    return found


def _federation(tmp_path: Path, authority: sim.SimAuthority, policy: str | None = None
                ) -> tuple[Federation, dict[str, Site]]:
    text = policy or demo_policy(sim.code_measurement())
    fed = Federation.create(tmp_path / "fed", federation_id="fed-1", policy_text=text,
                            sim_roots=[authority.root_fingerprint], superlink="")
    sites = {name: init_site(tmp_path / name, site=name, federation="fed-1",
                             sim_dir=SIM_DIRS[authority.root_fingerprint], policy_text=text)
             for name in ("a", "b")}
    return fed, sites


def _evidence(authority: sim.SimAuthority, fed: Federation, site: Site, nonce: bytes, *,
              node_key: str | None = None, measurement: bytes | None = None,
              debug: bool = False, federation: str | None = None) -> EvidenceBundle:
    runtime = admission_runtime(federation or fed.id, site.name, node_key or site.node_key(), DATA)
    return sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=measurement,
                           debug=debug)


def test_admits_a_site_whose_evidence_binds_its_key_and_the_nonce(
        tmp_path: Path, authority: sim.SimAuthority) -> None:
    fed, sites = _federation(tmp_path, authority)
    reg = Registry()
    bundle = _evidence(authority, fed, sites["a"], fed.challenge("a"))
    member = fed.admit("a", bundle, sites["a"].public_key(), register=reg)
    assert reg.keys == [(sites["a"].public_key(), "a")]
    assert member.node_id == 1001 and member.data == DATA
    assert fed.members()["a"].node_key == sites["a"].node_key()


def _refused(fed: Federation, site: str, bundle: EvidenceBundle, key: bytes,
             reg: Registry) -> str:
    with pytest.raises(MedclaveError) as err:
        fed.admit(site, bundle, key, register=reg)
    assert reg.keys == [], "a refused site's key must never reach the SuperLink"
    assert site not in fed.members()
    return err.value.code


def test_evidence_for_another_node_key_is_refused(tmp_path: Path,
                                                 authority: sim.SimAuthority) -> None:
    fed, sites = _federation(tmp_path, authority)
    # Site a's genuine evidence, presented with site b's key: the unbound key is refused.
    bundle = _evidence(authority, fed, sites["a"], fed.challenge("a"))
    assert _refused(fed, "a", bundle, sites["b"].public_key(), Registry()) == "fl.node_key_mismatch"


def test_a_replayed_nonce_is_refused(tmp_path: Path, authority: sim.SimAuthority) -> None:
    fed, sites = _federation(tmp_path, authority)
    bundle = _evidence(authority, fed, sites["a"], fed.challenge("a"))
    fed.admit("a", bundle, sites["a"].public_key(), register=Registry())
    again = Registry()
    with pytest.raises(MedclaveError) as err:
        fed.admit("a", bundle, sites["a"].public_key(), register=again)
    assert err.value.code == "fl.nonce_unknown" and again.keys == []


def test_a_nonce_never_issued_or_issued_to_another_site_is_refused(
        tmp_path: Path, authority: sim.SimAuthority) -> None:
    fed, sites = _federation(tmp_path, authority)
    made_up = _evidence(authority, fed, sites["a"], b"\x07" * 32)
    assert _refused(fed, "a", made_up, sites["a"].public_key(), Registry()) == "fl.nonce_unknown"
    bs_nonce = _evidence(authority, fed, sites["a"], fed.challenge("b"))
    assert _refused(fed, "a", bs_nonce, sites["a"].public_key(), Registry()) == "fl.nonce_unknown"


def test_other_training_code_is_refused(tmp_path: Path, authority: sim.SimAuthority) -> None:
    fed, sites = _federation(tmp_path, authority)
    bundle = _evidence(authority, fed, sites["a"], fed.challenge("a"),
                       measurement=TAMPERED_MEASUREMENT)
    code = _refused(fed, "a", bundle, sites["a"].public_key(), Registry())
    assert code == "attestation.measurement_mismatch"


def test_a_debug_guest_is_refused(tmp_path: Path, authority: sim.SimAuthority) -> None:
    fed, sites = _federation(tmp_path, authority)
    bundle = _evidence(authority, fed, sites["a"], fed.challenge("a"), debug=True)
    assert _refused(fed, "a", bundle, sites["a"].public_key(), Registry()) == "policy.debug_forbidden"


def test_sim_is_refused_unless_the_policy_names_it(tmp_path: Path,
                                                  authority: sim.SimAuthority) -> None:
    policy = 'name = "hardware-only"\nplatforms = ["sev-snp", "tdx"]\n'
    fed, sites = _federation(tmp_path, authority, policy)
    bundle = _evidence(authority, fed, sites["a"], fed.challenge("a"))
    code = _refused(fed, "a", bundle, sites["a"].public_key(), Registry())
    assert code == "policy.platform_not_allowed"


def test_evidence_for_another_federation_is_refused(tmp_path: Path,
                                                   authority: sim.SimAuthority) -> None:
    fed, sites = _federation(tmp_path, authority)
    bundle = _evidence(authority, fed, sites["a"], fed.challenge("a"), federation="other")
    assert _refused(fed, "a", bundle, sites["a"].public_key(), Registry()) == "fl.update_unbound"


def test_one_flipped_signed_byte_is_refused(tmp_path: Path, authority: sim.SimAuthority) -> None:
    fed, sites = _federation(tmp_path, authority)
    bundle = _evidence(authority, fed, sites["a"], fed.challenge("a"))
    raw = bytearray(base64.b64decode(bundle.evidence))
    raw[0x90] ^= 0x01  # the measurement, inside the signed bytes
    flipped = bundle.model_copy(update={"evidence": base64.b64encode(bytes(raw)).decode()})
    code = _refused(fed, "a", flipped, sites["a"].public_key(), Registry())
    assert code == "attestation.signature_invalid"
