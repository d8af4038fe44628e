"""A chat completion as distillq reads it: the answer's text, what it cost (``usage``, with the
input tokens a provider served from its prompt cache), why it ended (``finish_reason``:
``length`` means cut at ``max_tokens``), and whether distillq's simulated teacher wrote it (its
``system_fingerprint``), so a run pointed at the simulation as at a real server
(``teacher.kind: openai``) is still reported as simulated."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.teachers.errors import TeacherTransientError

SIM_FINGERPRINT = "distillq-simulated-teacher"  # workers.teachers.sim's system_fingerprint


@dataclass(frozen=True)
class Completion:
    """One successful answer: its text and what it cost."""

    text: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    api_id: str
    model: str
    finish_reason: str = ""  # "length": cut at max_tokens
    cached_tokens: int = 0  # of input_tokens, read from the provider's prompt cache
    simulated: bool = False  # written by distillq's simulated teacher, not an LLM

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def read_completion(raw: bytes, latency: float, estimate: int, model: str) -> Completion:
    """Decode an answer; without ``usage``, tokens are estimated (4 characters a token)."""
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        head = raw[:200].decode("utf-8", "replace")
        raise TeacherTransientError("bad_response", f"not a chat completion: {head!r}") from None
    usage = data.get("usage") or {}
    text = str(text)
    return Completion(
        text=text,
        input_tokens=int(usage.get("prompt_tokens") or estimate),
        output_tokens=int(usage.get("completion_tokens") or math.ceil(len(text) / 4)),
        latency_s=latency, api_id=str(data.get("id", "")),
        model=str(data.get("model") or model),
        finish_reason=str(choice.get("finish_reason") or ""),
        cached_tokens=cached_tokens(usage),
        simulated=data.get("system_fingerprint") == SIM_FINGERPRINT,
    )


def cached_tokens(usage: Mapping[str, Any]) -> int:
    """Input tokens the provider served from its prompt cache: OpenAI's
    ``prompt_tokens_details.cached_tokens``, or ``cache_read_input_tokens`` (Anthropic's name,
    passed on by some gateways); 0 when the answer says nothing of it."""
    details = usage.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if value is None:
        value = usage.get("cache_read_input_tokens")
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
