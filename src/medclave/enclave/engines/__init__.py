"""Inference engines: llama.cpp embedded (the default), an OpenAI-compatible server (vLLM)."""

from medclave.enclave.engines.base import (
    ChatMessage,
    Completion,
    Delta,
    Engine,
    SamplingParams,
    collect,
)

__all__ = ["ChatMessage", "Completion", "Delta", "Engine", "SamplingParams", "collect"]
