"""Sealed conversations from the SDK: ``client.conversations`` (see docs/triage.md).

The client share is 32 random bytes the patient's app makes once and keeps
(:func:`load_or_create_share`: a 0600 file); it travels only inside the encapsulated request
(the ``medclave-share`` header) and the enclave never stores it. Lose it and the history is
unreadable for good: export while you hold it.

    share = load_or_create_share(Path("~/.medclave/share").expanduser())
    chat = client.conversations
    conv = chat.create(share, share_with_provider="level")
    for event in chat.send(share, conv["id"], "I can't sleep", stream=True):
        ...  # {"type": "triage", ...}, {"type": "delta", "text": ...}, {"type": "done", ...}
"""

from __future__ import annotations

import base64
import builtins
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medclave.client.session import error_from_body
from medclave.errors import ClientError, InputError, SealingError
from medclave.protocol import inference as proto
from medclave.util.files import create_secret_file

if TYPE_CHECKING:
    from medclave.client.sdk import MedclaveClient

SHARE_BYTES = 32


def new_share() -> bytes:
    return secrets.token_bytes(SHARE_BYTES)


def encode_share(share: bytes) -> str:
    if len(share) != SHARE_BYTES:
        raise InputError("input.malformed", "a client share is 32 bytes")
    return base64.urlsafe_b64encode(share).rstrip(b"=").decode()


def load_or_create_share(path: Path) -> bytes:
    """The share kept in ``path`` (made, mode 0600, if absent)."""
    share = new_share()
    try:
        create_secret_file(path, share)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) != SHARE_BYTES:
            raise InputError("input.malformed", f"{path.name} is not a 32-byte share") from None
        return data
    return share


def sse_events(pieces: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    buffer = b""
    for piece in pieces:
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                data = line[5:].strip() if line.startswith(b"data:") else b""
                if not data or data == b"[DONE]":
                    continue
                try:
                    value = json.loads(data)
                except (ValueError, RecursionError) as exc:
                    raise ClientError("client.upstream_failed", "an event is not JSON") from exc
                if isinstance(value, dict):
                    yield value


def check_not_rolled_back(exported: dict[str, Any], seen: tuple[int, str]) -> None:
    """The exported conversation still holds the state ``(turns, chain)`` seen before."""
    count, chain = seen
    if count <= 0:
        return
    turns = exported.get("turns")
    if not isinstance(turns, list) or len(turns) < count or not isinstance(
            turns[count - 1], dict) or turns[count - 1].get("chain") != chain:
        raise SealingError("sealing.integrity_failed", "the conversation is older than a "
                           "state this app has seen: it was rolled back")


class Conversations:
    def __init__(self, client: MedclaveClient) -> None:
        self._client = client

    def _call(self, method: str, path: str, share: bytes, body: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        answer = self._client.session.request(
            method, path, body=b"" if body is None else json.dumps(body).encode(),
            authorization=self._client.authorization(),
            headers=((proto.SHARE_HEADER, encode_share(share)),))
        if answer.status not in (200, 201):
            raise error_from_body(answer.status, answer.body)
        value = json.loads(answer.body)
        if answer.receipt is not None:
            self._client.last_receipt = answer.receipt
        if not isinstance(value, dict):
            raise ClientError("client.upstream_failed", "the enclave answered a non-object")
        return value

    def create(self, share: bytes, *, share_with_provider: str = "nothing",
               callback: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"share_with_provider": share_with_provider}
        if callback is not None:
            body["callback"] = callback
        return self._call("POST", proto.CONVERSATIONS_PATH, share, body)

    def list(self, share: bytes) -> list[dict[str, Any]]:
        data = self._call("GET", proto.CONVERSATIONS_PATH, share).get("data")
        return list(data) if isinstance(data, list) else []

    def export(self, share: bytes, conversation: str, *,
               seen: tuple[int, str] | None = None) -> dict[str, Any]:
        """Every turn, verified by the enclave against the sealed chain. ``seen``: the turn
        count and chain value of the latest state this app saw (an answer's ``turn`` + 1 and
        ``chain``); an older state (the operator restored a copy of the store, which the
        enclave alone cannot tell) is ``sealing.integrity_failed``."""
        value = self._call("GET", f"{proto.CONVERSATIONS_PATH}/{conversation}", share)
        if seen is not None:
            check_not_rolled_back(value, seen)
        return value

    def delete(self, conversation: str) -> None:
        """Delete one of the caller's conversations (no share needed: one whose share was lost
        can still be removed)."""
        answer = self._client.session.request(
            "DELETE", f"{proto.CONVERSATIONS_PATH}/{conversation}",
            authorization=self._client.authorization())
        if answer.status != 200:
            raise error_from_body(answer.status, answer.body)

    def send(self, share: bytes, conversation: str, content: str, *, stream: bool = False
             ) -> Any:
        """The whole turn (``dict``), or with ``stream=True`` an iterator of events: the
        triage head first (level, crisis response), then the model's text, then ``done``."""
        path = f"{proto.CONVERSATIONS_PATH}/{conversation}/turns"
        body = {"content": content, "stream": stream}
        if not stream:
            return self._call("POST", path, share, body)
        streamed = self._client.session.stream(
            "POST", path, body=json.dumps(body).encode(),
            authorization=self._client.authorization(),
            headers=((proto.SHARE_HEADER, encode_share(share)),))
        if streamed.status != 200:
            raise error_from_body(streamed.status, b"".join(streamed.iter_content()))

        def events() -> Iterator[dict[str, Any]]:
            yield from sse_events(streamed.iter_content())
            self._client.last_receipt = streamed.receipt
        return events()

    def alerts(self) -> builtins.list[dict[str, Any]]:
        """The provider's triage alerts (staff tokens only): level, time, callback if agreed."""
        answer = self._client.session.request("GET", proto.TRIAGE_ALERTS_PATH,
                                              authorization=self._client.authorization())
        if answer.status != 200:
            raise error_from_body(answer.status, answer.body)
        data = json.loads(answer.body).get("data")
        return list(data) if isinstance(data, list) else []
