"""The safe-messaging system prompt (``safe_messaging.md``, a readable file the provider's
clinical lead maintains) and the messages the model sees for one turn."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def default_prompt() -> str:
    return resources.files(__package__).joinpath("safe_messaging.md").read_text("utf-8").strip()


def load_prompt(path: Path | None) -> str:
    return default_prompt() if path is None else path.read_text("utf-8").strip()


CRISIS_NOTE = ("The service has just shown this person its crisis line and emergency numbers "
               "because their message may signal risk. Acknowledge their feelings, encourage "
               "them to use those resources now, and ask whether they are safe right now.")


def messages(system: str, history: list[dict[str, Any]], content: str, *, crisis: bool,
             history_turns: int) -> list[dict[str, str]]:
    """System prompt, the last ``history_turns`` turns (model text only: a crisis response is
    the service's, not the model's), then the new message."""
    prompt = system + ("\n\n" + CRISIS_NOTE if crisis else "")
    out = [{"role": "system", "content": prompt}]
    for turn in history[-history_turns:] if history_turns else []:
        role, text = turn.get("role"), turn.get("content")
        if role in ("user", "assistant") and isinstance(text, str) and text:
            out.append({"role": str(role), "content": text})
    out.append({"role": "user", "content": content})
    return out
