"""Run every benchmark module (or those named on the command line) in one process, in order."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")
    )
    failed = []
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        start = time.perf_counter()
        # Each module reads its own options from sys.argv; give it none.
        saved, sys.argv = sys.argv, [f"benchmarks.{name}"]
        try:
            importlib.import_module(f"benchmarks.{name}").main()
        except Exception as exc:  # report and go on: one broken benchmark must not hide the rest
            failed.append(name)
            print(f"FAILED: {type(exc).__name__}: {exc}")
        finally:
            sys.argv = saved
        print(f"({time.perf_counter() - start:.1f}s)")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
