"""Sealed state: user data kept by the enclave that only its owner can reopen.

:mod:`.format` defines the key derivation and records (version 1), :mod:`.roots` where the
tenant's sealing root comes from (the key broker), :mod:`.store` where sealed records rest, and
:mod:`.conversations` the operations a feature uses (the triage chat is the first).
"""
