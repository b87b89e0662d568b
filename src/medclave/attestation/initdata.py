"""Confidential Containers init data: the document Kata hands to a confidential VM at launch,
and the digest the hardware reports for it.

Init data (CoCo trustee ``kbs/docs/initdata.md``, version ``0.1.0``) is a TOML document::

    algorithm = "sha384"
    version = "0.1.0"

    [data]
    "aa.toml" = '''...'''       # the attestation agent's configuration
    "cdh.toml" = '''...'''      # the confidential data hub's
    "policy.rego" = '''...'''   # the Kata agent policy: which containers, images, env, mounts

It travels in the pod annotation ``io.katacontainers.config.hypervisor.cc_init_data`` as
base64 (standard alphabet) of the gzipped document. Kata launches the VM with a digest of it in
the field the host may set but not change afterwards: SEV-SNP ``HOST_DATA`` (32 bytes), TDX
``MRCONFIGID`` (48 bytes), Arm CCA's realm personalization value (64 bytes). As Kata computes it
(``kata-types`` ``initdata.rs``: ``calculate_initdata_digest``), the digest is the document's
``algorithm`` over the document's exact bytes, cut to the field's size or padded with zero bytes
to it. A relying party therefore pins the digest of the very bytes it approved; a document that
differs by one byte (a laxer agent policy) gives another HOST_DATA and is refused by a policy
naming the first (``[platform.sev-snp.rules] host_data``, ``[platform.tdx.rules.measurements]
mr_config_id``).

This module builds the document from named files, encodes the annotation, decodes one (bounded:
it is input from a manifest), and computes the reference values. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from medclave.errors import InputError

VERSION: Final = "0.1.0"
ALGORITHMS: Final = {"sha256": hashlib.sha256, "sha384": hashlib.sha384,
                     "sha512": hashlib.sha512}
# Bytes of the launch field each platform reports the digest in (Kata's adjust_digest).
FIELD_BYTES: Final = {"sev-snp": 32, "tdx": 48, "cca": 64}
# Claim name of that field in Medclave's verified claims, per platform.
CLAIM: Final = {"sev-snp": "host_data", "tdx": "mr_config_id", "cca": "realm.personalization_value"}
ANNOTATION: Final = "io.katacontainers.config.hypervisor.cc_init_data"
MAX_DOCUMENT_BYTES: Final = 1024 * 1024
MAX_ANNOTATION_CHARS: Final = 4 * ((MAX_DOCUMENT_BYTES + 2) // 3)
MAX_ENTRIES: Final = 64


@dataclass(frozen=True)
class InitData:
    """A parsed init data document and the exact text its digest is over."""

    algorithm: str
    version: str
    data: Mapping[str, str]
    text: str

    def digest(self, platform: str) -> bytes:
        """What ``platform``'s launch field holds for this document."""
        return launch_digest(self.text, self.algorithm, platform)

    def reference_values(self) -> dict[str, str]:
        """Hex of the digest for every platform that reports one, by claim name."""
        return {CLAIM[p]: self.digest(p).hex() for p in FIELD_BYTES}


def launch_digest(text: str, algorithm: str, platform: str) -> bytes:
    """``algorithm`` over the UTF-8 bytes of ``text``, cut or zero-padded to the field."""
    if algorithm not in ALGORITHMS:
        raise InputError("input.malformed", f"init data algorithm {algorithm!r} is not one of "
                         f"{sorted(ALGORITHMS)}")
    if platform not in FIELD_BYTES:
        raise InputError("input.malformed", f"no init data field on platform {platform!r}")
    size = FIELD_BYTES[platform]
    digest = ALGORITHMS[algorithm](text.encode("utf-8")).digest()
    return digest[:size].ljust(size, b"\x00")


def _basic(value: str) -> str:
    """A TOML basic string (escapes per TOML 1.0 §String)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_string(value: str) -> str:
    """A TOML string holding ``value`` exactly: a literal multi-line string when it can (the
    file stays readable, as in CoCo's examples), else a basic string."""
    if "'''" in value or value.endswith("'") or any(
            (ord(c) < 0x20 and c not in "\t\n") or ord(c) == 0x7F for c in value):
        return _basic(value)
    # TOML trims a newline right after the opening delimiter, so one is added there.
    return "'''\n" + value + "'''"


def build(data: Mapping[str, str], algorithm: str = "sha384") -> InitData:
    """The init data document for ``data`` (file name to contents), keys in sorted order."""
    if algorithm not in ALGORITHMS:
        raise InputError("input.malformed", f"init data algorithm {algorithm!r} is not one of "
                         f"{sorted(ALGORITHMS)}")
    lines = [f'algorithm = "{algorithm}"', f'version = "{VERSION}"', "", "[data]"]
    for key in sorted(data):
        lines.append(f"{_basic(key)} = {_toml_string(data[key])}")
    text = "\n".join(lines) + "\n"
    parsed = parse(text)
    if dict(parsed.data) != dict(data):  # the writer and TOML must agree on every byte
        raise InputError("input.malformed", "init data values could not be written exactly")
    return parsed


def parse(text: str) -> InitData:
    """Parse and check a document: version 0.1.0, a known algorithm, ``data`` a table of
    strings. ``input.too_large`` / ``input.malformed`` otherwise."""
    if len(text.encode("utf-8")) > MAX_DOCUMENT_BYTES:
        raise InputError("input.too_large", f"init data over {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError("input.malformed", f"init data is not TOML: {exc}") from None
    unknown = set(doc) - {"algorithm", "version", "data"}
    if unknown:
        raise InputError("input.malformed", f"unknown init data members {sorted(unknown)}")
    version, algorithm, data = doc.get("version"), doc.get("algorithm"), doc.get("data", {})
    if version != VERSION:
        raise InputError("input.malformed", f"init data version {version!r} is not {VERSION}")
    if algorithm not in ALGORITHMS:
        raise InputError("input.malformed", f"init data algorithm {algorithm!r} is not one of "
                         f"{sorted(ALGORITHMS)}")
    if not isinstance(data, dict) or len(data) > MAX_ENTRIES or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError("input.malformed", "init data `data` must be a table of at most "
                         f"{MAX_ENTRIES} strings")
    return InitData(algorithm=algorithm, version=version, data=dict(data), text=text)


def annotation(doc: InitData) -> str:
    """The pod annotation's value: base64 of the gzipped document. gzip's header carries no
    time and no name, so the same document always gives the same annotation."""
    raw = gzip.compress(doc.text.encode("utf-8"), compresslevel=9, mtime=0)
    return base64.b64encode(raw).decode("ascii")


def decode_annotation(value: str) -> InitData:
    """The document inside an annotation value; decompression stops past
    :data:`MAX_DOCUMENT_BYTES` (a gzip bomb is ``input.too_large``, not memory)."""
    if len(value) > MAX_ANNOTATION_CHARS:
        raise InputError("input.too_large", "init data annotation too long")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InputError("input.malformed", "init data annotation is not base64") from None
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            text = stream.read(MAX_DOCUMENT_BYTES + 1)
    except (OSError, EOFError, zlib.error):
        raise InputError("input.malformed", "init data annotation is not gzip") from None
    if len(text) > MAX_DOCUMENT_BYTES:
        raise InputError("input.too_large", f"init data over {MAX_DOCUMENT_BYTES} bytes")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("input.malformed", "init data is not UTF-8") from None
    return parse(decoded)
