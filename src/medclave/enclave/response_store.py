"""Prior Responses API responses, for ``previous_response_id``: in the enclave's memory only.

OpenAI keeps a response (``store``, true by default) so that the next request can continue the
conversation by naming it. Here the state is a conversation of patient data, so it never leaves
the enclave: it lives in this process's memory (never a file, a log line or a reply to the
operator), is lost when the enclave stops, expires after ``ttl`` seconds, and is bounded per
user (``per_user``: that user's oldest goes first) and in all (``max_bytes``: the oldest goes
first). A response belongs to the tenant and user who created it; asking for one that is
another's gets the very answer that a response that never existed gets
(``enclave.response_not_found``), so ids reveal nothing about other users.

What is kept is the conversation as chat messages (the request body's shape), the answer
included; ``instructions`` are not carried into the next turn (OpenAI's rule).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medclave.errors import EnclaveError

Owner = tuple[str, str]  # (tenant, subject)
Message = Mapping[str, Any]


@dataclass(frozen=True)
class _Stored:
    owner: Owner
    messages: tuple[Message, ...]
    expires: float
    size: int


class ResponseStore:
    """Thread-safe; ``clock`` is monotonic seconds."""

    def __init__(self, *, ttl: float, per_user: int, max_bytes: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._per_user = per_user
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, _Stored] = OrderedDict()  # oldest first
        self._by_owner: dict[Owner, OrderedDict[str, None]] = {}
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self._per_user > 0 and self._max_bytes > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, response_id: str, owner: Owner, messages: Sequence[Message]) -> bool:
        """Keep the conversation; False when it cannot be kept (too large, or keeping is off)."""
        size = len(json.dumps(list(messages), ensure_ascii=False, separators=(",", ":")))
        if not self.enabled or size > self._max_bytes:
            return False
        stored = _Stored(owner, tuple(messages), self._clock() + self._ttl, size)
        with self._lock:
            self._expire()
            mine = self._by_owner.setdefault(owner, OrderedDict())
            while len(mine) >= self._per_user:
                self._remove(next(iter(mine)))
            while self._items and self._bytes + size > self._max_bytes:
                self._remove(next(iter(self._items)))
            self._items[response_id] = stored
            self._by_owner.setdefault(owner, OrderedDict())[response_id] = None
            self._bytes += size
        return True

    def get(self, response_id: str, owner: Owner) -> tuple[Message, ...]:
        """The conversation up to and including ``response_id``'s answer, if it is ``owner``'s
        and alive; ``enclave.response_not_found`` otherwise (the same answer either way)."""
        with self._lock:
            self._expire()
            stored = self._items.get(response_id)
            if stored is None or stored.owner != owner:
                raise EnclaveError("enclave.response_not_found",
                                   f"previous response {response_id!r} not found")
            return stored.messages

    def _expire(self) -> None:
        now = self._clock()
        # Insertion order is expiry order (one ttl for all), so the expired are at the front.
        while self._items:
            oldest_id, oldest = next(iter(self._items.items()))
            if oldest.expires > now:
                return
            self._remove(oldest_id)

    def _remove(self, response_id: str) -> None:
        stored = self._items.pop(response_id)
        self._bytes -= stored.size
        mine = self._by_owner[stored.owner]
        del mine[response_id]
        if not mine:
            del self._by_owner[stored.owner]
