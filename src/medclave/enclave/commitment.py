"""What an inference's audit commitments cover, so that ``medclave audit replay`` reruns it.

An entry's ``params`` holds temperature, top-p, max_tokens and the seed, and no free text. The
prompt commitment covers the model's input as the engine received it (the chat messages, tool
calls and results included, or the completion prompt) together with everything else that shapes
the answer: stop sequences, ``n``, penalties, logit bias, log-probabilities, tools and
``tool_choice``, ``response_format``. With none of those it is the input alone, as before they
existed, so older entries still replay. JSON Schemas (tool parameters, ``response_format``) are
committed as their compact JSON text in the caller's key order: the order shapes the grammar,
hence the answer, and sorting the keys would lose it.

The answer commitment covers the answer's text, or, when the request offered tools or asked for
several choices (the committed input says which), the canonical JSON of every choice's text and
tool calls (``{"choices": [{"content", "tool_calls": [{"name", "arguments"}]}]}``; call ids are
the enclave's, not the model's, and are left out).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from medclave.enclave.engines.base import Choice, ResponseFormat, SamplingParams, Tool
from medclave.enclave.engines.grammar import TOOL_NAME
from medclave.errors import InputError

ModelInput = list[dict[str, Any]] | str  # the messages (chat) or the prompt (completion)
_PLAIN = SamplingParams()
_KEYS = {"system": {"role", "content"}, "user": {"role", "content"},
         "assistant": {"role", "content"}, "tool": {"role", "content", "tool_call_id"}}
_OPTIONS = frozenset({"stop", "n", "presence_penalty", "frequency_penalty", "logit_bias",
                      "logprobs", "tools", "tool_choice", "tool_name", "response_format"})


def prompt_commitment_bytes(value: Any) -> bytes:
    """The bytes the audit commitment covers: the model's input as compact, sorted JSON."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def commitment_input(value: ModelInput, params: SamplingParams | None = None) -> bytes:
    """What an inference's prompt commitment covers, and what ``medclave audit replay`` takes:
    the model's input, with the parameters that shape the answer beyond the entry's."""
    options = _options(params or _PLAIN)
    return prompt_commitment_bytes({"input": value, **options} if options else value)


def _options(p: SamplingParams) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if p.stop:
        out["stop"] = list(p.stop)
    if p.n != 1:
        out["n"] = p.n
    if p.presence_penalty:
        out["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty:
        out["frequency_penalty"] = p.frequency_penalty
    if p.logit_bias:
        out["logit_bias"] = {str(token): bias for token, bias in p.logit_bias}
    if p.logprobs is not None:
        out["logprobs"] = p.logprobs
    if p.tools:
        out["tools"] = [{"name": t.name, "description": t.description,
                         "parameters": t.parameters} for t in p.tools]
    if p.tool_choice != "auto":
        out["tool_choice"] = p.tool_choice
    if p.tool_name is not None:
        out["tool_name"] = p.tool_name
    if p.response_format is not None:
        fmt = p.response_format
        out["response_format"] = {"type": fmt.type} if fmt.schema is None else {
            "type": fmt.type, "schema": fmt.schema, "name": fmt.name}
    return out


def parse_commitment_input(data: bytes) -> tuple[ModelInput, SamplingParams]:
    """The inverse of :func:`commitment_input`: the input, and the committed parameters over
    defaults (the entry's own ``params`` complete them); ``input.malformed`` for anything it
    would not have produced, byte for byte (replay must run exactly what was committed)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InputError("input.malformed", "the prompt is not the committed JSON") from exc
    params = _PLAIN
    if isinstance(value, dict):
        if "input" not in value or not set(value) - {"input"} <= _OPTIONS:
            raise InputError("input.malformed", "the prompt is not the committed JSON")
        try:
            params = _params(value)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InputError("input.malformed", "the committed parameters are malformed"
                             ) from exc
        value = value["input"]
    if isinstance(value, list):
        if not value or not all(_message_ok(m) for m in value):
            raise InputError("input.malformed", "the prompt's messages are not as committed")
    elif not isinstance(value, str):
        raise InputError("input.malformed", "the prompt is not the committed JSON")
    if commitment_input(value, params) != data:
        raise InputError("input.malformed", "the prompt is not in its committed (canonical) form")
    return value, params


def _params(given: dict[str, Any]) -> SamplingParams:
    """The committed options over defaults; TypeError for one of the wrong type."""
    stop = _typed(given, "stop", list, [])
    bias = _typed(given, "logit_bias", dict, {})
    tools = _typed(given, "tools", list, [])
    fmt = _typed(given, "response_format", dict, None)
    if not all(isinstance(s, str) for s in stop) \
            or not all(isinstance(b, float) for b in bias.values()) \
            or not all(_tool_ok(t) for t in tools) \
            or (fmt is not None and not _format_ok(fmt)) \
            or given.get("tool_choice", "none") not in ("none", "required"):
        raise TypeError("a committed option has the wrong type")
    return SamplingParams(
        stop=tuple(stop), n=_typed(given, "n", int, 1),
        presence_penalty=_typed(given, "presence_penalty", float, 0.0),
        frequency_penalty=_typed(given, "frequency_penalty", float, 0.0),
        logit_bias=tuple(sorted((int(token), b) for token, b in bias.items())),
        logprobs=_typed(given, "logprobs", int, None),
        tools=tuple(Tool(t["name"], t["description"], t["parameters"]) for t in tools),
        tool_choice=_typed(given, "tool_choice", str, "auto"),
        tool_name=_typed(given, "tool_name", str, None),
        response_format=None if fmt is None else ResponseFormat(
            fmt["type"], fmt.get("schema"), fmt.get("name", "")))


def _typed(given: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    if name not in given:
        return default
    item = given[name]
    if not isinstance(item, kind) or isinstance(item, bool):
        raise TypeError(f"{name} has the wrong type")
    return item


def _tool_ok(t: Any) -> bool:
    return isinstance(t, dict) and set(t) == {"name", "description", "parameters"} \
        and all(isinstance(v, str) for v in t.values()) and TOOL_NAME.match(t["name"]) is not None


def _format_ok(f: dict[str, Any]) -> bool:
    if f == {"type": "json_object"}:
        return True
    return set(f) == {"type", "schema", "name"} and f["type"] == "json_schema" \
        and isinstance(f["schema"], str) and isinstance(f["name"], str)


def _message_ok(m: Any) -> bool:
    if not isinstance(m, dict) or not isinstance(m.get("content"), str):
        return False
    keys = _KEYS.get(m.get("role"))  # type: ignore[arg-type]
    if keys is None:
        return False
    if m["role"] == "assistant" and "tool_calls" in m:
        calls = m["tool_calls"]
        return set(m) == keys | {"tool_calls"} and isinstance(calls, list) and bool(calls) \
            and all(_call_ok(c) for c in calls)
    return set(m) == keys and all(isinstance(m[k], str) for k in keys)


def _call_ok(c: Any) -> bool:
    return isinstance(c, dict) and set(c) == {"id", "type", "function"} \
        and isinstance(c["id"], str) and c["type"] == "function" \
        and isinstance(c["function"], dict) and set(c["function"]) == {"name", "arguments"} \
        and isinstance(c["function"]["name"], str) \
        and TOOL_NAME.match(c["function"]["name"]) is not None \
        and isinstance(c["function"]["arguments"], str)


def committed_answer(params: SamplingParams, choices: Sequence[Choice]) -> str:
    """What an answer commitment covers (see the module doc)."""
    if params.n == 1 and not params.tools:
        return choices[0].text if choices else ""
    return json.dumps({"choices": [
        {"content": c.text, "tool_calls": [{"name": t.name, "arguments": t.arguments}
                                           for t in c.tool_calls]} for c in choices]},
        ensure_ascii=False, sort_keys=True, separators=(",", ":"))
