"""Labelling requests (workers/teachers/labelprompts.py) and the simulated teacher answering
them (simpool.label_texts)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from tests.teachers.conftest import LABELS, SimFactory, make_pool, make_spec
from workers.teachers import prompts as P
from workers.teachers.accounting import Tally
from workers.teachers.labelprompts import (
    ANSWER_KEY,
    H_TEXTS,
    build_label_prompt,
    majority,
    read_labels,
)
from workers.teachers.openai import client_for
from workers.teachers.parsing import extract_items
from workers.teachers.runtime import get_runtime
from workers.teachers.simpool import Pool, label_texts, read_prompt


def _texts(n: int = 3) -> list[tuple[str, str]]:
    return [(f"pool-{i}", f"text number {i} " + "word " * 300) for i in range(n)]


def test_the_request_shows_keys_not_pool_ids_shared_parts_first() -> None:
    prompt = build_label_prompt(_texts(), LABELS, descriptions={"refund": "money back"},
                                text_chars=50)
    text = prompt.messages[1]["content"]
    assert prompt.keys == ("t01", "t02", "t03") and prompt.ids == ("pool-0", "pool-1", "pool-2")
    assert "pool-" not in text and '- "refund": money back' in text
    order = [text.index(h) for h in (P.H_TAXONOMY, P.H_OUTPUT, H_TEXTS, P.H_TASK)]
    assert order == sorted(order) and text.rstrip().endswith("Number of texts: 3")
    lines = [json.loads(x[2:]) for x in text.split(H_TEXTS)[1].split("##")[0].split("\n")
             if x.startswith("- {")]
    assert [x["id"] for x in lines] == ["t01", "t02", "t03"]
    assert all(len(x["text"]) <= 50 and x["text"].endswith("…") for x in lines), "cut"
    other = build_label_prompt(_texts(5), LABELS, descriptions={"refund": "money back"})
    shared = text[: text.index(H_TEXTS)]
    assert other.messages[1]["content"].startswith(shared), "the taxonomy and rules are shared"
    assert build_label_prompt(_texts(120), LABELS).keys[-1] == "t120"
    with pytest.raises(ValueError, match="at least one text"):
        build_label_prompt([], LABELS)


def test_halves_keep_their_keys_however_often_they_are_split() -> None:
    """An answer cut short is asked again as two halves, and a half cut short again: every
    key stays the one the whole request showed (the answer is read against it)."""
    from workers.teachers.labelprompts import halves

    whole = build_label_prompt(_texts(120), LABELS)
    first, second = halves(whole, LABELS)
    quarter, rest = halves(second, LABELS)
    assert first.keys[0] == "t001" and second.keys[0] == "t061" and rest.keys[-1] == "t120"
    assert quarter.keys == whole.keys[60:90] and rest.ids == whole.ids[90:]
    answer = [{"id": k, "label": "refund"} for k in quarter.keys]
    assert len(read_labels(answer, whole, LABELS).labels) == 30
    odd = halves(build_label_prompt(_texts(5), LABELS, answer=(1, 3)), LABELS)
    assert [p.keys for p in odd] == [("t01", "t02"), ("t03", "t04", "t05")]
    assert all("Answer: 2 of 3" in p.messages[1]["content"] for p in odd), "still answer 2"


def test_an_answer_is_read_by_key_and_every_fault_is_counted() -> None:
    prompt = build_label_prompt(_texts(5), LABELS)
    items = [{"id": "t01", "label": "refund"}, {"id": "t02", "label": " REFUND "},
             {"id": "t02", "label": "card_lost"}, {"id": "t09", "label": "refund"},
             {"id": "t03", "label": "pizza"}, "t04: refund"]
    got = read_labels(items, prompt, LABELS)
    assert got.labels == {"pool-0": "refund", "pool-1": "refund"}
    assert got.rejects == Counter({"duplicate_id": 1, "unknown_id": 1,
                                   "label_not_in_taxonomy": 1, "not_an_object": 1,
                                   "unlabelled": 3})


def test_majority_keeps_the_most_frequent_label_and_its_agreement() -> None:
    answers = [{"a": "x", "b": "y", "c": "z"}, {"a": "x", "b": "z", "c": "z"},
               {"a": "w", "b": "z"}]
    got = majority(answers)
    assert got["a"] == ("x", pytest.approx(2 / 3)) and got["b"] == ("z", pytest.approx(2 / 3))
    assert got["c"] == ("z", pytest.approx(2 / 3)), "an answer without the text disagreed"
    assert majority([{"a": "x"}, {"a": "y"}])["a"] == ("x", 0.5), "a tie: the first answer's"


def test_the_sim_labels_pool_texts_by_their_own_label(pool) -> None:
    sim_pool = Pool([t for t, _ in pool], [lab for _, lab in pool])
    chosen = pool[::17]
    prompt = build_label_prompt([(f"p{i}", t) for i, (t, _) in enumerate(chosen)], LABELS)
    facts = read_prompt(prompt.messages)
    assert facts.to_label[0] == ("t01", chosen[0][0]) and facts.n == len(chosen)
    assert facts.shown == set(), "texts to label are not examples shown"
    got = label_texts(sim_pool, facts, random.Random(0), 0.0)
    assert [x["label"] for x in got] == [lab for _, lab in chosen]
    noisy = label_texts(sim_pool, facts, random.Random(0), 1.0)
    assert all(x["label"] != lab for x, (_, lab) in zip(noisy, chosen, strict=True))
    near = label_texts(sim_pool, facts, random.Random(0), 1.0, "confusion")
    for x, (text, lab) in zip(near, chosen, strict=True):
        assert x["label"] == [c for c in sim_pool.nearest_labels(text, LABELS) if c != lab][0]


def test_the_sim_knows_a_pool_text_the_request_showed_cut_short() -> None:
    long = [(f"refund money back number {i}", "refund") for i in range(3)]
    long += [("refund " * 30 + "but in the end my card was lost", "card_lost")]
    sim_pool = Pool([t for t, _ in long], [lab for _, lab in long])
    prompt = build_label_prompt([("x", long[3][0])], LABELS, text_chars=40)
    assert "…" in prompt.messages[1]["content"]
    facts = read_prompt(prompt.messages)
    assert sim_pool.nearest_labels(facts.to_label[0][1], LABELS)[0] == "refund", "no guess"
    assert label_texts(sim_pool, facts, random.Random(0), 0.0)[0]["label"] == "card_lost"


def test_the_sim_guesses_a_text_it_does_not_hold_by_the_closest_label(pool) -> None:
    sim_pool = Pool([t for t, _ in pool], [lab for _, lab in pool])
    unseen = make_pool(per_label=10, seed=7)  # the same vocabulary, other texts
    prompt = build_label_prompt([(str(i), t) for i, (t, _) in enumerate(unseen)], LABELS)
    got = label_texts(sim_pool, read_prompt(prompt.messages), random.Random(0), 0.0)
    right = sum(x["label"] == lab for x, (_, lab) in zip(got, unseen, strict=True))
    assert right >= 0.7 * len(unseen), f"{right} of {len(unseen)}"


def test_the_sim_answers_a_labelling_request_over_http(sim: SimFactory, pool) -> None:
    chosen = pool[::23]
    prompt = build_label_prompt([(f"p{i}", t) for i, (t, _) in enumerate(chosen)], LABELS)
    chat = client_for(make_spec().teacher, get_runtime(), None, sim())
    done = get_runtime().run(chat.complete(prompt.messages, Tally()))
    got = read_labels(extract_items(done.text, ANSWER_KEY), prompt, LABELS)
    assert got.labels == {f"p{i}": lab for i, (_, lab) in enumerate(chosen)}
    assert not got.rejects
    faulty = client_for(make_spec().teacher, get_runtime(), None,
                        sim(fault_rate=1.0, faults=("off_taxonomy", "injection")))
    done = get_runtime().run(faulty.complete(prompt.messages, Tally()))
    bad = read_labels(extract_items(done.text, ANSWER_KEY), prompt, LABELS)
    assert bad.rejects == Counter({"label_not_in_taxonomy": 1, "unlabelled": 1})
