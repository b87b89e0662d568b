"""A process that cannot create or write files: Landlock (Linux 5.13+), by its three syscalls.

The transcription worker (:mod:`medclave.enclave.speech`) calls :func:`forbid_writes` once its
model is loaded. Landlock (``Documentation/userspace-api/landlock.rst``) restricts the calling
process and its future children: a ruleset that *handles* every write-like filesystem right and
grants none of them to any path makes every open for writing, every create, rename, link,
truncate and remove fail with ``EACCES``, everywhere, ``/tmp`` and ``/dev/shm`` included;
reading stays allowed (the right is not handled). Where the kernel's Landlock ABI has them, TCP
bind and connect are denied too (ABI 4), and so are abstract UNIX sockets and signals to
processes outside the sandbox (ABI 6). Descriptors opened before (the pipe to the parent) keep
working, and anonymous memory (``memfd``) is not a path, so it is unaffected.

No library wraps these syscalls for Python (the ``landlock`` PyPI package is a thin ctypes
wrapper of the same calls, unmaintained), so they are called here through ``ctypes``, with the
x86-64 and arm64 numbers (the same on both: 444, 445, 446).

The sandbox is *claimed* only after it is *proved*: :func:`forbid_writes` then tries to create a
file in the temporary folder and in ``/dev/shm`` and reports active only if both are refused.
Where the kernel has no Landlock (or seccomp forbids it), it reports why, and the enclave's
attested runtime says ``speech_sandbox: "none"``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import sys
from dataclasses import dataclass
from typing import Final

_CREATE_RULESET: Final = 444
_RESTRICT_SELF: Final = 446
_CREATE_RULESET_VERSION: Final = 1 << 0
_PR_SET_NO_NEW_PRIVS: Final = 38

# landlock.h: filesystem access rights and the ABI version that introduced each.
_FS_WRITE_RIGHTS: Final = (
    (1 << 1, 1),   # WRITE_FILE
    (1 << 4, 1),   # REMOVE_DIR
    (1 << 5, 1),   # REMOVE_FILE
    (1 << 6, 1),   # MAKE_CHAR
    (1 << 7, 1),   # MAKE_DIR
    (1 << 8, 1),   # MAKE_REG
    (1 << 9, 1),   # MAKE_SOCK
    (1 << 10, 1),  # MAKE_FIFO
    (1 << 11, 1),  # MAKE_BLOCK
    (1 << 12, 1),  # MAKE_SYM
    (1 << 13, 2),  # REFER
    (1 << 14, 3),  # TRUNCATE
)
_NET_BIND_TCP: Final = 1 << 0
_NET_CONNECT_TCP: Final = 1 << 1
_SCOPE_ABSTRACT_UNIX: Final = 1 << 0
_SCOPE_SIGNAL: Final = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


@dataclass(frozen=True)
class SandboxState:
    """``mechanism`` is ``"landlock"`` when active (proved), else ``"none"`` and ``reason``."""

    active: bool
    mechanism: str
    abi: int = 0
    reason: str = ""


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0),
                              ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return int(version) if version > 0 else 0


def _probe_refused(folder: str) -> bool:
    """Whether creating a file in ``folder`` is refused (True also when the folder is absent)."""
    if not os.path.isdir(folder):
        return True
    path = os.path.join(folder, f".medclave-sandbox-probe-{secrets.token_hex(8)}")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except PermissionError:
        return True
    except OSError as exc:
        return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    os.close(fd)
    os.unlink(path)
    return False


def forbid_writes() -> SandboxState:
    """Restrict this process (irreversibly) so that it can create and write no file."""
    abi = landlock_abi()
    if abi < 1:
        return SandboxState(False, "none", 0, "the kernel offers no Landlock")
    libc = _libc()
    fs = 0
    for right, since in _FS_WRITE_RIGHTS:
        if abi >= since:
            fs |= right
    attr = _RulesetAttr(handled_access_fs=fs,
                        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        scoped=(_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0)
    # The struct grew with the ABI; the kernel refuses unknown trailing fields that are not 0,
    # so older kernels get only the part they know.
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        return SandboxState(False, "none", abi,
                            f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return SandboxState(False, "none", abi,
                                f"no_new_privs: {os.strerror(ctypes.get_errno())}")
        if libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            return SandboxState(False, "none", abi,
                                f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    # Not tempfile.gettempdir(): it looks for a writable folder by writing a file in each.
    folders = {os.environ.get("TMPDIR") or "/tmp", "/tmp", "/dev/shm"}  # noqa: S108  # probed
    if not all(_probe_refused(folder) for folder in sorted(folders)):
        return SandboxState(False, "none", abi, "a probe file could still be created")
    return SandboxState(True, "landlock", abi)
