"""Site data at rest: sealed, and its key released by the site's own broker only to evidence of
the training code the site's release policy names (real broker over HTTP on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medclave.attestation import sim
from medclave.attestation.policy import AppraisalPolicy
from medclave.errors import MedclaveError
from medclave.fl.local import demo_policy
from medclave.fl.site import TAMPERED_MEASUREMENT, Site, init_site, seal_data, use_broker
from medclave.kbs.client import OwnerClient
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.store import MemoryKbsStore
from tests.kbs.conftest import Clock, Live, make_settings, serve_broker

RESOURCE = "kbs:///site-a/fl-data/train"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Site, Live, dict[str, np.ndarray]]]:
    authority = sim.SimAuthority.load_or_create(tmp_path / "simdir")
    server, live = serve_broker(make_settings(tmp_path, sim_roots=(authority.root_fingerprint,)),
                                store=MemoryKbsStore(), clock=Clock())
    server.start()
    live.url = server.url
    try:
        site = init_site(tmp_path / "a", site="a", federation="fed-1",
                         sim_dir=tmp_path / "simdir",
                         policy_text=demo_policy(sim.code_measurement()))
        use_broker(site, url=live.url, resource=RESOURCE,
                   keys=[live.broker.signer.public_key.hex()])
        rng = np.random.default_rng(7)
        arrays = {"x": rng.normal(size=(20, 11)), "y": rng.integers(0, 2, 20).astype(float),
                  "x_test": rng.normal(size=(5, 11)), "y_test": np.ones(5)}
        with OwnerClient(live.url, live.token("site-a")) as owner:
            seal_data(site, arrays, owner=owner)
            owner.set_policy(RESOURCE, ReleasePolicy(appraisal=AppraisalPolicy.model_validate({
                "platforms": ["sim"], "platform": {"sim": {"reference_values": {
                    "measurement": [sim.code_measurement().hex()]}}}})))
        yield site, live, arrays
    finally:
        server.stop()


def test_the_sealed_data_opens_only_with_the_key_the_broker_released(
        setup: tuple[Site, Live, dict[str, np.ndarray]]) -> None:
    site, live, arrays = setup
    assert not (site.root / "data.key").exists(), "the key never rests beside the data"
    assert arrays["x"][0].tobytes() not in (site.root / "data" / "model.sealed").read_bytes()
    data = site.load_data()
    assert np.array_equal(data["x"], arrays["x"]) and np.array_equal(data["y_test"], arrays["y_test"])
    assert [d.outcome for d in live.decisions][-1] == "allowed"


def test_the_broker_refuses_a_node_running_other_code(
        setup: tuple[Site, Live, dict[str, np.ndarray]]) -> None:
    site, live, _ = setup
    with pytest.raises(MedclaveError) as err:
        site.data_key(attester=site.attester(measurement=TAMPERED_MEASUREMENT))
    assert err.value.code == "attestation.measurement_mismatch"
    assert live.decisions[-1].outcome == "refused"
