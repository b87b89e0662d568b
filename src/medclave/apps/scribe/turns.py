"""A visit's transcript as speaker turns and sentences, each with its span in the transcript.

The transcript the scribe returns is the turns' text, one turn per line (``Clinician: ...``
when the speaker is known). Every sentence has an id (``s0``, ``s1``, ...) and its ``[start,
end)`` character offsets in that text: the SOAP note's statements and the codes' supporting
evidence point at sentences, so a reader can always see what a statement came from.

Who spoke. A typed transcript names its speakers (``Doctor:``, ``Clinician:``, ``Patient:``
and a few synonyms at the start of a line). From audio, speakers are told apart by voice pitch
(the worker's per-segment median F0, :mod:`medclave.enclave.speech`): the segments' pitches are
split at their largest gap, and only if the two groups' medians differ by at least
:data:`MIN_PITCH_RATIO` are they taken to be two voices. Which voice is the clinician's is
then read from what each says (questions, examination and prescribing words). When the voices
cannot be told apart the speaker is ``None``: the scribe says it does not know rather than guess.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from medclave.enclave.speech import Segment

Speaker = Literal["clinician", "patient"]
MIN_PITCH_RATIO: Final = 1.25
MAX_TURNS: Final = 2000
_LABELS: Final = {"doctor": "clinician", "dr": "clinician", "clinician": "clinician",
                  "physician": "clinician", "nurse": "clinician", "provider": "clinician",
                  "patient": "patient", "pt": "patient"}
_LABEL = re.compile(r"^\s*(doctor|dr|clinician|physician|nurse|provider|patient|pt)\.?\s*:\s*",
                    re.IGNORECASE)
# A sentence ends at . ! or ? followed by space or the end (not inside "150.5" or "Dr. X").
_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+(?=\s|$)|$)")
_CLINICIAN_CUES: Final = ("exam", "prescrib", "blood pressure", "diagnos", "i think",
                          "recommend", "follow up", "follow-up", "let's", "let me", "i'll",
                          "i will", "we will", "this is", "looks like", "sounds like", "test")
_SECOND_PERSON = re.compile(r"\b(you|your|you're|you've)\b")
_FIRST_PERSON = re.compile(r"\b(i|my|me|i'm|i've)\b")


@dataclass(frozen=True)
class Sentence:
    id: str
    turn: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Turn:
    index: int
    speaker: Speaker | None
    text: str
    start_time: float | None = None
    end_time: float | None = None


@dataclass(frozen=True)
class Transcript:
    """The turns, the text they make, and its sentences with their spans."""

    turns: tuple[Turn, ...]
    text: str
    sentences: tuple[Sentence, ...]
    speakers_known: bool

    def sentence(self, sentence_id: str) -> Sentence:
        return next(s for s in self.sentences if s.id == sentence_id)

    def speaker_of(self, sentence: Sentence) -> Speaker | None:
        return self.turns[sentence.turn].speaker


def _prefix(speaker: Speaker | None) -> str:
    return "" if speaker is None else ("Clinician: " if speaker == "clinician" else "Patient: ")


def build(turns: Sequence[Turn]) -> Transcript:
    """Lay the turns out one per line and find each sentence's span."""
    lines: list[str] = []
    sentences: list[Sentence] = []
    offset = 0
    for turn in turns:
        prefix = _prefix(turn.speaker)
        body_start = offset + len(prefix)
        for match in _SENTENCE.finditer(turn.text):
            raw = match.group(0)
            stripped = raw.strip()
            if not any(c.isalnum() for c in stripped):
                continue
            lead = len(raw) - len(raw.lstrip())
            start = body_start + match.start() + lead
            sentences.append(Sentence(f"s{len(sentences)}", turn.index, start,
                                      start + len(stripped), stripped))
        line = prefix + turn.text
        lines.append(line)
        offset += len(line) + 1
    known = any(t.speaker is not None for t in turns)
    return Transcript(tuple(turns), "\n".join(lines), tuple(sentences), known)


def from_text(text: str) -> Transcript:
    """A typed transcript: one turn per non-empty line, speakers from ``Label:`` prefixes."""
    turns: list[Turn] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line:
            continue
        speaker: Speaker | None = None
        match = _LABEL.match(line)
        if match:
            speaker = "clinician" if _LABELS[match.group(1).lower()] == "clinician" else "patient"
            line = line[match.end():]
        if line:
            turns.append(Turn(len(turns), speaker, line))
        if len(turns) >= MAX_TURNS:
            break
    return build(turns)


def _voices(pitches: Sequence[float]) -> float | None:
    """The pitch that splits two voices, or None when the segments sound like one."""
    voiced = sorted(p for p in pitches if p > 0)
    if len(voiced) < 2:
        return None
    gaps = [(voiced[i + 1] - voiced[i], i) for i in range(len(voiced) - 1)]
    _, at = max(gaps)
    low, high = voiced[: at + 1], voiced[at + 1:]
    low_median, high_median = low[len(low) // 2], high[len(high) // 2]
    if high_median < MIN_PITCH_RATIO * low_median:
        return None
    return (voiced[at] + voiced[at + 1]) / 2


def _clinician_score(texts: Sequence[str]) -> float:
    """Per word: clinical cues and "you" count for the clinician, "I" and "my" against."""
    joined = " ".join(texts).lower()
    count = max(1, len(joined.split()))
    cues = sum(joined.count(cue) for cue in _CLINICIAN_CUES)
    return (2 * cues + len(_SECOND_PERSON.findall(joined))
            - len(_FIRST_PERSON.findall(joined))) / count


def from_segments(segments: Sequence[Segment]) -> Transcript:
    """Whisper's segments as turns: consecutive segments of one voice make one turn."""
    split = _voices([s.pitch for s in segments])
    groups: list[int | None] = []
    for seg in segments:
        groups.append(None if split is None or seg.pitch <= 0 else int(seg.pitch > split))
    roles: dict[int, Speaker] = {}
    if split is not None:
        texts = {g: [s.text for s, gg in zip(segments, groups, strict=True) if gg == g]
                 for g in (0, 1)}
        clinician = max((0, 1), key=lambda g: _clinician_score(texts[g]))
        roles = {clinician: "clinician", 1 - clinician: "patient"}
    turns: list[Turn] = []
    current: list[Segment] = []
    current_group: int | None = None

    def flush() -> None:
        if current:
            speaker = roles.get(current_group) if current_group is not None else None
            turns.append(Turn(len(turns), speaker, " ".join(s.text for s in current if s.text),
                              current[0].start, current[-1].end))

    for seg, group in zip(segments, groups, strict=True):
        if not seg.text.strip():
            continue
        if current and (group != current_group or split is None):
            flush()
            current = []
        current.append(seg)
        current_group = group
    flush()
    return build(turns[:MAX_TURNS])
