"""Scripted doctor-patient visits and their audio, spoken by espeak-ng in two voices.

Each visit is written for its diagnoses: ``diagnoses`` are words the Assessment must contain,
``codes`` the ICD-10-CM codes a coder would pick. The audio is made on demand (never
committed): each turn is spoken with ``espeak-ng --stdout`` (``en-us`` at 140 words a minute, the
clinician at pitch 35, the patient at pitch 80), and the turns are joined with 0.7 s of silence
into one 16-bit mono WAV, in memory. ``python -m tests.scribe.visits OUT`` writes them all as
files (``make visits``) for listening or for the CLI.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

CLINICIAN_VOICE = ("-v", "en-us", "-p", "35", "-s", "140")
PATIENT_VOICE = ("-v", "en-us", "-p", "80", "-s", "140")
RATE = 22050  # espeak-ng's output rate
GAP_SECONDS = 0.7


@dataclass(frozen=True)
class Visit:
    name: str
    turns: tuple[tuple[str, str], ...]  # (speaker, text); speaker "D" or "P"
    diagnoses: tuple[str, ...]
    codes: tuple[str, ...]

    @property
    def script(self) -> str:
        return " ".join(text for _, text in self.turns)

    @property
    def typed(self) -> str:
        """The visit as a typed transcript with speaker labels."""
        return "\n".join(f"{'Doctor' if who == 'D' else 'Patient'}: {text}"
                         for who, text in self.turns)


VISITS: tuple[Visit, ...] = (
    Visit("hypertension", (
        ("D", "Good morning. How have you been since we started the blood pressure tablets?"),
        ("P", "I have been taking them every day, but I still get headaches in the morning."),
        ("D", "Your blood pressure today is 152 over 96."),
        ("D", "I think this is essential hypertension that is not controlled yet."),
        ("D", "I will increase the lisinopril to 20 milligrams once a day."),
        ("D", "Please come back in four weeks so we can check it again."),
        ("P", "Okay, thank you doctor."),
    ), ("hypertension",), ("I10",)),
    Visit("sore_throat", (
        ("D", "What brings you in today?"),
        ("P", "I have had a sore throat and a fever for three days."),
        ("P", "It hurts to swallow."),
        ("D", "Your temperature is 38 point 6 and the tonsils are red and swollen."),
        ("D", "The rapid strep test is positive, so this is streptococcal pharyngitis."),
        ("D", "I will prescribe amoxicillin for ten days."),
        ("P", "Thank you."),
    ), ("pharyngitis",), ("J02.0",)),
    Visit("diabetes", (
        ("D", "Let's review your diabetes. How is the diet going?"),
        ("P", "I have been eating more sweets and I feel thirsty all the time."),
        ("D", "Your A1C is 8 point 4 percent, up from 7 point 2."),
        ("D", "Your type 2 diabetes mellitus is not well controlled."),
        ("D", "We will add metformin 500 milligrams twice a day."),
        ("D", "I will refer you to the diabetes educator."),
    ), ("diabetes",), ("E11.9", "E11.65")),
    Visit("depression", (
        ("D", "How has your mood been over the last two weeks?"),
        ("P", "I feel down most days and I have lost interest in things I used to enjoy."),
        ("P", "I also have trouble sleeping."),
        ("D", "Your PHQ-9 score is 15."),
        ("D", "This is consistent with major depressive disorder, moderate."),
        ("D", "I recommend starting sertraline and talking therapy."),
        ("D", "Let's follow up in two weeks."),
    ), ("depressive",), ("F32.1", "F32.9", "F32.A")),
    Visit("ankle_sprain", (
        ("D", "What happened to your ankle?"),
        ("P", "I twisted my right ankle playing football yesterday and it is swollen."),
        ("D", "The right ankle is swollen and tender on the outside, and you can bear weight."),
        ("D", "This is a sprain of the right ankle."),
        ("D", "Rest, ice and elevate it, and take ibuprofen for the pain."),
    ), ("sprain",), ("S93.401A", "S93.491A", "S93.409A")),
    Visit("asthma", (
        ("D", "How is your breathing?"),
        ("P", "I wake up at night coughing and I use my inhaler almost every day."),
        ("D", "I hear wheezing in both lungs."),
        ("D", "I think your asthma is not well controlled."),
        ("D", "We will start a daily steroid inhaler."),
    ), ("asthma",), ("J45.909", "J45.901", "J45.998")),
    Visit("uti", (
        ("D", "What seems to be the problem?"),
        ("P", "It burns when I pass urine and I have to go very often."),
        ("D", "The urine test shows white cells and nitrites."),
        ("D", "This looks like a urinary tract infection."),
        ("D", "I will prescribe nitrofurantoin for five days."),
    ), ("urinary tract infection",), ("N39.0",)),
    Visit("migraine", (
        ("D", "Tell me about the headaches."),
        ("P", "I get a throbbing headache on one side with nausea, and light bothers me."),
        ("D", "Your neurological exam is normal."),
        ("D", "This sounds like migraine without aura."),
        ("D", "I will prescribe sumatriptan to take when the headache starts."),
    ), ("migraine",), ("G43.009", "G43.909", "G43.001")),
    Visit("low_back_pain", (
        ("D", "Where does it hurt?"),
        ("P", "My lower back has hurt for a week since I lifted a heavy box."),
        ("D", "There is muscle tenderness in the lower back and the leg raise test is normal."),
        ("D", "I think this is low back pain from a muscle strain."),
        ("D", "Keep moving, and take ibuprofen for one week."),
    ), ("back pain",), ("M54.50", "M54.59", "S39.012A")),
    Visit("cholesterol", (
        ("D", "I have your blood test results."),
        ("P", "I have been eating less fat, but my father had a heart attack at fifty."),
        ("D", "Your LDL cholesterol is 190."),
        ("D", "You have hyperlipidemia."),
        ("D", "I will start atorvastatin 20 milligrams at night."),
    ), ("hyperlipidemia",), ("E78.5", "E78.00", "E78.2")),
    Visit("reflux", (
        ("D", "What brings you in?"),
        ("P", "I get burning in my chest after meals, especially when I lie down."),
        ("D", "Your abdomen is soft and not tender."),
        ("D", "This is gastroesophageal reflux disease."),
        ("D", "I will prescribe omeprazole before breakfast for eight weeks."),
    ), ("reflux",), ("K21.9",)),
    Visit("bronchitis", (
        ("D", "How long have you had the cough?"),
        ("P", "I have been coughing up yellow phlegm for five days."),
        ("D", "Your lungs have some scattered wheezes, and the oxygen saturation is 97 percent."),
        ("D", "I think this is acute bronchitis."),
        ("D", "Drink fluids and rest, and come back if you get short of breath."),
    ), ("bronchitis",), ("J20.9",)),
)


def espeak() -> str | None:
    return shutil.which("espeak-ng")


def _speak(text: str, voice: tuple[str, ...]) -> bytes:
    """One utterance as raw 16-bit mono samples at :data:`RATE`."""
    binary = espeak()
    assert binary is not None, "espeak-ng is not installed (apt-get install espeak-ng)"
    wav = subprocess.run([binary, *voice, "--stdout", text], check=True,
                         capture_output=True, timeout=60).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        assert reader.getframerate() == RATE and reader.getnchannels() == 1
        return reader.readframes(reader.getnframes())


def synthesize(visit: Visit) -> bytes:
    """The visit as one WAV file's bytes, in memory."""
    gap = b"\x00\x00" * int(GAP_SECONDS * RATE)
    frames = bytearray()
    for who, text in visit.turns:
        frames += _speak(text, CLINICIAN_VOICE if who == "D" else PATIENT_VOICE) + gap
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(bytes(frames))
    return out.getvalue()


def by_name(name: str) -> Visit:
    return next(v for v in VISITS if v.name == name)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "visits")
    folder.mkdir(parents=True, exist_ok=True)
    for item in VISITS:
        (folder / f"{item.name}.wav").write_bytes(synthesize(item))
        (folder / f"{item.name}.txt").write_text(item.typed + "\n", encoding="utf-8")
        print(folder / f"{item.name}.wav")
