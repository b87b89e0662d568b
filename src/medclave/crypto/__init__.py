"""HPKE/OHTTP encapsulation, streaming AEAD, key derivation, canonical JSON."""
