"""PGKD prompt building, and the simulated teacher reading the very same prompt back."""

from __future__ import annotations

import json

from tests.teachers.conftest import LABELS, make_job, make_spec
from workers.teachers import prompts as P
from workers.teachers.prompts import build_prompt, split_counts
from workers.teachers.simpool import read_prompt


def _user(prompt: P.Prompt) -> str:
    return prompt.messages[1]["content"]


def test_sharded_prompt_carries_taxonomy_report_and_mined_examples(pool) -> None:
    spec = make_spec(generation={"n_hard_negatives": 5, "n_correct": 3})
    job = make_job(pool, targets=("refund",), n=7)
    prompt = build_prompt(job, LABELS, spec.generation)
    text = _user(prompt)
    assert prompt.n == 7 and prompt.target_labels == ("refund",)
    assert 'Target labels: ["refund"]' in text and "Number of examples: 7" in text
    assert '- "refund": money back' not in text  # descriptions come from the caller
    assert all(f'- "{lab}"' in text for lab in LABELS)
    assert "| refund | 0.800 | 0.700 | 0.800 | 50 |" in text
    hard = text.split(P.H_HARD)[1].split("##")[0].strip().splitlines()
    assert len(hard) == 5 and all(json.loads(x[2:])["predicted"] for x in hard)
    assert len(text.split(P.H_CORRECT)[1].split("##")[0].strip().splitlines()) == 3
    assert '{"examples": [{"text": "...", "label": "..."}]}' in text
    assert "Return exactly 7 new examples" in text


def test_descriptions_and_default_sixteen_of_each(pool) -> None:
    spec = make_spec()
    job = make_job(pool, n_mined=20)
    prompt = build_prompt(job, LABELS, spec.generation, descriptions={"refund": "money back"})
    text = _user(prompt)
    assert '- "refund": money back' in text
    for title in (P.H_CORRECT, P.H_MISCLASSIFIED):
        assert len(text.split(title)[1].split("\n\n")[0].strip().splitlines()) == 16
    assert len(prompt.shown_texts) == 4 + 16 + 16 + 10


def test_sharded_report_shows_targets_and_worst_not_all() -> None:
    gen = make_spec().generation
    per_class = {f"c{i:02d}": {"f1": i / 100, "precision": 0, "recall": 0, "support": 1}
                 for i in range(40)}
    lines = P.report_lines({"per_class": per_class, "macro_f1": 0.2}, [], ("c30",),
                           gen.report_token_budget, whole=False)
    shown = [x.split("|")[1].strip() for x in lines if x.startswith("| c") and "class" not in x]
    assert shown == ["c30", "c00", "c01", "c02", "c03", "c04"]


def test_single_report_is_whole_only_within_budget() -> None:
    per_class = {f"class_{i:03d}": {"f1": i / 400, "precision": 0.5, "recall": 0.5, "support": 9}
                 for i in range(335)}
    report = {"per_class": per_class, "accuracy": 0.3}
    small = P.report_lines({"per_class": dict(list(per_class.items())[:10])}, [], (), 1500, True)
    assert sum(x.startswith("| class_") for x in small) == 10
    big = P.report_lines(report, [], (), 300, True)
    rows = [x for x in big if x.startswith("| class_")]
    assert 0 < len(rows) < 335 and sum(len(x) + 1 for x in big) <= 300 * 4 + 60
    assert rows[0].startswith("| class_000 ") and "more classes not shown" in big[-1]


def test_unguided_prompt_has_no_report_and_no_mined_examples(pool) -> None:
    spec = make_spec(generation={"mode": "unguided"})
    job = make_job(pool, mode="unguided", targets=("card_lost",))
    text = _user(build_prompt(job, LABELS, spec.generation))
    assert P.H_REPORT not in text and P.H_HARD not in text and P.H_MISCLASSIFIED not in text
    assert P.H_FEWSHOT in text and P.H_TAXONOMY in text


def test_use_report_and_hard_negatives_switches(pool) -> None:
    spec = make_spec(generation={"use_report": False, "use_hard_negatives": False})
    text = _user(build_prompt(make_job(pool), LABELS, spec.generation))
    assert P.H_REPORT not in text and P.H_HARD not in text and P.H_MISCLASSIFIED in text


def test_long_texts_are_clipped_in_the_prompt(pool) -> None:
    spec = make_spec(generation={"prompt_example_chars": 40})
    job = make_job(pool)
    job["fewshot"] = [{"text": "word " * 100, "label": "refund"}]
    text = _user(build_prompt(job, LABELS, spec.generation))
    line = text.split(P.H_FEWSHOT)[1].strip().splitlines()[0]
    assert len(json.loads(line[2:])["text"]) == 40


def test_the_sim_reads_our_prompt(pool) -> None:
    spec = make_spec(generation={"n_hard_negatives": 4, "n_misclassified": 6})
    job = make_job(pool, targets=("refund", "card_lost"), n=9)
    facts = read_prompt(build_prompt(job, LABELS, spec.generation).messages)
    assert facts.targets == ["refund", "card_lost"] and facts.n == 9
    assert facts.taxonomy == LABELS
    assert len(facts.mined) == 10 and len(facts.fewshot) == 4
    assert facts.f1["refund"] == 0.8


def test_split_counts() -> None:
    assert split_counts(25, 10) == [9, 8, 8]
    assert split_counts(10, 10) == [10]
    assert split_counts(0, 10) == [0]
