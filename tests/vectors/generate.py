"""Known-answer vectors for the formats Medclave defines itself (version 1).

Run once, review the JSON, commit it::

    PYTHONPATH=src python -m tests.vectors.generate           # (re)write tests/vectors/*.json
    PYTHONPATH=src python -m tests.vectors.generate --check   # exit 1 unless the files match

Each format is one function registered with ``@vector("file.json")`` (``_kat.py``: the registry,
shared helpers and inputs) that returns the file's content, in a ``kat_*.py`` module imported
below. It computes every output from the format's written definition with primitives
(hashlib, hmac, cryptography's HKDF/AES-GCM/ECDSA, hand-written canonical JSON) and only then asks
the library for the same values, stopping with an error if the two disagree: a vector is never a
snapshot of whatever the code happened to do. Inputs are fixed hex constants, so a rerun writes
the same bytes (the EAR signature too: it is the deterministic ECDSA of RFC 6979).

Adding a format (the key broker's signed release answer, say) is one more ``@vector`` function,
in an existing ``kat_*.py`` or a new one added to the import line below; ``test_known_answers``
refuses a vector file the generator does not produce.
"""

from __future__ import annotations

import argparse
import json
import sys

from tests.vectors import (  # noqa: F401  (they register)
    kat_attestation,
    kat_audit,
    kat_sealed,
    kat_sealing,
    kat_threshold,
    kat_trust,
)
from tests.vectors._kat import HERE, VECTORS, Vector

__all__ = ["VECTORS", "main", "render"]


def render(content: Vector) -> bytes:
    return (json.dumps(content, indent=2, ensure_ascii=True) + "\n").encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    for name, build in VECTORS.items():
        data, path = render(build()), HERE / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
            print(f"wrote {path.relative_to(HERE.parent.parent)}")
    for name in stale:
        print(f"{name}: differs from what the generator produces", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
