"""A model of a provider's automatic prompt cache, for the simulated teacher and the cost plan.

OpenAI's rule (its "Prompt caching" guide): a prompt of at least 1,024 tokens is cached; a
later request whose prompt starts with the same tokens is served that prefix from the cache,
counted in ``usage.prompt_tokens_details.cached_tokens``, in steps of 128 tokens (1,024,
1,152, …). Other providers differ (docs/teachers.md, "Prompt caching").

A prompt is looked up when it arrives and cached once it has been answered, so requests sent
together (in flight at once) do not serve each other, as with a provider.

Tokens here are the simulated teacher's: four characters each, over the conversation as the
endpoint receives it (each message's role, then its content). Entries live as long as the
cache holds them: ``capacity`` prefixes, least recently used dropped first (a provider keeps
them minutes; a distillq cycle's requests come within minutes of each other).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

CHARS_PER_TOKEN = 4
STEP_TOKENS = 128


def conversation_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The conversation as one string, message by message (role, then content)."""
    return "".join(f"\x1e{m.get('role', '')}\x1f{m.get('content', '')}" for m in messages)


class PrefixCache:
    """Which prompt prefixes were seen; ``min_tokens`` 0 turns the cache off."""

    def __init__(self, min_tokens: int = 1024, step_tokens: int = STEP_TOKENS,
                 capacity: int = 200_000) -> None:
        self.min_tokens, self.step_tokens, self.capacity = min_tokens, step_tokens, capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def _prefix_digests(self, text: str) -> list[tuple[int, str]]:
        """(tokens, digest) of every cacheable prefix of ``text``, shortest first."""
        step = self.step_tokens * CHARS_PER_TOKEN
        first = self.min_tokens * CHARS_PER_TOKEN
        if not self.min_tokens or len(text) < first:
            return []
        out: list[tuple[int, str]] = []
        h = hashlib.sha256()
        done = 0
        for end in range(first, len(text) + 1, step):
            h.update(text[done:end].encode())
            done = end
            out.append((end // CHARS_PER_TOKEN, h.copy().hexdigest()))
        return out

    def lookup(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """Tokens of ``messages`` the cache would serve: its longest cached prefix."""
        cached = 0
        for tokens, digest in self._prefix_digests(conversation_text(messages)):
            if digest not in self._seen:
                break
            cached = tokens
            self._seen.move_to_end(digest)
        return cached

    def store(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Cache the prompt's prefixes (a provider caches every prompt it processes)."""
        for _, digest in self._prefix_digests(conversation_text(messages)):
            self._seen[digest] = None
            self._seen.move_to_end(digest)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)


class InFlightCache:
    """Requests answered ``concurrency`` at a time, in order: request i finds the prompts of
    requests 0 … i - concurrency cached (those in flight with it are not yet)."""

    def __init__(self, cache: PrefixCache, concurrency: int) -> None:
        self.cache, self.concurrency = cache, max(1, concurrency)
        self._pending: list[Sequence[Mapping[str, Any]]] = []

    def send(self, messages: Sequence[Mapping[str, Any]]) -> int:
        if len(self._pending) >= self.concurrency:
            self.cache.store(self._pending.pop(0))
        self._pending.append(messages)
        return self.cache.lookup(messages)

    def settle(self) -> None:
        """Every request sent so far has been answered (the controller's cache warm-up)."""
        for messages in self._pending:
            self.cache.store(messages)
        self._pending.clear()
