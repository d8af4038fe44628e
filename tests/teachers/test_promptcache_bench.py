"""bench/promptcache's baseline: layout 1, the order prompts had before layout 2."""

from __future__ import annotations

import pytest

from bench.promptcache.layout1 import build_prompt as layout_1
from bench.promptcache.run import Measured
from tests.teachers.conftest import LABELS, make_job, make_spec
from workers.teachers import prompts as P
from workers.teachers.simpool import read_prompt


@pytest.mark.parametrize("mode,targets", [("sharded", ("refund",)),
                                          ("sharded", ("refund", "card_lost")),
                                          ("single", ()), ("unguided", ("refund",))])
def test_layout_1_puts_the_task_first_and_asks_for_the_same(pool, mode, targets) -> None:
    gen = make_spec(generation={"mode": mode}).generation
    job = make_job(pool, targets=targets, mode=mode)
    old, new = layout_1(job, LABELS, gen, n=5), P.build_prompt(job, LABELS, gen, n=5)
    text = old.messages[1]["content"]
    assert text.startswith(P.H_TASK) and text.rstrip().endswith(f"{P.MAX_CHARS}{gen.max_chars}")
    assert "Return exactly 5 new examples" in text
    assert old.shown_texts == new.shown_texts
    a, b = read_prompt(old.messages), read_prompt(new.messages)
    assert (a.targets, a.n, a.taxonomy, a.fewshot, a.mined, a.shown) == \
        (b.targets, b.n, b.taxonomy, b.fewshot, b.mined, b.shown)
    if targets and mode == "sharded":  # layout 1 showed the targets' confusions
        assert "- true 'refund' predicted as 'card_lost': 7" in text


def test_billed_input_takes_the_discount_off_the_cached_tokens() -> None:
    got = Measured("s", "l", tokens_in=3000, tokens_cached=2000)
    assert got.billed_input(1.0, 0.5) == pytest.approx(2.0)  # 1,000 at 1.0 + 2,000 at 0.5
