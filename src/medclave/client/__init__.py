"""The hospital side: verify an enclave's attestation, pin its key, encapsulate every request.

:class:`MedclaveClient` mirrors the ``openai`` package; :mod:`.proxy` serves plain
OpenAI-compatible HTTP on loopback for apps that cannot change. Imports ``protocol``,
``crypto``, ``attestation`` and ``audit``; never ``medclave.enclave``.
"""

from medclave.client.sdk import MedclaveClient
from medclave.client.session import EnclaveSession, InnerResponse, StreamedResponse
from medclave.client.verify import VerifiedEnclave, verify_enclave

__all__ = [
    "EnclaveSession",
    "InnerResponse",
    "MedclaveClient",
    "StreamedResponse",
    "VerifiedEnclave",
    "verify_enclave",
]
