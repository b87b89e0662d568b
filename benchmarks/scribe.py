"""The clinical scribe (issue 14): speed of speech to text through the confidential path, a
2-minute visit from upload to note, peak memory, and the evaluation on the scripted visits.

Sides. *Direct*: faster-whisper (the bundled tiny.en, int8, 2 threads, beam 5, the options the
enclave's worker uses) in this process, on audio decoded in memory. *Confidential*: the
official ``openai`` client's ``audio.transcriptions.create`` -> proxy (attests, encapsulates
in chunked OHTTP) -> sim enclave -> the sandboxed Whisper worker, on 127.0.0.1. The same WAV
files (scripted visits spoken by espeak-ng, tests/scribe/visits.py) on both sides, in
alternating rounds (benchmarks._common).

Rows: real-time factor (audio seconds per wall-clock second) on each side and their ratio; the
end-to-end time from the upload of a visit of at least 2 minutes to its note, codes and FHIR
(scribe route, the real llama.cpp SmolLM2 drafting each statement); the peak resident memory of
the benchmark process and of the Whisper worker (VmHWM). Then the evaluation table: per visit,
WER against the script through the enclave and direct (they must be equal), whether the
Assessment names the visit's diagnosis, and whether a code the visit was written for is in
the top 3 suggestions; on audio and on the typed script.

``MEDCLAVE_BENCH_SCRIBE_SHORT=1`` (the default): 2 files for RTF, the evaluation on every visit
with the drafting engine a stand-in (the evaluation's figures do not depend on the wording:
sections and codes come from the transcript), the 2-minute visit once. ``=0``: 4 files.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

from benchmarks._common import Report, env_int, interleave

TRANSFORM: Any = None


def _wer(reference: str, hypothesis: str) -> float:
    import jiwer

    global TRANSFORM
    if TRANSFORM is None:
        TRANSFORM = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
                                   jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                                   jiwer.ReduceToListOfListOfWords()])
    return float(jiwer.wer(reference, hypothesis, reference_transform=TRANSFORM,
                           hypothesis_transform=TRANSFORM))


def _seconds(wav_bytes: bytes) -> float:
    with wave.open(io.BytesIO(wav_bytes)) as reader:
        return reader.getnframes() / reader.getframerate()


def _join(clips: list[bytes], at_least: float) -> bytes:
    frames = bytearray()
    rate = 22050
    for clip in clips:
        with wave.open(io.BytesIO(clip)) as reader:
            rate = reader.getframerate()
            frames += reader.readframes(reader.getnframes())
        if len(frames) / 2 / rate >= at_least:
            break
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(bytes(frames))
    return out.getvalue()


def _hwm(pid: int) -> float:
    """Peak resident memory of a process (MiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Direct:
    """faster-whisper in this process, as the worker runs it."""

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from medclave.enclave.speech import bundled_model

        model = bundled_model()
        self.model = WhisperModel(model.model_id, device="cpu", compute_type="int8",
                                  cpu_threads=2, files=dict(model.files))

    def transcribe(self, data: bytes) -> str:
        from medclave.enclave.audio import decode

        pieces, _ = self.model.transcribe(decode(data), language="en", beam_size=5,
                                          temperature=0.0, vad_filter=False,
                                          condition_on_previous_text=False,
                                          word_timestamps=True)
        return " ".join(p.text.strip() for p in pieces)


def main() -> None:
    import httpx
    import openai
    from tests.e2e.helpers import FakeEngine, llama_engine
    from tests.scribe.conftest import start_stack
    from tests.scribe.visits import VISITS, espeak, synthesize

    if espeak() is None:
        print("espeak-ng is not installed: apt-get install espeak-ng")
        return
    short = os.environ.get("MEDCLAVE_BENCH_SCRIBE_SHORT", "1") == "1"
    files = env_int("MEDCLAVE_BENCH_SCRIBE_FILES", 2 if short else 4)
    from medclave.enclave.speech import Transcriber, bundled_model

    spoken = {v.name: synthesize(v) for v in VISITS}
    direct = Direct()
    speech = Transcriber(bundled_model(), threads=2)
    with tempfile.TemporaryDirectory(prefix="medclave-bench-scribe-") as folder:
        stack = start_stack(Path(folder) / "stand-in", speech, engine=FakeEngine())
        try:
            client = openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key="unused",
                                   max_retries=0, timeout=600)
            chosen = [spoken[v.name] for v in VISITS[:files]]
            total = sum(_seconds(c) for c in chosen)
            client.audio.transcriptions.create(file=("w.wav", chosen[0]), model="whisper-1")
            direct.transcribe(chosen[0])  # warm both sides

            def run_direct() -> float:
                start = time.perf_counter()
                for clip in chosen:
                    direct.transcribe(clip)
                return total / (time.perf_counter() - start)

            def run_enclave() -> float:
                start = time.perf_counter()
                for clip in chosen:
                    client.audio.transcriptions.create(file=("visit.wav", clip),
                                                       model="whisper-1")
                return total / (time.perf_counter() - start)

            values = interleave({"direct": run_direct, "enclave": run_enclave})
            report = Report("scribe", f"Speech to text, {files} visits ({total:.0f} s of audio)")
            report.baseline("RTF faster-whisper direct", values["direct"], "x realtime")
            report.row("RTF openai -> proxy -> enclave", values["enclave"], "x realtime",
                       baseline=values["direct"])
            _evaluate(report, client, stack, direct, spoken, VISITS, httpx)
        finally:
            stack.stop()
        report.emit()
        report = Report("scribe_visit", "A visit of at least 2 minutes, upload to note")
        # The 2-minute visit, with the real chat model drafting the note.
        real = start_stack(Path(folder) / "real", speech, engine=llama_engine(), timeout=3600)
        try:
            visit = _join([spoken[v.name] for v in VISITS] * 2, 120.0)
            start = time.perf_counter()
            response = httpx.post(f"{real.proxy_url}/v1/medclave/scribe", timeout=3600,
                                  files={"file": ("visit.wav", visit)})
            took = time.perf_counter() - start
            body = response.json()
            assert response.status_code == 200, body
            drafted = [s for sec in body["note"]["sections"].values() for s in sec]
            by_model = sum(s["drafted_by"] == "model" for s in drafted)
            report.row(f"upload to note, {_seconds(visit):.0f} s visit (llama.cpp drafts)",
                       [took], "s")
            report.note(f"2-minute visit: {len(drafted)} statements, {by_model} worded by the "
                        f"model and kept, {len(body['codes'])} codes; "
                        f"sha256 {hashlib.sha256(visit).hexdigest()[:12]}")
        finally:
            real.stop()
        report.row("peak memory, benchmark process", [_hwm(os.getpid())], "MiB")
        report.row("peak memory, Whisper worker", [_hwm(speech._process.pid)], "MiB")
        report.note(f"worker sandbox: {speech.sandbox.mechanism} (Landlock ABI "
                    f"{speech.sandbox.abi})")
        speech.close()
        report.emit()


def _evaluate(report: Report, client: Any, stack: Any, direct: Direct,
              spoken: dict[str, bytes], visits: Any, httpx: Any) -> None:
    from medclave.apps.scribe import icd, soap, turns
    from medclave.enclave.engines.base import Generation

    lines = ["visit           WER enclave  WER direct  equal  dx(audio)  code@3(audio)  "
             "dx(typed)  code@3(typed)"]
    totals = {"dx": 0, "code": 0, "dx_typed": 0, "code_typed": 0, "equal": 0}
    wers: list[float] = []
    for visit in visits:
        clip = spoken[visit.name]
        via = client.audio.transcriptions.create(file=("v.wav", clip), model="whisper-1").text
        alone = direct.transcribe(clip)
        body = httpx.post(f"{stack.proxy_url}/v1/medclave/scribe", timeout=600,
                          files={"file": ("v.wav", clip)}).json()
        assessment = " ".join(s["text"] for s in body["note"]["sections"]["assessment"]).lower()
        dx = all(d in assessment for d in visit.diagnoses)
        code = bool({c["code"] for c in body["codes"][:3]} & set(visit.codes))
        typed = turns.from_text(visit.typed)
        note = soap.draft_note(typed, None, Generation("t", "u"))
        typed_a = " ".join(s.text for s in note if s.section == "assessment").lower()
        typed_codes = icd.suggest([(s.sentence, typed.sentence(s.sentence).text, s.start, s.end,
                                    s.text) for s in note if s.section == "assessment"])
        dx_t = all(d in typed_a for d in visit.diagnoses)
        code_t = bool({c.code for c in typed_codes[:3]} & set(visit.codes))
        w_enclave, w_direct = _wer(visit.script, via), _wer(visit.script, alone)
        wers.append(w_enclave)
        totals["dx"] += dx
        totals["code"] += code
        totals["dx_typed"] += dx_t
        totals["code_typed"] += code_t
        totals["equal"] += via == alone
        lines.append(f"{visit.name:<15} {w_enclave:>11.3f} {w_direct:>11.3f}  {via == alone!s:<5}  "
                     f"{dx!s:<9}  {code!s:<13}  {dx_t!s:<9}  {code_t}")
    n = len(visits)
    lines.append(f"mean WER {sum(wers) / n:.3f}; enclave text == direct text {totals['equal']}/{n}; "
                 f"diagnosis in Assessment {totals['dx']}/{n} (audio), {totals['dx_typed']}/{n} "
                 f"(typed); code recall@3 {totals['code']}/{n} (audio), "
                 f"{totals['code_typed']}/{n} (typed)")
    for line in lines:
        report.note(line)
