"""Writing files safely, and owner-only (0600) secret files: the one implementation.

- :func:`write_atomic` replaces a file so that a crash leaves the old or the new one, never
  half of either (write a temporary file beside it, fsync, rename: POSIX ``rename(2)`` is
  atomic within a file system). The temporary file is made by ``mkstemp``, so it is 0600 and
  its name is unique (two writers never share one).
- :func:`create_file` and :func:`create_secret_file` make a new file and never overwrite one
  (``O_EXCL``): a key already there is someone's key.
- :func:`read_secret_file` and :func:`check_secret_file` refuse a key file others on the
  machine could read (``config.invalid``): a key others can read is theirs too.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from medclave.errors import InputError

Writer = Callable[[IO[bytes]], object]


def write_atomic(path: Path, data: bytes | Writer) -> None:
    """Replace ``path`` with ``data`` (bytes, or a function writing to the open file), durably
    and all at once. The new file has mode 0600; on any error the temporary file is removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes | bytearray | memoryview):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write a new file durably; ``FileExistsError`` if ``path`` exists (never overwritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def create_secret_file(path: Path, data: bytes) -> None:
    """Write a new 0600 key file durably; ``FileExistsError`` if ``path`` exists."""
    create_file(path, data, mode=0o600)


def write_secret_file(path: Path, data: bytes) -> None:
    """Create or replace a 0600 file, atomically (for files rewritten in place: an issuer's
    key on first use, its client and user records)."""
    write_atomic(path, data)


def _refuse_loose(info: os.stat_result, path: Path, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise InputError("config.invalid", f"{what} file {path.name} is not a regular file")
    if info.st_mode & 0o077:
        raise InputError(
            "config.invalid",
            f"{what} file {path.name} has mode {stat.S_IMODE(info.st_mode):04o}; chmod 600 it",
        )
    if info.st_uid != os.geteuid():
        raise InputError("config.invalid", f"{what} file {path.name} belongs to another user")


def check_secret_file(path: Path, what: str) -> None:
    """``config.invalid`` unless ``path`` is a regular file of this user that only this user
    can read or write (mode 0600 or stricter; a symlink is followed, as ``open`` would)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise InputError(
            "config.invalid", f"cannot open {what} file {path.name}: {exc.strerror}"
        ) from exc
    _refuse_loose(info, path, what)


def read_secret_file(path: Path, what: str, *, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of a key file only its owner can read: mode 0600 or stricter, a
    regular file owned by this user, not a symlink; ``config.invalid`` otherwise. Checked on
    the open file, so the file checked is the file read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise InputError(
            "config.invalid", f"cannot open {what} file {path.name}: {exc.strerror}"
        ) from exc
    try:
        _refuse_loose(os.fstat(fd), path, what)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        return fh.read(max_bytes)


def read_secret_text(path: Path, what: str, *, max_bytes: int = 256) -> str:
    """:func:`read_secret_file` for a small text key file (a base64 key and a newline); bytes
    that are not ASCII become U+FFFD, so the key's decoder refuses them."""
    return read_secret_file(path, what, max_bytes=max_bytes).decode("ascii", "replace")
