"""Following the access events as they are appended: ``medclave monitor run --follow``.

The access log (:class:`~medclave.auth.access.JsonlAccessLog`) is a JSON-lines file that
services only append to. :class:`Follower` reads what was appended since its cursor, scores each
complete new line (:class:`~medclave.monitor.alerts.Monitor`: deduplicated, explained alerts to
the sinks), and keeps its place in a cursor file: the byte offset after the last event scored,
the file's identity, and the scorer's and deduplicator's state (each user's day so far, the
alerts still inside their dedup window). A restarted follower resumes from the cursor: it
neither scores an event twice nor raises again an alert it raised before the restart.

Why polling: the standard library has no portable file-change notification, and a poll every
``poll_seconds`` (0.2 s by default) bounds the time from an event to its alert well under what a
privacy office needs; one ``stat`` per poll costs nothing.

Delivery is at least once. The cursor is written (atomically: temporary file, fsync, rename)
after each batch of events and at stop. A stop by SIGTERM loses and repeats nothing; a kill
between an alert's delivery and the next cursor write repeats that batch's alerts, never loses
one; a sink that fails (``service.alert_undelivered``) stops the follower with the cursor before
the event whose alert was not delivered, so the next start delivers it.

The file rotated (another inode at the path) or cut shorter than the cursor: the follower starts
at the beginning of the file now there. A line that is not an access event, or longer than
:data:`~medclave.auth.access.MAX_EVENT_LINE`, stops the follower (``input.malformed``,
``input.too_large``) at that line: an event the monitor cannot read is not skipped silently.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from medclave.auth.access import MAX_EVENT_LINE, AccessEvent
from medclave.errors import InputError
from medclave.monitor.alerts import Monitor
from medclave.util.files import write_atomic

log = logging.getLogger("medclave.monitor")
CURSOR_FORMAT: Final = "medclave-monitor-cursor/1"
MAX_CURSOR_BYTES: Final = 64 * 1024 * 1024
MAX_READ: Final = 4 * 1024 * 1024  # bytes read per poll; the rest waits for the next one


@dataclass(frozen=True)
class FollowSummary:
    events: int
    alerts: int
    suppressed: int

    def to_dict(self) -> dict[str, int]:
        return {"events": self.events, "alerts": self.alerts, "suppressed": self.suppressed}


class Follower:
    def __init__(self, events: Path, cursor: Path, monitor: Monitor, *,
                 poll_seconds: float = 0.2) -> None:
        self.events = events
        self.cursor = cursor
        self.monitor = monitor
        self.poll_seconds = poll_seconds
        self.offset = 0
        self.identity: tuple[int, int] | None = None
        self.scored = 0
        self.alerts = 0
        self._load()
        self._saved = (self.monitor.scorer.state(), self.monitor.dedup.state())

    # --- the cursor ------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            size = self.cursor.stat().st_size
        except FileNotFoundError:
            return  # first start: from the beginning of the file
        if size > MAX_CURSOR_BYTES:
            raise InputError("input.too_large", f"cursor {self.cursor.name} is too large")
        try:
            state = json.loads(self.cursor.read_bytes())
            if not isinstance(state, dict) or state.get("format") != CURSOR_FORMAT:
                raise ValueError("not a monitor cursor")
            offset, identity = int(state["offset"]), state["identity"]
            self.identity = None if identity is None else (int(identity[0]), int(identity[1]))
            if offset < 0:
                raise ValueError("negative offset")
            self.offset = offset
            self.monitor.scorer.restore(state["scorer"])
            self.monitor.dedup.restore(state["dedup"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InputError("input.malformed", f"cursor {self.cursor.name}: {exc}") from None

    def save(self) -> None:
        self._saved = (self.monitor.scorer.state(), self.monitor.dedup.state())
        state = {"format": CURSOR_FORMAT, "offset": self.offset,
                 "identity": None if self.identity is None else list(self.identity),
                 "scorer": self._saved[0], "dedup": self._saved[1]}
        write_atomic(self.cursor, json.dumps(state, separators=(",", ":")).encode())

    # --- reading ---------------------------------------------------------------------------

    def poll(self) -> int:
        """Score every complete line appended since the cursor; 0 when there was none."""
        try:
            fh = self.events.open("rb")
        except FileNotFoundError:
            return 0  # not written yet
        with fh:
            info = os.fstat(fh.fileno())
            identity = (info.st_dev, info.st_ino)
            if identity != self.identity or info.st_size < self.offset:
                if self.identity is not None:
                    log.warning("access event file replaced or cut: reading it from the start")
                self.identity, self.offset = identity, 0
            if info.st_size == self.offset:
                return 0
            fh.seek(self.offset)
            chunk = fh.read(min(info.st_size - self.offset, MAX_READ))
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) > MAX_EVENT_LINE:
                raise InputError("input.too_large", f"{self.events.name} at byte "
                                 f"{self.offset}: line too long")
            return 0  # a line still being written
        done: list[AccessEvent] = []
        start = self.offset
        try:
            # Split on b"\n" only (bytes.splitlines would also split on \r and others, which
            # JSON strings may hold escaped but a writer may also have put in raw).
            for body in chunk[:end].split(b"\n"):
                line = body + b"\n"
                event = self._parse(line)
                if event is not None:
                    if self.monitor.observe(event) is not None:
                        self.alerts += 1
                    done.append(event)
                self.offset += len(line)
        except BaseException:
            # The cursor must say "before this event": back to the state the last save wrote,
            # then the events before it again, without their alerts (already delivered). The
            # scorer and the deduplicator are deterministic, so this is the state they had.
            self.monitor.scorer.restore(self._saved[0])
            self.monitor.dedup.restore(self._saved[1])
            for event in done:
                self.monitor.replay(event)
            if self.offset != start:
                self.scored += len(done)
                self.save()
            raise
        self.scored += len(done)
        self.save()
        return len(done) or 1

    def _parse(self, line: bytes) -> AccessEvent | None:
        where = f"{self.events.name} at byte {self.offset}"
        if len(line) > MAX_EVENT_LINE:
            raise InputError("input.too_large", f"{where}: line too long")
        if not line.strip():
            return None
        try:
            data = json.loads(line)
        except ValueError:
            raise InputError("input.malformed", f"{where}: not JSON") from None
        if not isinstance(data, dict):
            raise InputError("input.malformed", f"{where}: not an object")
        try:
            return AccessEvent.from_dict(data)
        except InputError as exc:
            raise InputError(exc.code, f"{where}: {exc.detail}") from None

    def run(self, stop: threading.Event) -> FollowSummary:
        """Poll until ``stop`` is set (the CLI sets it on SIGTERM and SIGINT), then save."""
        self.save()  # the cursor exists from the start (and its folder is writable)
        log.info("following access events (poll every %.2f s)", self.poll_seconds)
        try:
            while not stop.is_set():
                if self.poll() == 0:
                    stop.wait(self.poll_seconds)
        finally:
            self.save()
        log.info("stopped: %d events scored, %d alerts", self.scored, self.alerts)
        return FollowSummary(self.scored, self.alerts, self.monitor.dedup.suppressed)


def cursor_state(path: Path) -> dict[str, Any]:
    """A cursor file's contents (for tests and for an operator's look)."""
    state = json.loads(path.read_bytes())
    if not isinstance(state, dict):
        raise InputError("input.malformed", "not a monitor cursor")
    return state
