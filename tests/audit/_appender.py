"""Child process for the crash test: appends bursts forever, printing each acknowledgement.

Usage: python _appender.py DB SKEY SEED. An ``ack FIRST COUNT`` line is printed only after
``append_batch`` returned, i.e. after the batch was committed.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from tests.audit._builders import ORIGIN, make_entry


def main() -> None:
    path, skey, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    log = AuditLog.open_sqlite(path, origin=ORIGIN, signer=NoteSigner.from_skey(skey))
    print(f"ready {log.size}", flush=True)
    while True:
        first = log.size
        batch = [make_entry(i) for i in range(first, first + rng.randint(1, 400))]
        ack = log.append_batch(batch)
        print(f"ack {ack.first} {ack.count}", flush=True)


if __name__ == "__main__":
    main()
