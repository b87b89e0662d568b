"""Structured output: JSON Schemas checked within bounds, and the grammars that enforce them.

A caller's JSON Schema (``response_format`` ``json_schema``, a tool's ``parameters``) is untrusted
input that llama.cpp's converter (``llama_cpp.llama_grammar``) turns into a GBNF grammar. That
converter fetches ``https://`` references when its assertion is compiled out (``python -O``),
and expands ``maxItems``, ``maxLength`` and regex ``{m,n}`` counts into rules as long as the
count, so :func:`check_schema` bounds the schema first: local references only, a bounded number
of nodes and depth, bounded repetition counts in total, finite numbers. Whatever the converter
or llama.cpp's grammar parser then rejects is refused (``enclave.bad_request``), never replaced
by a looser grammar: the caller asked for that schema, and "refuse, never silently ignore".

The schema check is the API's (every engine gets only checked schemas); building grammars is the
llama.cpp engine's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from medclave.errors import EnclaveError

MAX_SCHEMA_NODES = 2048
MAX_SCHEMA_DEPTH = 32
MAX_REPETITIONS = 4096  # the sum of every count that expands into rules
MAX_PATTERN = 1024
MAX_INT_BOUND = 2**63
MAX_GRAMMAR_CHARS = 512 * 1024
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names


def check_schema(schema: Any, *, param: str) -> None:
    """Raise ``enclave.bad_request`` unless ``schema`` is a JSON Schema within the bounds."""
    if not isinstance(schema, dict):
        raise _refuse(param, "the schema is a JSON object")
    stack: list[tuple[Any, int]] = [(schema, 1)]
    nodes = repetitions = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES or depth > MAX_SCHEMA_DEPTH:
            raise _refuse(param, f"the schema is over {MAX_SCHEMA_NODES} nodes or "
                                 f"{MAX_SCHEMA_DEPTH} levels deep")
        if isinstance(node, float) and not math.isfinite(node):
            raise _refuse(param, "the schema holds a number that is not finite")
        if isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        if not isinstance(node, dict):
            continue
        ref = node.get("$ref")
        if ref is not None and (not isinstance(ref, str) or not ref.startswith("#/")):
            raise _refuse(param, "$ref must point inside the schema (#/...)")
        for key in _COUNTS:
            value = node.get(key)
            if value is not None and not isinstance(value, dict):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise _refuse(param, f"{key} is a non-negative integer")
                repetitions += value
        for key in _BOUNDS:
            value = node.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and abs(value) > MAX_INT_BOUND:
                raise _refuse(param, f"{key} is beyond ±2**63")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            if len(pattern) > MAX_PATTERN:
                raise _refuse(param, f"pattern is over {MAX_PATTERN} characters")
            repetitions += sum(int(m.group(2) or m.group(1)) for m in
                               _QUANTIFIER.finditer(pattern))
        if repetitions > MAX_REPETITIONS:
            raise _refuse(param, f"the schema's repetition counts add up to over "
                                 f"{MAX_REPETITIONS}")
        stack.extend((value, depth + 1) for value in node.values())


def compact(value: Any) -> str:
    """JSON text in the caller's key order (the form a schema is carried and committed in)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- grammars (llama.cpp) ----------------------------------------------------------------------


def schema_grammar(schema: str, *, param: str) -> str:
    """The GBNF grammar for JSON text valid under ``schema`` (JSON text, checked again here:
    a replayed input reaches the engine without the API's check)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        check_schema(json.loads(schema), param=param)
    except (ValueError, RecursionError):
        raise _refuse(param, "the schema is not JSON") from None
    try:
        grammar = str(json_schema_to_gbnf(schema))
    except Exception as exc:  # the converter raises many types; none may reach the caller
        raise _refuse(param, f"the schema cannot be enforced here ({type(exc).__name__}: "
                             f"{str(exc)[:160]})") from None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise _refuse(param, "the schema's grammar is too large")
    return grammar


def json_object_grammar() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


def choice_grammar(options: Sequence[str]) -> str:
    """A grammar for exactly one of ``options`` (tool names and fixed words: no quoting needed,
    ``TOOL_NAME`` keeps them to letters, digits, ``_`` and ``-``)."""
    return "root ::= " + " | ".join(json.dumps(o) for o in options)


def check_grammar(vocab: Any, grammar: str, *, param: str) -> None:
    """Have llama.cpp's own parser accept ``grammar`` first: a grammar it rejects would give the
    sampler chain a null sampler."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise _refuse(param, "the schema's grammar is not accepted by the engine")
    llama_cpp.llama_sampler_free(sampler)


def _refuse(param: str, message: str) -> EnclaveError:
    return EnclaveError("enclave.bad_request", f"{param}: {message}", param=param)
