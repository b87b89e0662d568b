"""Confidential federated learning on Flower: attestation-gated sites, sealed updates.

Layer 4. Flower (``flwr``) does the federation: SuperLink, SuperNodes, ``flwr run``, SecAgg+,
the DP wrappers. This package adds what makes it confidential: admission by attestation
(federation.py), evidence on every message (gate.py), sealed site data (site.py), the (ε, δ)
accountant (privacy.py) and the audit trail (trail.py). See docs/federated.md.
"""
