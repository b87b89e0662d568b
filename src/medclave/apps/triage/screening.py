"""The deterministic crisis screen: rules and a readable lexicon, run on every patient message
before the model sees it; nothing the model says changes its result.

The lexicon (``lexicon.toml`` beside this module, or a tenant's own file) lists rules by
category (suicidal ideation, explicit and indirect; self-harm; overdose; harm to others) and
language, negation cues, and imminence cues that raise a crisis to an emergency; its header
says how matching works. Why not a classifier: the screen must be auditable line by line by a
clinical safety lead, behave the same on every run, and never be argued out of a result by
text in the conversation; a model can add sensitivity later, never replace this floor.

Normalisation before matching: Unicode NFKC, case-folded, accents removed, curly quotes and
apostrophes straightened, whitespace collapsed. Text between double quotation marks (or
guillemets) is quoted speech: a match inside it is set aside. A match with a negation cue of
its language earlier in the same clause (within ``negation_window`` characters) is set aside.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from medclave.errors import InputError

Level = Literal["routine", "urgent", "emergency"]
LEVELS: tuple[Level, ...] = ("routine", "urgent", "emergency")
CATEGORIES = ("suicidal_ideation", "self_harm", "overdose", "harm_to_others")
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"',
                         "\u00bb": '"', "\u2018": "'", "\u2019": "'", "\u02bc": "'"})
_CLAUSE = re.compile(r"[.!?;:,\n]|\b(but|and|yet|though|although|pero|y|mais|et|aber|und)\b")


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    level: Level
    lang: str
    patterns: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class Lexicon:
    version: int
    languages: tuple[str, ...]
    negation_window: int
    negation: dict[str, tuple[re.Pattern[str], ...]]
    rules: tuple[Rule, ...]
    imminence: tuple[re.Pattern[str], ...]
    digest: str


@dataclass(frozen=True)
class Screen:
    """The result: never the message text, only which rules matched."""

    level: Level
    categories: tuple[str, ...]
    rules: tuple[str, ...]
    set_aside: tuple[str, ...]  # rules whose only matches were negated or quoted

    @property
    def crisis(self) -> bool:
        return self.level != "routine"


def _compile(patterns: Any, where: str) -> tuple[re.Pattern[str], ...]:
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise InputError("config.invalid", f"lexicon {where}: patterns are a list of strings")
    try:
        return tuple(re.compile(p) for p in patterns)
    except re.error as exc:
        raise InputError("config.invalid", f"lexicon {where}: {exc}") from None


def parse_lexicon(data: bytes) -> Lexicon:
    """A lexicon file; ``config.invalid`` for anything malformed (fail closed: no screen, no
    chat)."""
    import hashlib

    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError("config.invalid", f"the lexicon is not TOML: {exc}") from None
    if raw.get("version") != 1:
        raise InputError("config.invalid", "lexicon version 1 expected")
    languages = tuple(raw.get("languages") or ())
    rules = []
    for i, r in enumerate(raw.get("rule") or ()):
        if r.get("level") not in LEVELS[1:] or r.get("category") not in CATEGORIES or r.get(
                "lang") not in languages or not isinstance(r.get("id"), str):
            raise InputError("config.invalid", f"lexicon rule {i}: id, category, level, lang")
        rules.append(Rule(r["id"], r["category"], r["level"], r["lang"],
                          _compile(r.get("patterns"), r["id"])))
    negation = {lang: _compile(raw.get("negation", {}).get(lang, []), f"negation.{lang}")
                for lang in languages}
    window = raw.get("negation_window")
    if not isinstance(window, int) or not 0 <= window <= 200 or not rules:
        raise InputError("config.invalid", "lexicon: negation_window 0..200 and some rules")
    return Lexicon(1, languages, window, negation, tuple(rules),
                   _compile(raw.get("imminence", {}).get("patterns", []), "imminence"),
                   hashlib.sha256(data).hexdigest())


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    return parse_lexicon(resources.files(__package__).joinpath("lexicon.toml").read_bytes())


def load_lexicon(path: Path | None) -> Lexicon:
    return default_lexicon() if path is None else parse_lexicon(path.read_bytes())


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()
    text = "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", text)


def _quoted(text: str) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, c in enumerate(text):
        if c == '"':
            if start is None:
                start = i
            else:
                spans.append((start, i))
                start = None
    return spans


def _negated(lexicon: Lexicon, lang: str, text: str, at: int) -> bool:
    before = text[max(0, at - lexicon.negation_window):at]
    clauses = list(_CLAUSE.finditer(before))
    if clauses:
        before = before[clauses[-1].end():]
    # The rule's own language's cues, and English's: a word shared by languages ("suicide")
    # matches the rule of either.
    cues = lexicon.negation.get(lang, ()) + (lexicon.negation.get("en", ()) if lang != "en"
                                             else ())
    return any(cue.search(before) for cue in cues)


def screen(text: str, lexicon: Lexicon | None = None) -> Screen:
    lex = lexicon or default_lexicon()
    norm = normalise(text)
    quoted = _quoted(norm)
    matched: dict[str, Rule] = {}
    set_aside: set[str] = set()
    for rule in lex.rules:
        for pattern in rule.patterns:
            for m in pattern.finditer(norm):
                if any(a < m.start() < b for a, b in quoted) or _negated(lex, rule.lang, norm, m.start()):
                    set_aside.add(rule.id)
                else:
                    matched[rule.id] = rule
                    break
            if rule.id in matched:
                break
    if not matched:
        return Screen("routine", (), (), tuple(sorted(set_aside)))
    level = max((r.level for r in matched.values()), key=LEVELS.index)
    if level == "urgent" and any(p.search(norm) for p in lex.imminence):
        level = "emergency"
    categories = tuple(sorted({r.category for r in matched.values()}))
    return Screen(level, categories, tuple(sorted(matched)),
                  tuple(sorted(set_aside - set(matched))))
