"""Applications served inside the encapsulation beside the OpenAI API (the triage chat is the
first): what they give the enclave, and what it gives them.

The enclave owns the door (decapsulation, replay, the token and Cedar), inference (fair turns,
limits, streaming, the audit record) and the encapsulated answer; an :class:`InnerApp` owns a
path prefix and answers a request either with JSON (:class:`AppAnswer`: no inference, so no
audit entry, like listing models) or with a :class:`ChatTurn`: a chat request the enclave runs
like any other, whose answer the app shapes and keeps. Applications live on layer 5
(``medclave.apps``) and are handed to :func:`medclave.enclave.boot.boot` by whoever wires the
enclave (the CLI), so the enclave never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from medclave.enclave.engines.base import Choice, Completion
from medclave.enclave.streaming import Shaper

if TYPE_CHECKING:
    from medclave.enclave.hooks import Principal
    from medclave.enclave.sealing.conversations import SealedConversations
    from medclave.enclave.settings import EnclaveSettings
    from medclave.protocol.inference import InnerRequest


@dataclass(frozen=True)
class AppAnswer:
    status: int
    body: dict[str, Any]


class ChatTurn(Protocol):
    """One chat request an app asks the enclave to run (the Responses API's ``Conversation``
    is one too)."""

    def chat_body(self) -> dict[str, Any]:
        """The chat completions request (validated by the chat path)."""
        ...

    def shaper(self, rid: str, created: int, model: str) -> Shaper: ...

    def answer(self, rid: str, created: int, model: str, completion: Completion
               ) -> dict[str, Any]:
        """The whole (not streamed) answer's body."""
        ...

    def remember(self, rid: str, answer: Choice) -> None:
        """Called once the answer is recorded, when it ended normally."""
        ...


class InnerApp(Protocol):
    def handles(self, path: str) -> bool: ...

    def handle(self, request: InnerRequest, principal: Principal) -> AppAnswer | ChatTurn:
        """Raises a :class:`~medclave.errors.MedclaveError` to refuse."""
        ...


@dataclass(frozen=True)
class AppContext:
    """What boot gives an application's factory."""

    settings: EnclaveSettings
    sealed: SealedConversations
    clock: Callable[[], datetime]


AppFactory = Callable[[AppContext], InnerApp]
