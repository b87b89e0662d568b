"""Inference engines: llama.cpp embedded (the default), an OpenAI-compatible server (vLLM)."""

from typing import Any

from medclave.enclave.engines.base import (
    ChatMessage,
    Completion,
    Delta,
    Engine,
    SamplingParams,
    collect,
)

__all__ = ["ChatMessage", "Completion", "Delta", "Engine", "SamplingParams", "collect",
           "replay_engine"]


def __getattr__(name: str) -> Any:
    # ``medclave audit replay`` looks up ``medclave.enclave.engines:replay_engine``; it is
    # imported on demand because it needs the commitment module, which itself imports ``base``
    # here.
    if name == "replay_engine":
        from medclave.enclave.engines.replay import replay_engine

        return replay_engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
