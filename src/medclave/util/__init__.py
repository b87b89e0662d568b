"""Small helpers every layer shares, each in one place (layer 0.5: imports only ``errors``).

``lru``: the bounded, thread-safe LRU map; ``files``: atomic writes and owner-only (0600) secret
files; ``clock``: the injected-clock type; ``b64``: strict base64 and base64url.
"""
