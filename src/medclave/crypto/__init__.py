"""The cryptography Medclave speaks on the wire and at rest: HPKE (RFC 9180), Oblivious HTTP
(RFC 9458) and its chunked form, Binary HTTP (RFC 9292), sealed-model files, strict JOSE, RFC 8785
canonical JSON.

The public surface is what is re-exported here. The modules (``hpke``, ``ohttp``,
``ohttp_chunked``, ``bhttp``, ``sealed``, ``jose``, ``canonical``, ``varint``) are imported as
modules by both ends where their lower-level pieces are needed.
"""

from medclave.crypto.canonical import canonical_json, canonical_sha256, load_json
from medclave.crypto.jose import parse_compact, sign_compact, strict_json
from medclave.crypto.ohttp import KeyConfig, OhttpKeyPair, decapsulate_request, encapsulate_request
from medclave.crypto.ohttp_chunked import ChunkedRequestDecoder, ChunkedRequestEncoder
from medclave.crypto.sealed import Manifest, open_to_memfd, seal_file

__all__ = [
    "ChunkedRequestDecoder",
    "ChunkedRequestEncoder",
    "KeyConfig",
    "Manifest",
    "OhttpKeyPair",
    "canonical_json",
    "canonical_sha256",
    "decapsulate_request",
    "encapsulate_request",
    "load_json",
    "open_to_memfd",
    "parse_compact",
    "seal_file",
    "sign_compact",
    "strict_json",
]
