"""The SOAP note: each statement drafted from one transcript sentence, and linked to it.

Two steps, so that a small model cannot put words in a patient's mouth:

1. **Where each sentence goes** is decided from the transcript, not by the model: what the
   patient says is Subjective; what the clinician says goes to Assessment when it names a
   finding's meaning (``I think this is``, ``consistent with``, ``you have``), to Plan when it
   orders, prescribes or schedules, to Objective when it reports an examination or a
   measurement; questions, greetings and bare yes/no answers go nowhere. With no speakers
   known, first-person sentences count as the patient's, unless they assess or prescribe.
2. **The wording** of each statement is drafted by the enclave's chat model, one sentence at a
   time, with a section-specific few-shot prompt (the bundled SmolLM2-135M follows examples far
   better than instructions) at temperature 0. A draft is kept only if it is *faithful*: every
   number in it is in the source sentence, and most of its content words (all, in the
   Assessment) are too. Otherwise the statement is the source sentence itself
   (``drafted_by: "transcript"``), so the note never says what the visit did not.

Every statement carries the id and ``[start, end)`` span of the sentence it came from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from medclave.apps.scribe.turns import Sentence, Transcript
from medclave.enclave.engines.base import Engine, Generation, SamplingParams, generation_scope

Section = Literal["subjective", "objective", "assessment", "plan"]
SECTIONS: Final[tuple[Section, ...]] = ("subjective", "objective", "assessment", "plan")
MAX_DRAFTED: Final = 40  # statements the model drafts per note; the rest stay verbatim
DRAFT_PARAMS: Final = SamplingParams(max_tokens=40, temperature=0.0, seed=0, stop=("\n",))

_ASSESSMENT = ("i think", "this is", "this looks", "looks like", "sounds like", "consistent with",
               "diagnos", "you have", "suggest", "likely", "impression", "it is a", "it's a",
               "not controlled", "well controlled", "under control")
_PLAN = ("prescrib", "i'll", "i will", "we will", "we'll", "let's", "start", "take ", "continue",
         "increase", "decrease", "refer", "order", "follow up", "follow-up", "come back",
         "schedule", "recommend", "rest", "ice", "elevat", "return", "check again", "repeat")
_OBJECTIVE = ("blood pressure", "temperature", "pulse", "heart rate", "exam", "on examination",
              "lungs", "tonsil", "swollen", "swelling", "tender", "a1c", "score", "weight",
              "oxygen", "saturation", "looks red", "i see", "rash", "reflex", "range of motion")
_NOTHING = re.compile(r"^(yes|no|yeah|okay|ok|sure|thanks|thank you|good morning|hello|hi|"
                      r"right|alright|all right|fine|great)[\s,.!]*(doctor|thanks|thank you)?"
                      r"[\s.!]*$", re.IGNORECASE)
_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|my|me)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z][a-z']+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_STOP: Final = frozenset([
    "a", "an", "the", "and", "or", "but", "of", "for", "to", "in", "on", "at", "with", "by",
    "from", "as", "is", "are", "was", "were", "be", "been", "being", "it", "its", "this",
    "that", "these", "those", "there", "here", "your", "you", "i", "my", "me", "we", "our",
    "he", "she", "they", "them", "his", "her", "their", "has", "have", "had", "do", "does",
    "did", "not", "no", "so", "very", "just", "also", "about", "over", "under", "into", "than",
    "then", "some", "any", "all", "more", "most", "much", "many", "few", "can", "could", "will",
    "would", "should", "may", "might", "must", "shall",
])

_SHOTS: Final[dict[Section, tuple[tuple[str, str], ...]]] = {
    "subjective": (("I have had a cough for two weeks.", "Cough for two weeks."),
                   ("My knee hurts when I climb stairs.", "Knee pain when climbing stairs."),
                   ("I stopped the pills because they made me dizzy.",
                    "Stopped the pills because of dizziness.")),
    "objective": (("Your temperature is 38.5 degrees.", "Temperature 38.5 degrees."),
                  ("Your lungs sound clear on both sides.", "Lungs clear on both sides."),
                  ("The knee is swollen and tender on the inside.",
                   "Knee swollen and tender medially.")),
    "assessment": (("I think this is acute bronchitis.", "Acute bronchitis."),
                   ("This looks like a urinary tract infection.", "Urinary tract infection."),
                   ("Your sugar is high, so your type 2 diabetes is not controlled.",
                    "Type 2 diabetes, not controlled.")),
    "plan": (("I will prescribe amoxicillin for ten days.", "Amoxicillin for ten days."),
             ("Come back in two weeks if it is not better.",
              "Return in two weeks if not better."),
             ("Let's check your kidney function with a blood test.",
              "Blood test for kidney function.")),
}
_SYSTEM: Final = "Rewrite each sentence as a short clinical note. Keep every fact. Add nothing."


@dataclass(frozen=True)
class Statement:
    section: Section
    text: str
    sentence: str  # the id of the transcript sentence it came from
    start: int
    end: int
    drafted_by: Literal["model", "transcript"]


def _has(text: str, cues: Sequence[str]) -> bool:
    return any(cue in text for cue in cues)


def section_of(sentence: Sentence, transcript: Transcript) -> Section | None:
    """Where a sentence goes in the note (see the module); None: nowhere."""
    text = sentence.text.strip()
    lower = text.lower()
    if _NOTHING.match(text) or len(_WORD.findall(lower)) < 2:
        return None
    speaker = transcript.speaker_of(sentence)
    if speaker is None:
        # No voices told apart: an assessment or a prescription is the clinician's ("I think
        # this is ..."), other first-person statements the patient's.
        clinical = _has(lower, _ASSESSMENT) or _has(lower, _PLAN[:4])
        speaker = "patient" if (_FIRST_PERSON.search(lower) and not text.endswith("?")
                                and not clinical) else "clinician"
    if speaker == "patient":
        return None if text.endswith("?") else "subjective"
    if text.endswith("?"):
        return None
    if _has(lower, _ASSESSMENT):
        return "assessment"
    if _has(lower, _PLAN):
        return "plan"
    if _has(lower, _OBJECTIVE) or _NUMBER.search(lower):
        return "objective"
    return None


def _content(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def faithful(draft: str, source: str, section: Section) -> bool:
    """Whether a draft says nothing its source does not (see the module)."""
    draft = draft.strip()
    if not draft or len(draft) > 2 * len(source) + 20 or not any(c.isalpha() for c in draft):
        return False
    if not set(_NUMBER.findall(draft)) <= set(_NUMBER.findall(source)):
        return False
    words = [_stem(w) for w in _content(draft)]
    if not words:
        return False
    known = {_stem(w) for w in _content(source)}
    inside = sum(w in known for w in words) / len(words)
    return inside == 1.0 if section == "assessment" else inside >= 0.75


def draft_one(engine: Engine, section: Section, source: str, generation: Generation) -> str:
    """The model's wording of one sentence for ``section`` (not yet checked)."""
    messages: list[dict[str, str]] = [{"role": "system", "content": _SYSTEM}]
    for said, noted in _SHOTS[section]:
        messages += [{"role": "user", "content": said}, {"role": "assistant", "content": noted}]
    messages.append({"role": "user", "content": source})
    with generation_scope(generation):
        completion = engine.chat(messages, DRAFT_PARAMS)
    return completion.text.strip()


def draft_note(transcript: Transcript, engine: Engine | None, generation: Generation
               ) -> tuple[Statement, ...]:
    """Every statement of the note, in transcript order within each section. Drafted section
    by section, so that consecutive prompts share their few-shot prefix (llama.cpp reuses the
    evaluated prefix of the previous prompt)."""
    placed = [(section, sentence) for sentence in transcript.sentences
              if (section := section_of(sentence, transcript)) is not None]
    out: list[Statement] = []
    drafted = 0
    for name in SECTIONS:
        for section, sentence in placed:
            if section != name:
                continue
            text, by = sentence.text, "transcript"
            if engine is not None and drafted < MAX_DRAFTED and generation.wanted():
                drafted += 1
                draft = draft_one(engine, section, sentence.text, generation)
                if faithful(draft, sentence.text, section):
                    text, by = draft, "model"
            out.append(Statement(section, text, sentence.id, sentence.start, sentence.end,
                                 "model" if by == "model" else "transcript"))
    return tuple(out)


def render(statements: Sequence[Statement]) -> str:
    """The note as plain text, one heading per section (``None recorded.`` when empty)."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"{section.capitalize()}:")
        items = [s.text for s in statements if s.section == section]
        lines.extend(f"- {t}" for t in items) if items else lines.append("- None recorded.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
