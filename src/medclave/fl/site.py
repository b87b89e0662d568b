"""A site (hospital) on disk: its node key, its policy for the aggregator, its sealed data.

The site's folder (``medclave fl site init``)::

    site.json        site name, federation id, platform, sim folder (sim only)
    node.key         the SuperNode's Flower authentication key (P-384, OpenSSH), mode 0600
    node.pub         its public half, what admission binds and the SuperLink learns
    policy.toml      the site's own appraisal policy for the aggregator
    data/            the training data, sealed (crypto/sealed.py format, ``npz`` inside)
    data.key         development only: the data key, mode 0600

With a broker named in site.json (:func:`use_broker`), the data key lives only in the site's own
key broker and is released, per use, to the SuperNode's evidence under the site's release
policy (``kbs/client.py``: challenge, evidence over an ephemeral key, signed answer, HPKE),
exactly as the enclave's commitment keys are.

The site's data never leaves this folder in the clear: it is sealed at rest under the site data
key, and opened only inside the ClientApp's process, into memory (``open_to_memfd``).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from numpy.typing import NDArray

from medclave.attestation import sim
from medclave.attestation.policy import load_policy
from medclave.crypto import sealed
from medclave.errors import FederationError
from medclave.fl.evidence import Appraiser, node_key_fingerprint
from medclave.fl.federation import read_json, write_json
from medclave.fl.gate import Attester, SiteIdentity
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.signing import TrustedBrokers
from medclave.protocol.evidence import EvidenceBundle
from medclave.util.files import read_secret_file, write_secret_file

MAX_DATA_KEY_BYTES = 4096  # a model key is 32 bytes; read_secret_file reads at most this
DATA_ARRAYS = ("x", "y", "x_test", "y_test")
TAMPERED_MEASUREMENT = hashlib.sha384(b"medclave-fl-demo: training code changed").digest()


@dataclass(frozen=True)
class Site:
    root: Path

    @property
    def meta(self) -> dict[str, Any]:
        meta = read_json(self.root / "site.json", None)
        if not isinstance(meta, dict):
            raise FederationError("fl.site_unknown", f"{self.root} is not a site folder")
        return meta

    @property
    def name(self) -> str:
        return str(self.meta["site"])

    def public_key(self) -> bytes:
        return (self.root / "node.pub").read_bytes()

    def node_key(self) -> str:
        return node_key_fingerprint(self.public_key())

    def authority(self) -> sim.SimAuthority:
        if self.meta.get("platform") != "sim":
            raise FederationError("fl.site_unknown", "only the sim platform is wired for sites")
        return sim.SimAuthority.load_or_create(Path(self.meta["sim_dir"]))

    def attester(self, *, measurement: bytes | None = None) -> Attester:
        authority = self.authority()

        def attest(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
            return sim.make_bundle(authority, nonce=nonce, runtime=runtime,
                                   measurement=measurement)
        return attest

    def appraiser(self) -> Appraiser:
        return Appraiser(load_policy(self.root / "policy.toml"),
                         frozenset([self.authority().root_fingerprint]))

    def identity(self, *, tamper_round: int = 0) -> SiteIdentity:
        honest = self.attester()
        tampered = self.attester(measurement=TAMPERED_MEASUREMENT)

        def for_round(round_: int) -> Attester:
            # Demo fault injection (sim only): from ``tamper_round`` on, the site's evidence
            # reports other training code, as a site whose code was swapped would.
            return tampered if tamper_round and round_ >= tamper_round else honest

        return SiteIdentity(federation=str(self.meta["federation"]), site=self.name,
                            node_key=self.node_key(), appraiser=self.appraiser(),
                            attest=for_round)

    def data_key(self, *, attester: Attester | None = None) -> bytes:
        """The site data key: released by the site's own broker to this node's evidence when
        the site names one (``broker`` in site.json: url, resource, trusted broker keys, CA),
        else, in development, the 0600 file beside the sealed data."""
        broker = self.meta.get("broker")
        if not isinstance(broker, dict):
            return read_secret_file(self.root / "data.key", "site data key",
                                    max_bytes=MAX_DATA_KEY_BYTES)
        verify: str | bool = str(broker["ca"]) if broker.get("ca") else True
        with KbsClient(str(broker["url"]), attester or self.attester(),
                       trusted=TrustedBrokers.of(list(broker["keys"])), verify=verify,
                       runtime={"site": self.name, "node_key": self.node_key()}) as kbs:
            return kbs.fetch(str(broker["resource"]))

    def load_data(self, *, key: bytes | None = None) -> dict[str, NDArray[np.float64]]:
        """The sealed data, opened into memory: ``x``, ``y`` (training), ``x_test``, ``y_test``."""
        key = self.data_key() if key is None else key
        fd, _ = sealed.open_to_memfd(self.root / "data", key, name="medclave-fl-data")
        with os.fdopen(fd, "rb") as f:
            blob = f.read()
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            return {k: np.asarray(npz[k], dtype=np.float64) for k in DATA_ARRAYS}


@cache
def open_site(root: str) -> Site:
    return Site(Path(root))


def init_site(root: Path, *, site: str, federation: str, sim_dir: Path,
              policy_text: str) -> Site:
    """Create a site folder: a fresh P-384 node key, the site's policy."""
    root.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    write_secret_file(root / "node.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    (root / "node.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    (root / "policy.toml").write_text(policy_text, encoding="utf-8")
    write_json(root / "site.json", {"site": site, "federation": federation, "platform": "sim",
                                    "sim_dir": str(sim_dir)})
    return Site(root)


def use_broker(site: Site, *, url: str, resource: str, keys: list[str],
               ca: str | None = None) -> None:
    """Name the site's broker in site.json: the data key comes from it from now on."""
    meta = site.meta
    meta["broker"] = {"url": url, "resource": resource, "keys": keys, "ca": ca}
    write_json(site.root / "site.json", meta)


def seal_data(site: Site, arrays: dict[str, NDArray[np.float64]], *,
              owner: OwnerClient | None = None) -> str:
    """Seal the site's rows (:data:`DATA_ARRAYS`) under a fresh data key; returns the plaintext
    SHA-256 (what admission binds and the ingest audit entry records). With ``owner`` (the
    site's owner client of its broker) the key goes to the broker, at the resource site.json
    names, and is never written here; else to the development key file."""
    buf = io.BytesIO()
    np.savez(buf, x=arrays["x"], y=arrays["y"], x_test=arrays["x_test"], y_test=arrays["y_test"])
    plain = site.root / ".data.npz"
    write_secret_file(plain, buf.getvalue())
    try:
        manifest, key = sealed.seal_file(plain, site.root / "data", owner=site.name,
                                         model_format="npz")
    finally:
        plain.unlink(missing_ok=True)
    if owner is not None:
        owner.put(str(site.meta["broker"]["resource"]), key)
    else:
        write_secret_file(site.root / "data.key", key)
    return manifest.plaintext_sha256


