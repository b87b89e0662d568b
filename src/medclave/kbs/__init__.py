"""The key broker service: secrets wrapped at rest, released only on attestation + policy.

``KeyBroker`` (service) holds the logic, ``create_app`` (app) serves it over HTTP,
``KbsClient`` (client) is the enclave side of the release protocol.
"""

from __future__ import annotations

from medclave.kbs.models import ReleasePolicy, parse_release_policy
from medclave.kbs.names import ResourceName
from medclave.kbs.service import Challenge, KeyBroker, Release

__all__ = [
    "Challenge",
    "KeyBroker",
    "Release",
    "ReleasePolicy",
    "ResourceName",
    "parse_release_policy",
]
