"""Audio decoded from memory: every format the issue names, and the bounded refusals."""

from __future__ import annotations

import io
import math
import struct
import wave

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.enclave.audio import SAMPLE_RATE, AudioLimits, container_of, decode
from medclave.errors import InputError

RATE = 48_000


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * math.pi * 220 * t) * 32767).astype(np.int16)


def wav(seconds: float, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone(seconds, rate).tobytes())
    return out.getvalue()


def encoded(fmt: str, codec: str, seconds: float = 1.0) -> bytes:
    """The tone in a container and codec, encoded with PyAV in memory (as a browser or phone
    would send it)."""
    import av

    out = io.BytesIO()
    rate = 48_000 if codec == "libopus" else 44_100
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone(seconds, rate).reshape(1, -1), format="s16",
                                           layout="mono")
        frame.rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "codec", "name"), [
    ("flac", "flac", "flac"), ("ogg", "libopus", "ogg"), ("webm", "libopus", "matroska"),
    ("mp3", "libmp3lame", "mp3"), ("wav", "pcm_s16le", "wav"),
])
def test_every_format_decodes_from_memory(fmt: str, codec: str, name: str) -> None:
    data = encoded(fmt, codec)
    assert container_of(data) == name
    samples = decode(data)
    # One second of a 220 Hz tone, at 16 kHz (codecs pad a little at the ends).
    assert 0.9 * SAMPLE_RATE <= samples.size <= 1.2 * SAMPLE_RATE
    assert samples.dtype == np.float32 and 0.1 < float(np.abs(samples).max()) <= 1.0


def test_wav_keeps_its_length_and_level() -> None:
    samples = decode(wav(2.0))
    assert abs(samples.size - 2 * SAMPLE_RATE) <= 32
    assert abs(float(np.abs(samples).max()) - 0.3) < 0.02


def test_too_large_is_refused_before_decoding() -> None:
    with pytest.raises(InputError) as caught:
        decode(wav(1.0), AudioLimits(max_bytes=1000))
    assert caught.value.code == "input.audio_too_large"


def test_too_long_by_its_samples() -> None:
    with pytest.raises(InputError) as caught:
        decode(wav(3.0), AudioLimits(max_seconds=2.0))
    assert caught.value.code == "input.audio_too_long"


def test_a_header_that_lies_about_length_cannot_run_decoding_on() -> None:
    # A WAV whose header declares a tiny data chunk but carries 3 s: FFmpeg stops at the
    # declared size or reads on; either way no more than the limit is ever decoded.
    data = bytearray(wav(3.0))
    struct.pack_into("<I", data, 40, 1000)
    try:
        samples = decode(bytes(data), AudioLimits(max_seconds=2.0))
    except InputError as exc:
        assert exc.code == "input.audio_too_long"
    else:
        assert samples.size <= 2 * SAMPLE_RATE


@pytest.mark.parametrize("data", [b"", b"hello world, not audio", b"RIFF\x00\x00\x00\x00WAVEjunk",
                                  b"OggS" + b"\x00" * 100, b"fLaC" + b"\xff" * 64,
                                  b"\x1a\x45\xdf\xa3" + b"\x01" * 64])
def test_garbage_is_unreadable(data: bytes) -> None:
    with pytest.raises(InputError) as caught:
        decode(data)
    assert caught.value.code == "input.audio_unreadable"


def test_no_probing_other_demuxers() -> None:
    # An HLS playlist or an FFmpeg concat script would make FFmpeg open other URLs or files;
    # neither has magic bytes we accept, so FFmpeg never sees them.
    for text in (b"#EXTM3U\n#EXT-X-VERSION:3\nhttp://127.0.0.1:1/x.ts\n",
                 b"ffconcat version 1.0\nfile '/etc/passwd'\n"):
        with pytest.raises(InputError) as caught:
            decode(text)
        assert caught.value.code == "input.audio_unreadable"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from([b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3",
                              b"\xff\xfb", b"\x1a\x45\xdf\xa3"]),
       tail=st.binary(max_size=2048))
def test_fuzzed_audio_is_decoded_or_refused_with_a_code(magic: bytes, tail: bytes) -> None:
    try:
        samples = decode(magic + tail, AudioLimits(max_seconds=5.0))
    except InputError as exc:
        assert exc.code in {"input.audio_unreadable", "input.audio_too_long"}
    else:
        assert samples.size <= 5 * SAMPLE_RATE
