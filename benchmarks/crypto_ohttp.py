"""OHTTP round trips per second against a raw AES-GCM baseline measured in the same run.

One round trip = client encapsulates a request, gateway decapsulates it and encapsulates the
response, client decapsulates it. The baseline does only the symmetric part of that (AES-128-GCM
seal and open of the same request and response under a fixed key), so the ratio shows what the
per-request X25519 key agreement and key schedule cost. The chunked row streams the response as
32 chunks, like tokens of a chat answer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medclave.crypto import bhttp
from medclave.crypto.ohttp import OhttpKeyPair, encapsulate_request
from medclave.crypto.ohttp_chunked import ChunkedRequestDecoder, ChunkedRequestEncoder

REQUEST = bhttp.Request("POST", "https", "enclave", "/v1/chat/completions",
                        (("authorization", "Bearer " + "t" * 200),
                         ("content-type", "application/json")), b"x" * 1024).encode()
RESPONSE = bhttp.Response(200, (("content-type", "application/json"),), b"y" * 2048).encode()
TOKENS = [b"data: " + b"z" * 58 for _ in range(32)]


def _rate(fn: Callable[[], object], seconds: float = 1.0) -> float:
    fn()
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            fn()
        count += 20
    return count / elapsed


def main() -> None:
    gateway = OhttpKeyPair.generate(1)
    config = gateway.config
    aead = AESGCM(os.urandom(16))
    nonce = os.urandom(12)

    def baseline() -> None:
        aead.decrypt(nonce, aead.encrypt(nonce, REQUEST, b""), b"")
        aead.decrypt(nonce, aead.encrypt(nonce, RESPONSE, b""), b"")

    def ohttp_round_trip() -> None:
        wire, client = encapsulate_request(config, REQUEST)
        plaintext, context = gateway.decapsulate_request(wire)
        assert plaintext == REQUEST
        assert client.decapsulate_response(context.encapsulate(RESPONSE)) == RESPONSE

    def chunked_round_trip() -> None:
        client = ChunkedRequestEncoder(config)
        server = ChunkedRequestDecoder([gateway])
        server.feed(client.final(REQUEST), end=True)
        encoder = server.response_encoder()
        decoder = client.response_decoder()
        for token in TOKENS:
            decoder.feed(encoder.write(token))
        decoder.feed(encoder.final(), end=True)

    base = _rate(baseline)
    rows = [("raw AES-128-GCM (baseline)", base), ("OHTTP round trip", _rate(ohttp_round_trip)),
            ("chunked OHTTP, 32-chunk answer", _rate(chunked_round_trip))]
    print(f"OHTTP, {len(REQUEST)} B request, {len(RESPONSE)} B response")
    print(f"{'operation':<32}{'round trips/s':>15}{'vs baseline':>14}")
    for name, rate in rows:
        print(f"{name:<32}{rate:>15.0f}{rate / base:>13.3f}x")


if __name__ == "__main__":
    main()
