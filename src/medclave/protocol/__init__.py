"""Wire formats shared by both ends: the evidence bundle, the inference protocol (routes, media
types, the inner Binary HTTP request, receipts in headers), streamed Binary HTTP decoding.

The public surface is what is re-exported here; the modules (``evidence``, ``inference``,
``bhttp_stream``) hold the rest, for both ends to read the same way.
"""

from medclave.protocol.bhttp_stream import ResponseStreamDecoder
from medclave.protocol.evidence import EvidenceBundle, GpuEvidence
from medclave.protocol.inference import (
    EnclaveRuntime,
    decode_inner_request,
    decode_receipt_header,
    encode_inner_request,
    encode_receipt_header,
)

__all__ = [
    "EnclaveRuntime",
    "EvidenceBundle",
    "GpuEvidence",
    "ResponseStreamDecoder",
    "decode_inner_request",
    "decode_receipt_header",
    "encode_inner_request",
    "encode_receipt_header",
]
