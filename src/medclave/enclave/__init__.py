"""The in-TEE server: boot (attest, keys, unseal, load), the OHTTP door, engines, hooks.

Imports ``protocol`` and ``crypto`` to meet the client, never ``medclave.client``.
"""
