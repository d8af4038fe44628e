"""The model of a provider's prompt cache, in the simulated teacher and in what the client
reads and bills."""

from __future__ import annotations

import pytest

from tests.teachers.conftest import LABELS, SimFactory, make_job, make_spec
from workers.teachers.accounting import Tally, request_cost
from workers.teachers.openai import client_for
from workers.teachers.prefixcache import (
    CHARS_PER_TOKEN,
    InFlightCache,
    PrefixCache,
    conversation_text,
)
from workers.teachers.prompts import build_prompt
from workers.teachers.runtime import get_runtime


def _ask(cache: PrefixCache, messages: list[dict[str, str]]) -> int:
    """What a provider does with a prompt sent alone: look it up, answer, cache it."""
    cached = cache.lookup(messages)
    cache.store(messages)
    return cached


def _conv(shared: str, tail: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "s"}, {"role": "user", "content": shared + tail}]


def test_a_shared_prefix_is_served_in_steps_from_the_minimum() -> None:
    cache = PrefixCache(min_tokens=1024, step_tokens=128)
    shared = "x" * 5000
    first = _conv(shared, "a" * 2000)
    assert _ask(cache, first) == 0  # nothing seen yet
    common = len(conversation_text(_conv(shared, "")))  # the conversations' common prefix
    got = _ask(cache, _conv(shared, "b" * 2000))
    step, start = 128 * CHARS_PER_TOKEN, 1024 * CHARS_PER_TOKEN
    assert got == (start + (common - start) // step * step) // CHARS_PER_TOKEN
    assert 1024 <= got <= common // CHARS_PER_TOKEN and (got - 1024) % 128 == 0
    # the very same prompt again: every whole step of it
    assert _ask(cache, first) == len(conversation_text(first)) // step * 128


def test_short_prompts_are_never_cached_and_zero_turns_it_off() -> None:
    short = _conv("y" * 3000, "")  # under 1,024 tokens
    cache = PrefixCache()
    assert _ask(cache, short) == 0 and _ask(cache, short) == 0
    off = PrefixCache(min_tokens=0)
    long = _conv("z" * 9000, "")
    assert _ask(off, long) == 0 and _ask(off, long) == 0


def test_a_different_start_shares_nothing() -> None:
    cache = PrefixCache()
    _ask(cache, _conv("Task: 8 examples\n" + "x" * 8000, ""))
    assert _ask(cache, _conv("Task: 9 examples\n" + "x" * 8000, "")) == 0


def test_the_least_recently_used_prefixes_go_first() -> None:
    cache = PrefixCache(capacity=2)
    a, b = _conv("a" * 4200, ""), _conv("b" * 4200, "")  # one cacheable prefix each
    _ask(cache, a)
    _ask(cache, b)
    _ask(cache, _conv("c" * 4200, ""))  # a's prefix dropped
    assert _ask(cache, b) > 0 and _ask(cache, a) == 0


def test_requests_in_flight_together_do_not_serve_each_other() -> None:
    prompts = [_conv("s" * 6000, str(i) * 100) for i in range(5)]
    flight = InFlightCache(PrefixCache(), concurrency=2)
    got = [flight.send(p) for p in prompts]
    assert got[:2] == [0, 0] and all(g >= 1024 for g in got[2:])


def test_the_sim_reports_cached_tokens_and_the_client_bills_them(sim: SimFactory, pool) -> None:
    """Two requests of one cycle with other targets share the prompt's first part; the sim
    says how much of it it served from its cache, and the request is billed at the cached
    price for those tokens."""
    spec = make_spec(teacher={"price": {"input_per_1k": 0.002, "output_per_1k": 0.01,
                                        "cached_input_per_1k": 0.001}},
                     generation={"shared_examples": True, "prompt_example_chars": 400})
    url, off = sim(), sim(prefix_cache_tokens=0)
    chat = client_for(spec.teacher, get_runtime(), None, url)
    prompts = [build_prompt(make_job(pool, targets=(t,)), LABELS, spec.generation)
               for t in ("refund", "card_lost")]
    done = [get_runtime().run(chat.complete(p.messages, Tally())) for p in prompts]
    assert done[0].cached_tokens == 0
    assert 1024 <= done[1].cached_tokens < done[1].input_tokens
    assert done[1].cached_tokens > 0.5 * done[1].input_tokens  # the shared examples
    full = request_cost(spec.teacher.price, done[1].input_tokens, done[1].output_tokens)
    billed = request_cost(spec.teacher.price, done[1].input_tokens, done[1].output_tokens,
                          done[1].cached_tokens)
    assert full - billed == pytest.approx(done[1].cached_tokens * 0.001 / 1000)
    plain = client_for(spec.teacher, get_runtime(), None, off)
    again = [get_runtime().run(plain.complete(p.messages, Tally())) for p in prompts]
    assert [d.cached_tokens for d in again] == [0, 0]
