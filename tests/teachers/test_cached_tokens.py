"""Prompt-cache accounting: the cached input tokens a provider reports are read, counted and
priced at `price.cached_input_per_1k`."""

from __future__ import annotations

import json

import pytest

from distillq.spec import PriceSpec
from workers.teachers.accounting import request_cost
from workers.teachers.completion import cached_tokens, read_completion


@pytest.mark.parametrize(("usage", "cached"), [
    ({"prompt_tokens": 2000, "prompt_tokens_details": {"cached_tokens": 1536}}, 1536),  # OpenAI
    ({"prompt_tokens": 2000, "cache_read_input_tokens": 1024}, 1024),  # Anthropic's name
    ({"prompt_tokens": 2000}, 0),
    ({"prompt_tokens": 2000, "prompt_tokens_details": None}, 0),
    ({"prompt_tokens": 2000, "prompt_tokens_details": {"cached_tokens": "x"}}, 0),
])
def test_cached_input_tokens_are_read_from_usage(usage: dict, cached: int) -> None:
    assert cached_tokens(usage) == cached
    raw = json.dumps({"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}],
                      "usage": {**usage, "completion_tokens": 10}}).encode()
    done = read_completion(raw, 0.1, 0, "m")
    assert (done.cached_tokens, done.input_tokens, done.finish_reason) == (cached, 2000, "stop")


def test_cached_input_is_priced_apart_only_when_the_spec_says_how() -> None:
    plain = PriceSpec(input_per_1k=1.0, output_per_1k=4.0)
    assert request_cost(plain, 2000, 100, cached_tokens=1500) == pytest.approx(2.4)
    half = PriceSpec(input_per_1k=1.0, output_per_1k=4.0, cached_input_per_1k=0.5)
    assert request_cost(half, 2000, 100, cached_tokens=1500) == pytest.approx(0.5 + 0.75 + 0.4)
    assert request_cost(half, 2000, 100, cached_tokens=9999) == pytest.approx(1.0 + 0.4), \
        "never more cached than sent"
