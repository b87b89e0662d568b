"""A federation on disk: its policy, its members, its one-time admission nonces.

The operator's folder (``medclave fl create``)::

    federation.json   id, SuperLink address, sim roots pinned (demo only), run settings
    policy.toml       the appraisal policy every site and the aggregator must satisfy
    members.json      admitted sites: node key fingerprint, Flower node id, evidence digest
    nonces.json       outstanding admission nonces (one use each, five minutes)
    tls/              the federation CA and the SuperLink's certificate (deploy.make_tls)

Admission (:meth:`Federation.admit`): the nonce must be outstanding (it is spent whatever the
outcome: ``fl.nonce_unknown`` on a second use), the evidence must bind it and the presented
node key (``fl.node_key_mismatch`` otherwise) and pass the policy (measurement, TCB, debug off,
sim only if named). Only then is the key registered with the SuperLink, by ``register`` (Flower's
``flwr supernode register``); a refused site's key never reaches the SuperLink, whose SuperNode
authentication then refuses its connection.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from medclave.attestation.policy import AppraisalPolicy, load_policy
from medclave.errors import FederationError
from medclave.fl.evidence import (
    PURPOSE_ADMISSION,
    Appraiser,
    node_key_fingerprint,
    utc_now,
)
from medclave.protocol.evidence import EvidenceBundle
from medclave.util.clock import Clock
from medclave.util.files import write_atomic

NONCE_TTL = timedelta(minutes=5)
MAX_OUTSTANDING = 1024

Register = Callable[[bytes, str], int]  # (OpenSSH public key, site) -> Flower node id


def write_json(path: Path, value: Any) -> None:
    """Atomic replace: a reader sees the old file or the new one, never half of one."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode())


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


@dataclass(frozen=True)
class Member:
    site: str
    node_key: str
    node_id: int
    evidence_digest: str
    data: str
    admitted_at: str


class Federation:
    def __init__(self, root: Path, *, clock: Clock = utc_now) -> None:
        self.root = root
        self.clock = clock
        meta = read_json(root / "federation.json", None)
        if not isinstance(meta, dict):
            raise FederationError("fl.site_unknown", f"{root} is not a federation folder")
        self.meta: dict[str, Any] = meta

    @classmethod
    def create(cls, root: Path, *, federation_id: str, policy_text: str,
               sim_roots: list[str], superlink: str) -> Federation:
        root.mkdir(parents=True, exist_ok=True)
        (root / "policy.toml").write_text(policy_text, encoding="utf-8")
        load_policy(root / "policy.toml")  # refuse a bad policy now, not at the first site
        write_json(root / "federation.json", {"id": federation_id, "sim_roots": sim_roots,
                                              "superlink": superlink})
        write_json(root / "members.json", {})
        write_json(root / "nonces.json", {})
        return cls(root)

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    def policy(self) -> AppraisalPolicy:
        return load_policy(self.root / "policy.toml")

    def appraiser(self) -> Appraiser:
        return Appraiser(self.policy(), frozenset(self.meta.get("sim_roots", [])), self.clock)

    def members(self) -> dict[str, Member]:
        raw = read_json(self.root / "members.json", {})
        return {site: Member(**m) for site, m in raw.items()}

    def challenge(self, site: str) -> bytes:
        """A fresh admission nonce for ``site`` (32 bytes), usable once within five minutes."""
        now = self.clock()
        nonces = {n: v for n, v in read_json(self.root / "nonces.json", {}).items()
                  if datetime.fromisoformat(v["expires"]) > now}
        if len(nonces) >= MAX_OUTSTANDING:
            raise FederationError("fl.nonce_unknown", "too many outstanding admission nonces")
        nonce = secrets.token_bytes(32)
        nonces[nonce.hex()] = {"site": site, "expires": (now + NONCE_TTL).isoformat()}
        write_json(self.root / "nonces.json", nonces)
        return nonce

    def _spend(self, nonce: bytes, site: str) -> None:
        nonces = read_json(self.root / "nonces.json", {})
        entry = nonces.pop(nonce.hex(), None)
        write_json(self.root / "nonces.json", nonces)
        if (entry is None or entry.get("site") != site
                or datetime.fromisoformat(entry["expires"]) <= self.clock()):
            raise FederationError("fl.nonce_unknown",
                                  "the admission nonce is unknown, spent, expired or another site's")

    def admit(self, site: str, bundle: EvidenceBundle, public_key: bytes, *,
              register: Register) -> Member:
        """Appraise ``bundle`` for ``site``'s node key ``public_key`` (OpenSSH), then register
        the key with the SuperLink. Raises the refusal; nothing is registered on one."""
        try:
            nonce = bytes.fromhex(bundle.nonce)
        except ValueError as exc:
            raise FederationError("fl.nonce_unknown", "the bundle's nonce is not hex") from exc
        self._spend(nonce, site)
        fingerprint = node_key_fingerprint(public_key)
        verification = self.appraiser().check(bundle, nonce=nonce, expect={
            "purpose": PURPOSE_ADMISSION, "federation": self.id, "site": site,
            "node_key": fingerprint,
        })
        data = bundle.runtime.get("data")
        if not isinstance(data, str) or len(data) != 64:
            raise FederationError("fl.update_unbound", "the admission evidence commits to no data")
        node_id = register(public_key, site)
        member = Member(site=site, node_key=fingerprint, node_id=node_id,
                        evidence_digest=verification.evidence_digest, data=data,
                        admitted_at=self.clock().isoformat())
        members = read_json(self.root / "members.json", {})
        members[site] = member.__dict__
        write_json(self.root / "members.json", members)
        return member


def admission_runtime(federation: str, site: str, node_key: str, data: str) -> dict[str, Any]:
    """What a site's admission evidence states: its node key and the SHA-256 of its sealed
    data's plaintext (the data commitment the ingest audit entry records)."""
    return {"purpose": PURPOSE_ADMISSION, "federation": federation, "site": site,
            "node_key": node_key, "data": data}
