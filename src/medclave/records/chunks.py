"""Resources to chunks of text: notes split on sections and sentences, structured resources
rendered to one short line each ("Observation 2021-03-04 (March 2021): CD4 count 412 cells/uL").

Why this shape: the embedding model reads at most 256 word pieces (all-MiniLM-L6-v2's
``max_seq_length``), so a chunk stays under :data:`MAX_CHARS` (about 120 words); a note's
Markdown-style ``#`` headings are section boundaries (Synthea's notes are written that way, as
are most clinical note templates: Chief Complaint, History, Assessment and Plan), and each
chunk starts with the note's date and section name so that it still says what it is when
retrieved alone. Dates carry the month's name because questions say "in March 2021".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from medclave.records.fhir import FhirResource, notes

MAX_CHARS: Final = 600
MAX_CHUNKS_PER_RESOURCE: Final = 256
_MONTHS: Final = ("January", "February", "March", "April", "May", "June", "July", "August",
                  "September", "October", "November", "December")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$")


@dataclass(frozen=True)
class Chunk:
    index: int  # within its resource
    text: str


def human_date(value: str | None) -> str:
    """``2021-03-04 (March 2021)`` from a FHIR date or dateTime; '' when there is none."""
    if not value or len(value) < 7 or not value[:4].isdigit():
        return ""
    day = value[:10]
    try:
        month = _MONTHS[int(value[5:7]) - 1]
    except (ValueError, IndexError):
        return day
    return f"{day} ({month} {value[:4]})"


def _text(concept: Any) -> str:
    """A CodeableConcept's text, else its first coding's display, else its code."""
    if isinstance(concept, list):
        return ", ".join(t for t in (_text(c) for c in concept) if t)
    if not isinstance(concept, Mapping):
        return ""
    if isinstance(concept.get("text"), str):
        return str(concept["text"])
    for coding in concept.get("coding") or ():
        if isinstance(coding, Mapping):
            return str(coding.get("display") or coding.get("code") or "")
    return ""


def _quantity(q: Any) -> str:
    if not isinstance(q, Mapping) or "value" not in q:
        return ""
    value = q["value"]
    text = f"{value:g}" if isinstance(value, float) else str(value)
    unit = q.get("unit") or q.get("code") or ""
    return f"{text} {unit}".strip()


def _value(r: Mapping[str, Any]) -> str:
    for key in ("valueQuantity",):
        if key in r:
            return _quantity(r[key])
    if "valueCodeableConcept" in r:
        return _text(r["valueCodeableConcept"])
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime"):
        if key in r:
            return str(r[key])
    return ""


def _observation(r: Mapping[str, Any]) -> str:
    parts = [f"{_text(r.get('code'))}: {_value(r)}".rstrip(": ")]
    for comp in r.get("component") or ():
        if isinstance(comp, Mapping):
            parts.append(f"{_text(comp.get('code'))} {_value(comp)}".strip())
    return "; ".join(p for p in parts if p)


def _name(r: Mapping[str, Any]) -> str:
    for name in r.get("name") or ():
        if isinstance(name, Mapping):
            given = " ".join(str(g) for g in name.get("given") or ())
            return f"{given} {name.get('family', '')}".strip()
    return ""


def render(res: FhirResource) -> str:
    """One line for a structured resource (not for DocumentReference, whose notes are read)."""
    r = res.body
    when = human_date(res.date)
    head = f"{res.type} {when}".strip()
    match res.type:
        case "Patient":
            body = f"{_name(r)}, {r.get('gender', 'unknown gender')}, born {r.get('birthDate', '?')}"
        case "Observation":
            body = f"{_observation(r)} (category {res.category})"
        case "Condition":
            status = _text(r.get("clinicalStatus"))
            body = f"{_text(r.get('code'))}" + (f" ({status})" if status else "")
        case "DiagnosticReport":
            body = f"{_text(r.get('code'))}, status {r.get('status', '?')}"
        case "Immunization":
            body = f"vaccine {_text(r.get('vaccineCode'))}, {r.get('status', '')}"
        case "Encounter":
            who = ", ".join(str(p.get("individual", {}).get("display", ""))
                            for p in r.get("participant") or () if isinstance(p, Mapping))
            reason = _text(r.get("reasonCode"))
            body = f"{_text(r.get('type'))}" + (f", reason {reason}" if reason else "") + (
                f", with {who}" if who.strip(", ") else "")
        case "MedicationRequest":
            dose = "; ".join(str(d.get("text")) for d in r.get("dosageInstruction") or ()
                             if isinstance(d, Mapping) and d.get("text"))
            body = f"{_text(r.get('medicationCodeableConcept'))} ({r.get('status', '')})" + (
                f", {dose}" if dose else "")
        case "Procedure":
            body = f"{_text(r.get('code'))} ({r.get('status', '')})"
        case "AllergyIntolerance":
            body = f"allergy to {_text(r.get('code'))}, criticality {r.get('criticality', '?')}"
        case "CarePlan":
            acts = ", ".join(_text(a.get("detail", {}).get("code"))
                             for a in r.get("activity") or () if isinstance(a, Mapping))
            body = f"{_text(r.get('category'))}" + (f": {acts}" if acts else "")
        case "CareTeam":
            body = f"{r.get('name', 'care team')}, {len(res.members)} practitioners"
        case _:
            body = ""
    return f"{head}: {body}".strip()[:MAX_CHARS]


def _pieces(text: str) -> Iterable[tuple[str, str]]:
    """``(section, paragraph)`` pairs of a note."""
    section = ""
    para: list[str] = []
    for line in text.splitlines():
        heading = _HEADING.match(line.strip())
        if heading:
            if para:
                yield section, " ".join(para)
                para = []
            section = heading.group(1).strip()
        elif line.strip():
            para.append(line.strip())
        elif para:
            yield section, " ".join(para)
            para = []
    if para:
        yield section, " ".join(para)


def split_note(text: str, prefix: str) -> list[str]:
    """A note in chunks of at most :data:`MAX_CHARS`, never across a section, sentences whole
    (a sentence longer than a chunk is cut at the limit); each chunk starts with ``prefix`` and
    its section's name."""
    out: list[str] = []
    current: list[str] = []
    current_section: str | None = None

    def flush() -> None:
        if current:
            label = f"{prefix} {current_section}:" if current_section else f"{prefix}:"
            out.append(f"{label} {' '.join(current)}")
            current.clear()

    for section, paragraph in _pieces(text):
        if section != current_section:
            flush()
            current_section = section
        budget = MAX_CHARS - len(prefix) - len(section) - 3
        for sentence in _SENTENCE.split(paragraph):
            sentence = sentence[:budget]
            if sum(len(s) + 1 for s in current) + len(sentence) > budget:
                flush()
            current.append(sentence)
    flush()
    return out


def chunks_of(res: FhirResource) -> list[Chunk]:
    """The chunks a resource is indexed as (none for Consent: it governs, it is not content)."""
    if res.type == "Consent":
        return []
    if res.type == "DocumentReference":
        kind = _text(res.body.get("type")) or "Clinical note"
        prefix = f"{kind} {human_date(res.date)}".strip()
        texts = [c for note in notes(res.body) for c in split_note(note, prefix)]
        if not texts:
            texts = [f"{prefix}: {res.body.get('description', '')}".strip()]
    else:
        texts = [render(res)]
    return [Chunk(i, t) for i, t in enumerate(texts[:MAX_CHUNKS_PER_RESOURCE])]
