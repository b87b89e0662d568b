"""Sealed-model throughput: seal and unseal (into a memfd) against plain reads of the same file.

Baselines, measured in the same run on the same file (both in the page cache):
  plain read       read the plaintext with large readinto calls: the cost of loading an
                   unsealed model; the goal is unseal >= 0.7x of this
  read + sha256    what verifying an unsealed model's digest costs; unseal has to do at least
                   this, so it bounds unseal from above on machines where SHA-256 is the slower part
  read -> memfd    an unsealed model copied into an anonymous memory file: unseal minus the
                   cryptography

Each operation runs once per round, the five alternating in MEDCLAVE_BENCH_ROUNDS rounds
(benchmarks._common). Size: MEDCLAVE_BENCH_SEALED_MIB (default 256) or
``python -m benchmarks.crypto_sealed 64``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._common import Goal, Report, env_int, interleave
from medclave.crypto import sealed

CHUNK = sealed.DEFAULT_CHUNK_SIZE


def _plain_read(path: Path) -> None:
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f, memoryview(buf) as view:
        while f.readinto(view):
            pass


def _read_sha256(path: Path) -> None:
    sha = hashlib.sha256()
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as f, memoryview(buf) as view:
        while n := f.readinto(view):
            sha.update(view[:n])


def _read_to_memfd(path: Path) -> None:
    buf = bytearray(CHUNK)
    fd = os.memfd_create("bench", os.MFD_CLOEXEC)
    try:
        with open(path, "rb", buffering=0) as f, memoryview(buf) as view:
            while n := f.readinto(view):
                os.write(fd, view[:n])
    finally:
        os.close(fd)


def _mb_per_s(fn: Callable[[], object], size: int) -> float:
    start = time.perf_counter()
    fn()
    return size / (time.perf_counter() - start) / 1e6


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    mib = int(args[0]) if args else env_int("MEDCLAVE_BENCH_SEALED_MIB", 256)
    size = mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="medclave-bench-") as tmp:
        src = Path(tmp) / "model.gguf"
        with open(src, "wb") as f:
            for _ in range(0, size, CHUNK):
                f.write(os.urandom(min(CHUNK, size - f.tell())))
        _plain_read(src)  # warm the page cache

        key = os.urandom(32)
        kept, scratch = Path(tmp) / "kept", Path(tmp) / "scratch"
        sealed.seal_file(src, kept, owner="bench", key=key)  # what unseal reads, every round
        _plain_read(kept / sealed.PAYLOAD_NAME)  # same cache state as the source

        def seal() -> float:
            shutil.rmtree(scratch, ignore_errors=True)  # seal_file refuses a sealed folder
            return _mb_per_s(lambda: sealed.seal_file(src, scratch, owner="bench", key=key),
                             size)

        def unseal() -> None:
            fd, _ = sealed.open_to_memfd(kept, key)
            os.close(fd)

        got = interleave({
            "read": lambda: _mb_per_s(lambda: _plain_read(src), size),
            "sha": lambda: _mb_per_s(lambda: _read_sha256(src), size),
            "memfd": lambda: _mb_per_s(lambda: _read_to_memfd(src), size),
            "seal": seal,
            "unseal": lambda: _mb_per_s(unseal, size),
        })

    base = got["read"]
    report = Report("crypto_sealed", f"sealed model, {mib} MiB, chunk {CHUNK >> 20} MiB, "
                    "one pass per operation per round")
    report.baseline("plain read", base, "MB/s")
    report.row("read + sha256", got["sha"], "MB/s", baseline=base)
    report.row("read -> memfd", got["memfd"], "MB/s", baseline=base)
    report.row("seal (2 passes)", got["seal"], "MB/s", baseline=base)
    report.row("unseal to memfd", got["unseal"], "MB/s", baseline=base,
               goal=Goal(">=", 0.7, on="ratio"))
    report.ratio_note("unseal vs read + sha256", got["unseal"], got["sha"])
    report.ratio_note("unseal vs read -> memfd", got["unseal"], got["memfd"])
    report.emit()


if __name__ == "__main__":
    main()
