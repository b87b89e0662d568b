"""Run every benchmark module (or those named on the command line) in one process, in order.

``MEDCLAVE_BENCH_OUT=path.json`` also writes every table as one JSON document (see
``_common.write_results``); ``MEDCLAVE_BENCH_ROUNDS`` sets the rounds of every figure (>= 5).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import rounds, write_results


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")
    )
    out = os.environ.get("MEDCLAVE_BENCH_OUT")
    meta: dict[str, object] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(), "rounds": rounds(), "load_before": os.getloadavg(),
    }
    failed = []
    seconds: dict[str, float] = {}
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
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"({seconds[name]:.1f}s)")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    if out:
        meta.update(load_after=os.getloadavg(), seconds=seconds, failed=failed)
        write_results(Path(out), meta)
        print(f"results: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
