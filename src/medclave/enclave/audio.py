"""Audio decoded from memory only, bounded, into the 16 kHz mono samples Whisper takes.

The bytes a clinician's device sent never reach a file: PyAV (FFmpeg) reads them from an
``io.BytesIO`` through its custom-I/O callbacks, and the samples stay in a NumPy array. The
container is named from its magic bytes (WAV, FLAC, MP3, Ogg, WebM/Matroska) and given to
FFmpeg explicitly, so no format probing runs and no demuxer that opens other URLs (HLS,
concat, playlists) can be reached from hostile input. Only audio codecs on a short list are
decoded.

Bounds, each a refusal with a code: ``input.audio_too_large`` past ``max_bytes`` (checked before
decoding), ``input.audio_too_long`` once the container's declared duration or the samples
actually decoded pass ``max_seconds`` (a lying header cannot make decoding run on),
``input.audio_unreadable`` for anything FFmpeg cannot decode, no audio stream, an unlisted codec,
or silence-free nothing (zero samples).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from medclave.errors import InputError

SAMPLE_RATE: Final = 16_000
# FFmpeg demuxer names, by magic bytes.
_CODECS: Final = frozenset({"pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8",
                            "pcm_mulaw", "pcm_alaw", "flac", "mp3", "mp3float", "opus",
                            "libopus", "vorbis"})
MAX_STREAM_HEADER: Final = 64


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int = 25 * 1024 * 1024  # OpenAI's own upload limit for transcriptions
    max_seconds: float = 20 * 60.0


def container_of(data: bytes) -> str | None:
    """The FFmpeg demuxer for ``data``'s magic bytes; None when it is none we take."""
    head = data[:MAX_STREAM_HEADER]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM and Matroska
        return "matroska"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def decode(data: bytes, limits: AudioLimits | None = None) -> npt.NDArray[np.float32]:
    """16 kHz mono float32 samples in [-1, 1]; see the module for the refusals."""
    limits = limits or AudioLimits()
    if len(data) > limits.max_bytes:
        raise InputError("input.audio_too_large",
                         f"the audio is {len(data)} bytes; the limit is {limits.max_bytes}")
    fmt = container_of(data)
    if fmt is None:
        raise InputError("input.audio_unreadable",
                         "not WAV, FLAC, MP3, Ogg or WebM audio (by its first bytes)")
    import av  # FFmpeg's libraries: loaded where audio is decoded, not by every importer

    max_samples = int(limits.max_seconds * SAMPLE_RATE)
    pieces: list[npt.NDArray[Any]] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
            if not container.streams.audio:
                raise InputError("input.audio_unreadable", "no audio stream")
            stream = container.streams.audio[0]
            if stream.codec_context.name not in _CODECS:
                raise InputError("input.audio_unreadable",
                                 f"audio codec {stream.codec_context.name!r} is not taken")
            declared = container.duration  # microseconds (AV_TIME_BASE), or None
            if declared is not None and declared / 1e6 > limits.max_seconds:
                raise InputError("input.audio_too_long",
                                 f"the audio declares {declared / 1e6:.0f} s; the limit is "
                                 f"{limits.max_seconds:.0f} s")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    total += samples.size
                    if total > max_samples:
                        raise InputError("input.audio_too_long",
                                         f"the audio is longer than {limits.max_seconds:.0f} s")
                    pieces.append(samples)
            for rest in resampler.resample(None):
                pieces.append(rest.to_ndarray().reshape(-1))
    except InputError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, EOFError) as exc:
        raise InputError("input.audio_unreadable",
                         f"the audio does not decode ({type(exc).__name__})") from None
    if not pieces:
        raise InputError("input.audio_unreadable", "the audio holds no samples")
    pcm = np.concatenate(pieces)
    if pcm.size == 0:
        raise InputError("input.audio_unreadable", "the audio holds no samples")
    if pcm.size > max_samples:
        raise InputError("input.audio_too_long",
                         f"the audio is longer than {limits.max_seconds:.0f} s")
    scaled: npt.NDArray[np.float32] = pcm.astype(np.float32) / np.float32(32768.0)
    # The int16 copies are ours: cleared before they go back to the allocator.
    pcm.fill(0)
    for piece in pieces:
        if piece.flags.writeable:
            piece.fill(0)
    return scaled
