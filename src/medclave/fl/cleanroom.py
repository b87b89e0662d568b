"""Clean-room mode: the sites seal their data to one attested training enclave, which trains
centrally on the pooled rows and releases only the model.

Same training code as the federation (``model.train`` over ``cohort.preprocess``). Each site
decides alone, by its own release policy: it challenges the enclave with a fresh nonce, appraises
the evidence (purpose ``medclave-fl-cleanroom-v1``, binding the nonce and the enclave's one-time
X25519 key) under the site's own policy, and only then HPKE-seals its data key to that key
(RFC 9180; info ``medclave-fl-cleanroom-v1``, AAD the site name and nonce). A site whose
policy refuses the enclave contributes nothing; the enclave trains on the sites that released.
Inside the enclave, sealed data is opened into memory, and what leaves is the model alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medclave.crypto import hpke
from medclave.errors import MedclaveError
from medclave.fl import cohort, model
from medclave.fl.gate import Attester
from medclave.fl.site import Site
from medclave.protocol.evidence import EvidenceBundle

PURPOSE_CLEANROOM = "medclave-fl-cleanroom-v1"
INFO = PURPOSE_CLEANROOM.encode()


@dataclass
class CleanRoom:
    """The training enclave: a one-time X25519 key, and whatever data keys sites released."""

    attest: Attester
    _private: Any = field(init=False, repr=False)
    public: bytes = field(init=False)
    released: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._private, self.public = hpke.generate_keypair()

    def evidence(self, nonce: bytes) -> EvidenceBundle:
        return self.attest(nonce, {"purpose": PURPOSE_CLEANROOM,
                                   "hpke_key": self.public.hex()})

    def receive(self, site: str, nonce: bytes, sealed_key: bytes) -> None:
        self.released[site] = hpke.open(self._private, sealed_key, INFO, _aad(site, nonce))

    def train(self, sites: Mapping[str, Site], *, steps: int) -> model.Params:
        xs, ys = [], []
        for name, key in self.released.items():
            data = sites[name].load_data(key=key)
            xs.append(cohort.preprocess(data["x"]))
            ys.append(data["y"])
        return model.train(model.initial_params(), np.vstack(xs), np.concatenate(ys), steps=steps)


def _aad(site: str, nonce: bytes) -> bytes:
    return site.encode() + b"\0" + nonce


def release_to(room: CleanRoom, site: Site) -> str:
    """The site's side: challenge, appraise under the site's policy, seal the data key.
    Returns "" when released, else the refusal code (the site keeps its data)."""
    nonce = secrets.token_bytes(32)
    try:
        bundle = room.evidence(nonce)
        site.appraiser().check(bundle, nonce=nonce, expect={
            "purpose": PURPOSE_CLEANROOM, "hpke_key": room.public.hex()})
    except MedclaveError as exc:
        return exc.code
    room.receive(site.name, nonce, hpke.seal(room.public, site.data_key(), INFO,
                                             _aad(site.name, nonce)))
    return ""


def run_clean_room(sites: Mapping[str, Site], attest: Attester, *,
                   steps: int = 400) -> tuple[model.Params, dict[str, str]]:
    """Every site decides; the enclave trains on what was released. (params, refusals)."""
    room = CleanRoom(attest)
    refusals = {name: code for name, site in sites.items() if (code := release_to(room, site))}
    if not room.released:
        return model.initial_params(), refusals
    return room.train(sites, steps=steps), refusals

