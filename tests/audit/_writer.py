"""Child process for the several-writers crash test: one enclave replica's audit writer.

Usage: python _writer.py KIND WHERE SKEY BASE. Opens the shared log as the enclave does
(``AuditLog.resume``), then four threads append entries ``make_entry(BASE + n)`` forever, each
building the receipt the enclave would hand back and only then printing
``ack INDEX ID RECEIPT_B64``: a printed line is an acknowledged entry.
"""

from __future__ import annotations

import base64
import itertools
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from tests.audit._backends import Backend
from tests.audit._builders import ORIGIN, make_entry


def main() -> None:
    kind, where, skey, base = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    log = AuditLog.resume(Backend(kind, where).open(), origin=ORIGIN,
                          signer=NoteSigner.from_skey(skey))
    counter = itertools.count(base)
    out = threading.Lock()

    def run() -> None:
        while True:
            ident = next(counter)
            index = log.append(make_entry(ident))
            receipt = base64.b64encode(log.receipt(index).to_json()).decode()
            with out:
                sys.stdout.write(f"ack {index} {ident} {receipt}\n")
                sys.stdout.flush()

    print("ready", flush=True)
    threads = [threading.Thread(target=run, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
