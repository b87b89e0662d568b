"""The tenant's vetted crisis responses (``crisis.toml``) and the provider's alerts.

A response is the provider's own wording, reviewed by its clinicians, shown verbatim ahead of
any model text whenever the screen is positive. An alert carries only what the patient agreed
to share when the conversation began: nothing (no alert), the triage level, or the level and a
callback number. Never the conversation's text, its id, or which rule matched.
"""

from __future__ import annotations

import secrets
import threading
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from medclave.errors import InputError

Consent = Literal["nothing", "level", "callback"]
CONSENTS: tuple[Consent, ...] = ("nothing", "level", "callback")
MAX_ALERTS_PER_TENANT = 1000


@dataclass(frozen=True)
class CrisisResponse:
    region: str
    message: str
    emergency: str
    resources: tuple[dict[str, str], ...]

    def public(self, level: str) -> dict[str, Any]:
        text = self.message + (f"\n\n{self.emergency}" if level == "emergency" and
                               self.emergency else "")
        return {"region": self.region, "message": text,
                "resources": [dict(r) for r in self.resources]}


def _response(raw: Any, where: str) -> CrisisResponse:
    if not isinstance(raw, dict) or not isinstance(raw.get("message"), str) or not raw[
            "message"].strip():
        raise InputError("config.invalid", f"crisis responses: {where} needs a message")
    resources_ = raw.get("resources") or []
    if not all(isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(
            r.get("contact"), str) for r in resources_):
        raise InputError("config.invalid", f"crisis responses: {where}.resources: name, contact")
    return CrisisResponse(str(raw.get("region", "")), raw["message"].strip(),
                          str(raw.get("emergency", "")).strip(),
                          tuple({"name": r["name"], "contact": r["contact"]}
                                for r in resources_))


@dataclass(frozen=True)
class CrisisResponses:
    default: CrisisResponse
    tenants: dict[str, CrisisResponse]

    def for_tenant(self, tenant: str) -> CrisisResponse:
        return self.tenants.get(tenant, self.default)

    @classmethod
    def parse(cls, data: bytes) -> CrisisResponses:
        try:
            raw = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InputError("config.invalid", f"crisis responses are not TOML: {exc}") from None
        if raw.get("version") != 1:
            raise InputError("config.invalid", "crisis responses: version 1 expected")
        tenants = raw.get("tenants") or {}
        return cls(_response(raw.get("default"), "default"),
                   {t: _response(v, f"tenants.{t}") for t, v in tenants.items()})


@lru_cache(maxsize=1)
def default_responses() -> CrisisResponses:
    return CrisisResponses.parse(
        resources.files(__package__).joinpath("crisis.toml").read_bytes())


def load_responses(path: Path | None) -> CrisisResponses:
    return default_responses() if path is None else CrisisResponses.parse(path.read_bytes())


class Alerts:
    """The provider's alert queue, in enclave memory, per tenant (bounded; oldest dropped).
    A deployment forwards them to its on-call system; this is what crosses the boundary."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._by_tenant: dict[str, deque[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def raise_alert(self, tenant: str, consent: Consent, level: str, callback: str | None
                    ) -> dict[str, Any] | None:
        if consent == "nothing" or level == "routine":
            return None
        alert: dict[str, Any] = {"id": "alert_" + secrets.token_hex(8), "level": level,
                                 "at": int(self._clock().timestamp())}
        if consent == "callback" and callback:
            alert["callback"] = callback
        with self._lock:
            self._by_tenant.setdefault(tenant, deque(maxlen=MAX_ALERTS_PER_TENANT)).append(alert)
        return alert

    def for_tenant(self, tenant: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(a) for a in self._by_tenant.get(tenant, ())]
