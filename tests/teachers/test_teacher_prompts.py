"""PGKD prompt building, and the simulated teacher reading the very same prompt back."""

from __future__ import annotations

import json
import os
from typing import Any

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
    assert "Write 7 new, realistic and varied examples" in text


def test_descriptions_and_default_sixteen_of_each(pool) -> None:
    spec = make_spec()
    job = make_job(pool, n_mined=20)
    prompt = build_prompt(job, LABELS, spec.generation, descriptions={"refund": "money back"})
    text = _user(prompt)
    assert '- "refund": money back' in text
    for title in (P.H_CORRECT, P.H_MISCLASSIFIED):
        assert len(text.split(title)[1].split("\n\n")[0].strip().splitlines()) == 16
    assert len(prompt.shown_texts) == 4 + 16 + 16 + 10


def test_sharded_report_shows_worst_classes_and_targets_apart() -> None:
    gen = make_spec().generation
    per_class = {f"c{i:02d}": {"f1": i / 100, "precision": 0, "recall": 0, "support": 1}
                 for i in range(40)}
    report = {"per_class": per_class, "macro_f1": 0.2}
    lines = P.report_lines(report, [], gen.report_token_budget, whole=False)
    shown = [x.split("|")[1].strip() for x in lines if x.startswith("| c") and "class" not in x]
    assert shown == ["c00", "c01", "c02", "c03", "c04"]  # the same whatever the job targets
    own = P.target_lines(report, [["c30", "c02", 4], ["c07", "c08", 9]], ("c30",))
    assert [x.split("|")[1].strip() for x in own if x.startswith("| c3")] == ["c30"]
    assert sum(x.startswith("| c") for x in own) == 2  # the header and c30
    assert "- true 'c30' predicted as 'c02': 4" in own and not any("c07" in x for x in own)
    assert P.target_lines(report, [], ("not_reported",)) == []


def _among_many(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` with a report of ten more classes, all weaker than the fixture's four: its
    targets are not among the worst classes the cycle-wide part shows."""
    worse = {f"weak_{i}": {"precision": 0.1, "recall": 0.1, "f1": 0.1 + i / 100, "support": 5}
             for i in range(10)}
    job["report"]["per_class"] = {**job["report"]["per_class"], **worse}
    return job


def text_index(prompt: P.Prompt, heading: str) -> int:
    return _user(prompt).index(heading)


def _prefix(a: P.Prompt, b: P.Prompt) -> str:
    return os.path.commonprefix([_user(a), _user(b)])


def test_what_requests_share_comes_first_and_the_count_last(pool) -> None:
    """Layout 2: taxonomy, output rules and the cycle-wide report open every request of a
    cycle, whatever it targets; a request's own part follows; the count closes it."""
    gen = make_spec().generation
    refund = _among_many(make_job(pool, targets=("refund",), n=6))
    lost = _among_many(make_job(pool, targets=("card_lost",), n=6))
    a, b = build_prompt(refund, LABELS, gen), build_prompt(lost, LABELS, gen)
    shared = _prefix(a, b)
    assert shared.startswith(P.H_TAXONOMY) and P.H_OUTPUT in shared and P.H_REPORT in shared
    assert "confusions" not in shared, "a class-targeted request shows its targets' only"
    text = _user(a)  # the requests part where their targets' lines start
    assert "Their most frequent confusions:\n- true 'refund' predicted as 'card_lost': 7" in text
    assert text.index(P.H_TARGET_REPORT) < len(shared) < text.index(P.H_FEWSHOT)
    order = [text.index(h) for h in (P.H_TAXONOMY, P.H_OUTPUT, P.H_REPORT, P.H_TARGET_REPORT,
                                     P.H_FEWSHOT, P.H_CORRECT, P.H_MISCLASSIFIED, P.H_HARD,
                                     P.H_TASK)]
    assert order == sorted(order)
    assert text.rstrip().splitlines()[-1] == "Batch: 1 of 1"
    # two requests of one job (a split re-ask asks fewer) differ only in the task
    whole, half = build_prompt(refund, LABELS, gen), build_prompt(refund, LABELS, gen, n=3)
    assert _prefix(whole, half) == _user(whole)[: _user(whole).index(P.H_TASK)] + P.H_TASK + \
        "\nWrite "


def test_shared_examples_put_the_mined_examples_in_the_shared_part(pool) -> None:
    gen = make_spec(generation={"shared_examples": True}).generation
    refund = _among_many(make_job(pool, targets=("refund",)))
    lost = _among_many(make_job(pool, targets=("card_lost",)))
    a, b = build_prompt(refund, LABELS, gen), build_prompt(lost, LABELS, gen)
    shared = _prefix(a, b)
    for title in (P.H_CORRECT, P.H_MISCLASSIFIED, P.H_HARD):
        assert title in shared
    assert text_index(a, P.H_TARGET_REPORT) < len(shared) < text_index(a, P.H_FEWSHOT)
    assert len(shared) > 0.8 * len(_user(a))
    assert a.shown_texts == build_prompt(refund, LABELS, make_spec().generation).shown_texts


def test_a_target_among_the_worst_classes_is_not_shown_twice(pool) -> None:
    gen = make_spec().generation
    text = _user(build_prompt(make_job(pool, targets=("refund",)), LABELS, gen))
    assert text.count("| refund | 0.800 |") == 1, "its line is among the worst classes'"
    own = text.split(P.H_TARGET_REPORT)[1].split("##")[0]
    assert "| refund" not in own and "- true 'refund' predicted as 'card_lost': 7" in own
    shared = make_spec(generation={"shared_examples": True}).generation
    text = _user(build_prompt(make_job(pool, targets=("refund",)), LABELS, shared))
    assert text.count("predicted as 'card_lost': 7") == 1  # the cycle's list shows it already
    assert P.H_TARGET_REPORT not in text, "nothing of its own left to show"


def test_a_job_planned_before_layout_2_shows_its_confusions_as_its_targets(pool) -> None:
    """Such a job has no ``target_confusions``; its ``confusions`` are its targets' (they
    differ from job to job, so they must not go into the shared part)."""
    job = _among_many(make_job(pool, targets=("card_arrival",)))
    del job["target_confusions"]
    job["confusions"] = [["card_arrival", "card_lost", 3]]
    text = _user(build_prompt(job, LABELS, make_spec().generation))
    shared, own = text.split(P.H_TARGET_REPORT)
    assert "confusions" not in shared and "- true 'card_arrival' predicted as 'card_lost': 3" in own


def test_single_report_is_whole_only_within_budget() -> None:
    per_class = {f"class_{i:03d}": {"f1": i / 400, "precision": 0.5, "recall": 0.5, "support": 9}
                 for i in range(335)}
    report = {"per_class": per_class, "accuracy": 0.3}
    small = P.report_lines({"per_class": dict(list(per_class.items())[:10])}, [], 1500, True)
    assert sum(x.startswith("| class_") for x in small) == 10
    big = P.report_lines(report, [], 300, True)
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
