"""OHTTP round trips per second against a raw AES-GCM baseline measured in the same run.

One round trip = client encapsulates a request, gateway decapsulates it and encapsulates the
response, client decapsulates it. The baseline does only the symmetric part of that (AES-128-GCM
seal and open of the same request and response under a fixed key), so the ratio shows what the
per-request X25519 key agreement and key schedule cost. The chunked row streams the response as
32 chunks, like tokens of a chat answer. Each row runs for MEDCLAVE_BENCH_OHTTP_SECONDS (default
0.4) per round; the rows alternate in MEDCLAVE_BENCH_ROUNDS rounds (benchmarks._common).
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks._common import Report, env_float, interleave, rate_for
from medclave.crypto import bhttp
from medclave.crypto.ohttp import OhttpKeyPair, encapsulate_request
from medclave.crypto.ohttp_chunked import ChunkedRequestDecoder, ChunkedRequestEncoder

REQUEST = bhttp.Request("POST", "https", "enclave", "/v1/chat/completions",
                        (("authorization", "Bearer " + "t" * 200),
                         ("content-type", "application/json")), b"x" * 1024).encode()
RESPONSE = bhttp.Response(200, (("content-type", "application/json"),), b"y" * 2048).encode()
TOKENS = [b"data: " + b"z" * 58 for _ in range(32)]


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

    seconds = env_float("MEDCLAVE_BENCH_OHTTP_SECONDS", 0.4)
    got = interleave({
        "aead": lambda: rate_for(baseline, seconds, batch=20),
        "ohttp": lambda: rate_for(ohttp_round_trip, seconds, batch=20),
        "chunked": lambda: rate_for(chunked_round_trip, seconds, batch=20),
    })
    report = Report("crypto_ohttp", f"OHTTP, {len(REQUEST)} B request, {len(RESPONSE)} B "
                    "response, round trips")
    report.baseline("raw AES-128-GCM", got["aead"], "/s")
    report.row("OHTTP round trip", got["ohttp"], "/s", baseline=got["aead"])
    report.row("chunked OHTTP, 32-chunk answer", got["chunked"], "/s", baseline=got["aead"])
    report.emit()

if __name__ == "__main__":
    main()
