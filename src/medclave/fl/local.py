"""A whole federation on one machine: what ``medclave fl demo``, the tests and the benchmark run.

Folder layout under ``root``::

    federation/    the operator's federation folder (federation.py), with tls/, sim/, app/
    sites/NAME/    each hospital's site folder (site.py), its data sealed from the cohort

Every party is still its own process: one ``flower-superlink``, one ``flower-supernode`` per
site, and the ServerApp and ClientApps Flower starts for a run. The sites share one sim
authority here (one machine, one software "TEE"); the policy names sim and that root only.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclave.attestation import sim
from medclave.errors import FederationError
from medclave.fl import cohort, deploy
from medclave.fl.federation import Federation, Member, admission_runtime, read_json
from medclave.fl.site import Site, init_site, seal_data
from medclave.fl.trail import Trail
from medclave.kbs.sealed_models import write_owner_keypair
from medclave.protocol.evidence import EvidenceBundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def demo_policy(measurement: bytes, *, name: str = "demo-federation") -> str:
    """The federation's policy on sim: this code's measurement, debug off, sim named."""
    return (f'name = "{name}"\nplatforms = ["sim"]\nallow_debug = false\n\n'
            f'[platform.sim.reference_values]\nmeasurement = ["{measurement.hex()}"]\n')


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FederationError("fl.run_failed", f"nothing listens on 127.0.0.1:{port}")


@dataclass
class LocalFederation:
    root: Path
    federation: Federation
    sites: dict[str, Site]
    port: int = 0
    superlink: deploy.Proc | None = None
    nodes: dict[str, deploy.Proc] = field(default_factory=dict)

    @property
    def fed_dir(self) -> Path:
        return self.federation.root

    @property
    def cli_home(self) -> Path:
        return self.fed_dir / "cli-home"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def create(cls, root: Path, *, seed: int = cohort.DEFAULT_SEED,
               federation_id: str = "rare-tumour") -> LocalFederation:
        fed_dir = root / "federation"
        fed_dir.mkdir(parents=True, exist_ok=True)
        authority = sim.SimAuthority.load_or_create(fed_dir / "sim")
        deploy.make_tls(fed_dir / "tls")
        write_owner_keypair(fed_dir / "owner.key")
        deploy.write_app(fed_dir / "app")
        policy = demo_policy(sim.code_measurement())
        fed = Federation.create(fed_dir, federation_id=federation_id, policy_text=policy,
                                sim_roots=[authority.root_fingerprint], superlink="")
        sites: dict[str, Site] = {}
        for data in cohort.make_cohort(seed):
            site = init_site(root / "sites" / data.site, site=data.site, federation=fed.id,
                             sim_dir=fed_dir / "sim", policy_text=policy)
            seal_data(site, {"x": data.x_train, "y": data.y_train, "x_test": data.x_test,
                             "y_test": data.y_test})
            sites[data.site] = site
        return cls(root, fed, sites)

    # --- processes ----------------------------------------------------------------------------
    def start(self, *, port: int | None = None, timeout: float = 60.0) -> None:
        self.port = port or free_port()
        deploy.write_cli_config(self.cli_home, self.address, self.fed_dir / "tls" / "ca.pem")
        self.superlink = deploy.start_superlink(self.fed_dir, self.port)
        wait_port(self.port, timeout)

    def start_node(self, name: str, *, extra: dict[str, int | str] | None = None,
                   superlink: str | None = None) -> deploy.Proc:
        proc = deploy.start_supernode(self.sites[name].root, superlink=superlink or self.address,
                                      ca=self.fed_dir / "tls" / "ca.pem", port=free_port(),
                                      extra_config=extra)
        self.nodes[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.nodes.values():
            proc.stop()
        self.nodes.clear()
        if self.superlink is not None:
            self.superlink.stop()
            self.superlink = None

    # --- admission ----------------------------------------------------------------------------
    def site_evidence(self, name: str, nonce: bytes) -> EvidenceBundle:
        """What site ``name``'s SuperNode host presents: evidence over its node key, its data
        commitment and the federation's nonce."""
        site = self.sites[name]
        data = site.root / "data" / "manifest.json"
        digest = str(read_json(data, {}).get("plaintext_sha256", ""))
        return site.attester()(nonce, admission_runtime(self.federation.id, name,
                                                        site.node_key(), digest))

    def register(self, public_key: bytes, site: str) -> int:
        path = self.fed_dir / "keys" / f"{site}.pub"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(public_key)
        return deploy.register_node(self.cli_home, path, name=site)

    def admit(self, name: str, bundle: EvidenceBundle | None = None,
              public_key: bytes | None = None) -> Member:
        if bundle is None:
            bundle = self.site_evidence(name, self.federation.challenge(name))
        member = self.federation.admit(
            name, bundle, public_key or self.sites[name].public_key(), register=self.register)
        trail = Trail(self.fed_dir, self.federation.id, "admission")
        try:
            trail.append("ingest", site=name, data=member.data, evidence=member.evidence_digest,
                         node_key=member.node_key)
        finally:
            trail.close()
        return member

    # --- runs ---------------------------------------------------------------------------------
    def run(self, name: str, *, timeout: float = 600.0, **config: Any) -> dict[str, Any]:
        """Submit one run with ``flwr run``, wait for it, return its result.json."""
        run_dir = self.fed_dir / "runs" / name
        settings = {**deploy.APP_CONFIG, "federation-dir": str(self.fed_dir),
                    "run-dir": str(run_dir), **{k.replace("_", "-"): v for k, v in config.items()}}
        run_id = deploy.run_app(self.cli_home, self.fed_dir / "app", settings, timeout=120)
        status = deploy.wait_run(self.cli_home, run_id, timeout=timeout,
                                 done=run_dir / "result.json")
        result = read_json(run_dir / "result.json", None)
        if not status.endswith("completed") or not isinstance(result, dict):
            raise FederationError("fl.run_failed", f"run {run_id} ended {status}")
        result["status"] = status
        return result
