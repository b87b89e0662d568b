"""Sealed-model throughput: seal and unseal (into a memfd) against plain reads of the same file.

Baselines, measured in the same run on the same file (both in the page cache):
  plain read       read the plaintext with large readinto calls: the cost of loading an
                   unsealed model; the goal is unseal >= 0.7x of this
  read + sha256    what verifying an unsealed model's digest costs; unseal has to do at least
                   this, so it bounds unseal from above on machines where SHA-256 is the slower part
  read -> memfd    an unsealed model copied into an anonymous memory file: unseal minus the
                   cryptography

Size: MEDCLAVE_BENCH_SEALED_MIB (default 256) or ``python -m benchmarks.crypto_sealed 64``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    mib = int(args[0]) if args else int(os.environ.get("MEDCLAVE_BENCH_SEALED_MIB", "256"))
    size = mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="medclave-bench-") as tmp:
        src = Path(tmp) / "model.gguf"
        with open(src, "wb") as f:
            for _ in range(0, size, CHUNK):
                f.write(os.urandom(min(CHUNK, size - f.tell())))
        _plain_read(src)  # warm the page cache

        counter = iter(range(1_000_000))
        key = os.urandom(32)

        def seal() -> None:
            sealed.seal_file(src, Path(tmp) / f"s{next(counter)}", owner="bench", key=key)

        def unseal() -> None:
            fd, _ = sealed.open_to_memfd(Path(tmp) / "s0", key)
            os.close(fd)

        t_read = _best(lambda: _plain_read(src), 3)
        t_sha = _best(lambda: _read_sha256(src), 3)
        t_copy = _best(lambda: _read_to_memfd(src), 3)
        t_seal = _best(seal, 2)
        _plain_read(Path(tmp) / "s0" / sealed.PAYLOAD_NAME)  # same cache state as the source
        t_unseal = _best(unseal, 3)

    rows = [("plain read (baseline)", t_read), ("read + sha256", t_sha),
            ("read -> memfd", t_copy), ("seal (2 passes)", t_seal),
            ("unseal to memfd", t_unseal)]
    print(f"sealed model, {mib} MiB, chunk {CHUNK >> 20} MiB, best of 2-3 runs")
    print(f"{'operation':<24}{'MB/s':>10}{'vs plain read':>16}")
    for name, seconds in rows:
        print(f"{name:<24}{size / seconds / 1e6:>10.0f}{t_read / seconds:>15.2f}x")
    print(f"unseal vs read + sha256: {t_sha / t_unseal:.2f}x; "
          f"vs read -> memfd: {t_copy / t_unseal:.2f}x")


if __name__ == "__main__":
    main()
