"""The triage chat inside the enclave: ``/v1/medclave/conversations`` and the provider's alerts.

Routes (inside the encapsulation, the share in the ``medclave-share`` header):

* ``POST /v1/medclave/conversations`` ``{"share_with_provider": "nothing"|"level"|"callback",
  "callback": "..."}``: a new sealed conversation (201).
* ``GET /v1/medclave/conversations``: the caller's own conversations.
* ``GET /v1/medclave/conversations/{id}``: export, every turn verified.
* ``DELETE /v1/medclave/conversations/{id}``.
* ``POST /v1/medclave/conversations/{id}/turns`` ``{"content": "...", "stream": bool}``: the
  message is screened (:mod:`.screening`) and sealed before the model runs; a positive screen
  puts the tenant's crisis response (:mod:`.crisis`) first in the answer, ahead of any model
  text, with the triage level; the model's answer is sealed as the next turn once recorded.
* ``GET /v1/medclave/triage/alerts``: the provider's alerts (staff roles only): level, time and,
  if the patient agreed, a callback number; never the conversation.

Only the patient role uses conversations: staff are refused ``auth.forbidden`` whatever the id,
and another patient's id reads ``sealing.not_found`` like one that does not exist.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medclave.apps.triage import prompt as prompts
from medclave.apps.triage.crisis import CONSENTS, Alerts, CrisisResponses, load_responses
from medclave.apps.triage.screening import Lexicon, Screen, load_lexicon, screen
from medclave.enclave.engines.base import Choice, Completion, Delta
from medclave.enclave.hooks import Principal
from medclave.enclave.inner_apps import AppAnswer, AppContext, ChatTurn
from medclave.enclave.sealing.conversations import (
    Opened,
    SealedConversations,
    parse_share,
)
from medclave.errors import AuthError, EnclaveError, MedclaveError
from medclave.protocol import inference as proto

log = logging.getLogger("medclave.triage")
_ID = r"conv_[0-9a-f]{32}"
_ONE = re.compile(rf"^{proto.CONVERSATIONS_PATH}/({_ID})$")
_TURNS = re.compile(rf"^{proto.CONVERSATIONS_PATH}/({_ID})/turns$")
_CALLBACK = re.compile(r"^\+?[0-9 ()-]{7,20}$")
MAX_MESSAGE = 4000


def _sse(value: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True)
class TriageConfig:
    patient_roles: tuple[str, ...] = ("patient",)
    staff_roles: tuple[str, ...] = ("clinician", "admin")
    history_turns: int = 8
    max_tokens: int = 256


class TriageApp:
    def __init__(self, sealed: SealedConversations, *, clock: Callable[[], datetime],
                 lexicon: Lexicon | None = None, responses: CrisisResponses | None = None,
                 system_prompt: str | None = None, config: TriageConfig = TriageConfig()
                 ) -> None:
        self.sealed = sealed
        self.clock = clock
        self.lexicon = lexicon or load_lexicon(None)
        self.responses = responses or load_responses(None)
        self.system_prompt = system_prompt or prompts.default_prompt()
        self.config = config
        self.alerts = Alerts(clock)

    @classmethod
    def from_context(cls, context: AppContext) -> TriageApp:
        s = context.settings
        return cls(context.sealed, clock=context.clock,
                   lexicon=load_lexicon(s.triage_lexicon_file),
                   responses=load_responses(s.triage_crisis_file),
                   system_prompt=prompts.load_prompt(s.triage_prompt_file),
                   config=TriageConfig(patient_roles=s.triage_patient_roles,
                                       staff_roles=s.triage_staff_roles,
                                       max_tokens=min(256, s.max_tokens_limit)))

    def handles(self, path: str) -> bool:
        return path == proto.CONVERSATIONS_PATH or path.startswith(
            proto.CONVERSATIONS_PATH + "/") or path == proto.TRIAGE_ALERTS_PATH

    # --- routing -------------------------------------------------------------------------------

    def handle(self, request: proto.InnerRequest, principal: Principal) -> AppAnswer | ChatTurn:
        path, method = request.path, request.method
        if path == proto.TRIAGE_ALERTS_PATH:
            self._allow(method, "GET", path)
            if not set(principal.roles) & set(self.config.staff_roles):
                raise AuthError("auth.forbidden", "alerts are for the provider's staff")
            return AppAnswer(200, {"object": "list",
                                   "data": self.alerts.for_tenant(principal.tenant)})
        if not set(principal.roles) & set(self.config.patient_roles):
            # Staff never open conversations, whichever id they name: refused before any lookup.
            raise AuthError("auth.forbidden", "sealed conversations are the patient's own")
        tenant, subject = principal.tenant, principal.subject
        if (m := _ONE.match(path)) and method == "DELETE":
            # The token is enough: a conversation whose share was lost can still be removed.
            self.sealed.delete(tenant, subject, m.group(1))
            return AppAnswer(200, {"id": m.group(1), "deleted": True})
        share = parse_share(request.header(proto.SHARE_HEADER))
        if path == proto.CONVERSATIONS_PATH:
            if method == "POST":
                return self._create(tenant, subject, share, request.json())
            self._allow(method, "GET", path)
            return AppAnswer(200, {"object": "list", "data": [
                {"id": s.conversation, "readable": s.readable, "turns": s.turns, **s.meta}
                for s in self.sealed.list(tenant, subject, share)]})
        if m := _ONE.match(path):
            self._allow(method, "GET", path)
            opened = self.sealed.open(tenant, subject, m.group(1), share)
            return AppAnswer(200, {"object": "conversation", **opened.public()})
        if m := _TURNS.match(path):
            self._allow(method, "POST", path)
            return self._turn(tenant, subject, m.group(1), share, request.json())
        raise EnclaveError("enclave.no_route", f"no route {path[:200]}")

    @staticmethod
    def _allow(method: str, expected: str, path: str) -> None:
        if method != expected:
            raise EnclaveError("enclave.method_not_allowed", f"{path[:200]} takes {expected}")

    def _create(self, tenant: str, subject: str, share: bytes, body: Any) -> AppAnswer:
        body = body if isinstance(body, dict) else {}
        consent = body.get("share_with_provider", "nothing")
        callback = body.get("callback")
        if consent not in CONSENTS:
            raise EnclaveError("enclave.bad_request", "share_with_provider: nothing, level or "
                               "callback", param="share_with_provider")
        if consent == "callback" and not (isinstance(callback, str) and
                                          _CALLBACK.fullmatch(callback)):
            raise EnclaveError("enclave.bad_request", "callback: a telephone number",
                               param="callback")
        meta: dict[str, Any] = {"share_with_provider": consent}
        if consent == "callback":
            meta["callback"] = callback
        opened = self.sealed.create(tenant, subject, share, meta)
        return AppAnswer(201, {"object": "conversation", **opened.public()})

    # --- a turn --------------------------------------------------------------------------------

    def _turn(self, tenant: str, subject: str, conversation: str, share: bytes, body: Any
              ) -> TriageTurn:
        if not isinstance(body, dict):
            raise EnclaveError("enclave.bad_request", "a JSON object with content")
        content = body.get("content")
        if not isinstance(content, str) or not content.strip() or len(content) > MAX_MESSAGE:
            raise EnclaveError("enclave.bad_request", f"content: 1 to {MAX_MESSAGE} characters",
                               param="content")
        opened = self.sealed.open(tenant, subject, conversation, share)
        result = screen(content, self.lexicon)  # before the model, whatever it would say
        now = int(self.clock().timestamp())
        opened = self.sealed.append(tenant, subject, conversation, share, {
            "role": "user", "content": content, "at": now, "triage": result.level})
        self.alerts.raise_alert(tenant, opened.meta.get("share_with_provider", "nothing"),
                                result.level, opened.meta.get("callback"))
        crisis = (self.responses.for_tenant(tenant).public(result.level) if result.crisis
                  else None)
        messages = prompts.messages(self.system_prompt, list(opened.turns[:-1]), content,
                                    crisis=result.crisis,
                                    history_turns=self.config.history_turns)
        # Nothing about the turn is logged: even its triage level is the patient's to share
        # (alerts carry it only with their consent).
        return TriageTurn(self, tenant, subject, share, opened, result, crisis,
                          {"messages": messages, "stream": body.get("stream") is True,
                           "max_tokens": self.config.max_tokens, "temperature": 0.3})


class TriageTurn:
    """One patient message: how its answer is shaped (crisis response first) and sealed."""

    def __init__(self, app: TriageApp, tenant: str, subject: str, share: bytes, opened: Opened,
                 result: Screen, crisis: dict[str, Any] | None, body: dict[str, Any]) -> None:
        self.app, self.tenant, self.subject, self.share = app, tenant, subject, share
        self.opened, self.result, self.crisis, self.body = opened, result, crisis, body
        self.saved: Opened | None = None
        self.failure: str | None = None

    def chat_body(self) -> dict[str, Any]:
        return self.body

    def head(self) -> dict[str, Any]:
        return {"conversation": self.opened.conversation,
                "triage": {"level": self.result.level}, "crisis": self.crisis,
                "turn": len(self.opened.turns) - 1}

    def answer(self, rid: str, created: int, model: str, completion: Completion
               ) -> dict[str, Any]:
        choice = completion.all_choices[0]
        return {"object": "conversation.turn", **self.head(), "reply": choice.text,
                "finish_reason": choice.finish_reason}

    def remember(self, rid: str, answer: Choice) -> None:
        try:
            self.saved = self.app.sealed.append(
                self.tenant, self.subject, self.opened.conversation, self.share,
                {"role": "assistant", "content": answer.text,
                 "at": int(self.app.clock().timestamp())})
        except MedclaveError as exc:  # the patient is told in the last event (not saved)
            self.failure = exc.code
            log.error("triage answer not sealed: %s", exc.code)

    def shaper(self, rid: str, created: int, model: str) -> TurnShaper:
        return TurnShaper(self)


class TurnShaper:
    """Server-sent events: the triage head (level and crisis response) before any model text,
    then the model's deltas, then where the answer was sealed."""

    def __init__(self, turn: TriageTurn) -> None:
        self.turn = turn

    def first(self) -> bytes:
        return _sse({"type": "triage", **self.turn.head()})

    def delta(self, d: Delta) -> bytes:
        return _sse({"type": "delta", "text": d.text}) if d.text else b""

    def error(self, code: str, message: str) -> bytes:
        return _sse({"type": "error", "error": {"code": code, "message": message}})

    def done(self) -> bytes:
        saved = self.turn.saved
        end: dict[str, Any] = {"type": "done", "saved": saved is not None}
        if saved is not None:
            end.update(turn=len(saved.turns) - 1, chain=saved.chains[-1])
        elif self.turn.failure:
            end["error"] = {"code": self.turn.failure}
        return _sse(end) + b"data: [DONE]\n\n"
