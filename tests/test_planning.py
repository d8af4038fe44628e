from __future__ import annotations

import json
from collections import Counter
from typing import Any

from distillq.quotas import class_quotas, largest_remainder
from distillq.spec import GenerationSpec
from orchestrator.planning import Planner

TAX = ["a", "b", "c", "d"]


def _report() -> dict[str, Any]:
    per_class = {"a": 0.9, "b": 0.5, "c": 0.2, "d": 0.9}
    mined = [
        {"id": f"m{i}", "text": f"t{i}", "label": lab, "pred": pred, "confidence": conf}
        for i, (lab, pred, conf) in enumerate(
            [("c", "b", 0.99), ("c", "b", 0.95), ("b", "c", 0.9), ("a", "d", 0.6),
             ("c", "a", 0.4)])
    ]
    return {
        "accuracy": 0.6, "macro_f1": 0.62,
        "per_class": {c: {"precision": f, "recall": f, "f1": f, "support": 10}
                      for c, f in per_class.items()},
        "confusions": [["c", "b", 7], ["b", "c", 3], ["a", "d", 1]],
        "mined": {"hard_negatives": mined[:3], "misclassified": mined,
                  "correct": [{"id": "k", "text": "ok", "label": "a", "pred": "a",
                               "confidence": 0.9}]},
    }


def _seed() -> list[dict[str, str]]:
    return [{"text": f"seed {c} {i}", "label": c} for c in TAX for i in range(6)]


def test_largest_remainder_sums_exactly() -> None:
    q = largest_remainder({"x": 1.0, "y": 1.0, "z": 1.0}, 10)
    assert sum(q.values()) == 10 and sorted(q.values()) == [3, 3, 4]
    assert largest_remainder({"x": 0.0, "y": 0.0}, 3) in ({"x": 2, "y": 1}, {"x": 1, "y": 2})


def test_weak_classes_get_more_and_all_keep_a_floor() -> None:
    q = class_quotas(_report(), TAX, 2, 40)
    assert sum(q.values()) == 40
    assert min(q.values()) >= 2
    assert q["c"] > q["b"] > q["a"]


def test_sharded_plan_is_deterministic_and_targets_classes_and_pairs() -> None:
    gen = GenerationSpec(examples_per_cycle=60, examples_per_request=5, n_hard_negatives=2)
    p1 = Planner(gen, TAX, _seed()).plan(1, _report())
    p2 = Planner(gen, TAX, _seed()).plan(1, _report())
    assert p1 == p2
    assert sum(j["n_examples"] for j in p1) == 60
    assert all(j["n_examples"] <= 5 for j in p1)
    assert len({j["job_id"] for j in p1}) == len(p1)
    assert any(j["target_labels"] == ["c", "b"] for j in p1)
    job_c = next(j for j in p1 if j["target_labels"] == ["c"])
    # hard negatives are the class's own confident errors, most confident first
    assert [h["text"] for h in job_c["hard_negatives"]] == ["t0", "t1"]
    assert set(job_c["report"]["per_class"]) >= {"c"}
    assert all(x["label"] == "c" for x in job_c["fewshot"])


def test_single_mode_carries_whole_report() -> None:
    gen = GenerationSpec(mode="single", examples_per_cycle=20, examples_per_request=10)
    jobs = Planner(gen, TAX, _seed()).plan(2, _report())
    assert len(jobs) == 2 and all(j["target_labels"] == [] for j in jobs)
    assert set(jobs[0]["report"]["per_class"]) == set(TAX)


def test_unguided_mode_is_uniform_without_guidance() -> None:
    gen = GenerationSpec(mode="unguided", examples_per_cycle=40, examples_per_request=10)
    jobs = Planner(gen, TAX, _seed()).plan(1, _report())
    per_class = Counter()
    for j in jobs:
        per_class[j["target_labels"][0]] += j["n_examples"]
        assert j["report"] == {} and j["hard_negatives"] == [] and j["misclassified"] == []
    assert set(per_class.values()) == {10}


def test_ablations_drop_report_or_hard_negatives() -> None:
    no_hn = Planner(GenerationSpec(use_hard_negatives=False), TAX, _seed()).plan(1, _report())
    assert all(j["hard_negatives"] == [] for j in no_hn)
    assert any(j["misclassified"] for j in no_hn)
    no_rep = Planner(GenerationSpec(use_report=False), TAX, _seed()).plan(1, _report())
    assert all(j["report"] == {} for j in no_rep)
    assert any(j["hard_negatives"] for j in no_rep)


def test_each_cycle_shows_the_next_few_shot_examples_of_a_class() -> None:
    """The same few examples every cycle would steer every cycle's answers to the same texts:
    each cycle (and each part of a quota) gets the next window of the class's seed examples."""
    gen = GenerationSpec(mode="unguided", examples_per_cycle=8, examples_per_request=10,
                         n_fewshot=2)
    planner = Planner(gen, TAX, _seed())  # 6 seed examples a class
    shown = [[x["text"] for x in next(j for j in planner.plan(cycle, {})
                                      if j["target_labels"] == ["a"])["fewshot"]]
             for cycle in (1, 2, 3, 4)]
    assert shown == [["seed a 0", "seed a 1"], ["seed a 2", "seed a 3"],
                     ["seed a 4", "seed a 5"], ["seed a 0", "seed a 1"]]
    assert planner.plan(2, {}) == Planner(gen, TAX, _seed()).plan(2, {}), "deterministic"


def test_a_split_validation_steers_by_its_steering_part_alone() -> None:
    """With dataset.steer_fraction the eval report's own metrics are the selecting part's;
    the quotas and the report the prompts show come from its ``steer`` part."""
    gen = GenerationSpec(examples_per_cycle=40, examples_per_request=5, class_floor=1)
    steer = _report()
    selecting = {**steer, "macro_f1": 0.99, "confusions": [],
                 "per_class": {c: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 5}
                               for c in TAX}}
    split = Planner(gen, TAX, _seed()).plan(1, {**selecting, "steer": steer})
    assert split == Planner(gen, TAX, _seed()).plan(1, steer)
    assert split != Planner(gen, TAX, _seed()).plan(1, selecting)
    assert all(job["report"].get("macro_f1") == 0.62 for job in split if job["report"])


def test_a_label_the_split_left_without_steering_examples_is_not_taken_as_weakest() -> None:
    gen = GenerationSpec(examples_per_cycle=40, examples_per_request=5, class_floor=1)
    steer = _report()
    # "d" has no steering example: report() gives it f1 0 and support 0
    steer["per_class"]["d"] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    jobs = Planner(gen, TAX, _seed()).plan(1, {**_report(), "steer": steer})
    quota = Counter()
    for job in jobs:
        if len(job["target_labels"]) == 1:
            quota[job["target_labels"][0]] += job["n_examples"]
    # a, b, c weigh 0.1, 0.5, 0.8; d gets their mean (0.467), not 1.0, the most of all
    assert quota["c"] > quota["d"] > quota["a"]
    assert all("d" not in job["report"].get("per_class", {}) for job in jobs
               if job["target_labels"] != ["d"])
    # without a split the report covers every label as it is (d as weak as can be)
    plain = class_quotas(steer, TAX, gen.class_floor, 40)
    assert plain["d"] > plain["c"]


def test_every_job_of_a_cycle_carries_the_same_cycle_wide_report_part() -> None:
    gen = GenerationSpec(examples_per_cycle=60, examples_per_request=5)
    jobs = Planner(gen, TAX, _seed()).plan(1, _report())
    assert all(j["confusions"] == _report()["confusions"] for j in jobs)
    job_a = next(j for j in jobs if j["target_labels"] == ["a"])
    assert job_a["target_confusions"] == [["a", "d", 1]]


def test_shared_examples_give_every_job_the_same_mined_examples_of_any_class() -> None:
    gen = GenerationSpec(examples_per_cycle=60, examples_per_request=5, n_misclassified=3,
                         shared_examples=True)
    jobs = Planner(gen, TAX, _seed()).plan(1, _report())
    mined = {json_key(j) for j in jobs}
    assert len(mined) == 1, "the same examples for every job"
    # one of each label first (c, b, a), each label's in the report's order
    assert [x["text"] for x in jobs[0]["misclassified"]] == ["t0", "t2", "t3"]
    own = Planner(GenerationSpec(examples_per_cycle=60, examples_per_request=5,
                                 n_misclassified=3), TAX, _seed()).plan(1, _report())
    assert len({json_key(j) for j in own}) > 1, "by default each job shows its targets' own"


def json_key(job: dict[str, Any]) -> str:
    return json.dumps([job[k] for k in ("correct", "misclassified", "hard_negatives")])


def test_shared_examples_span_the_classes_of_a_report_mined_class_by_class() -> None:
    """Sharded cycles mine class by class (``mining.mine`` with ``per_class``): the first n
    of each list are one class's; shared examples take every class's first."""
    from workers.training.mining import MiningCounts, mine

    items = [{"id": f"{c}{i}", "text": f"{c} {i}", "label": c, "pred": c if i % 2 else "d",
              "confidence": 0.5 + i / 100} for c in TAX for i in range(8)]
    report = {**_report(), "mined": mine(items, MiningCounts(4, 4, 4, per_class=True))}
    gen = GenerationSpec(examples_per_cycle=20, examples_per_request=5, n_correct=4,
                         n_misclassified=4, shared_examples=True)
    job = Planner(gen, TAX, _seed()).plan(1, report)[0]
    assert [x["label"] for x in job["correct"]] == ["a", "b", "c", "d"]
    assert [x["label"] for x in job["misclassified"]] == ["a", "b", "c", "a"]  # d: none wrong


def test_the_prompts_of_a_planned_cycle_share_their_first_part() -> None:
    """What the planner gives every job and what the prompt puts first agree: every request
    of a cycle is the same up to its own part (with shared examples, past the examples)."""
    from workers.teachers.prompts import H_FEWSHOT, H_TARGET_REPORT, H_TASK, build_prompt

    taxonomy = [f"k{i:02d}" for i in range(12)]
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1": 0.3 + (i % 5) / 10, "support": 9}
                 for i, c in enumerate(taxonomy)}  # ties: the order must not hang on the job
    items = [{"id": f"{c}{i}", "text": f"about {c} number {i}", "label": c,
              "pred": taxonomy[(j + 1) % 12] if i % 2 else c, "confidence": 0.4 + i / 50}
             for j, c in enumerate(taxonomy) for i in range(6)]
    from workers.training.mining import MiningCounts, mine

    report = {"accuracy": 0.5, "macro_f1": 0.5, "per_class": per_class,
              "confusions": [[c, taxonomy[(j + 1) % 12], 3] for j, c in enumerate(taxonomy)],
              "mined": mine(items, MiningCounts(4, 4, 4, per_class=True))}
    seed = [{"text": f"seed {c} {i}", "label": c} for c in taxonomy for i in range(4)]
    for shared in (False, True):
        gen = GenerationSpec(examples_per_cycle=60, examples_per_request=5, n_correct=4,
                             n_misclassified=4, n_hard_negatives=4, shared_examples=shared)
        texts = [build_prompt(job, taxonomy, gen).messages[1]["content"]
                 for job in Planner(gen, taxonomy, seed).plan(1, report)]
        own = [min(t.find(h) for h in (H_TARGET_REPORT, H_FEWSHOT, H_TASK) if h in t)
               for t in texts]
        assert len({t[:i] for t, i in zip(texts, own, strict=True)}) == 1
        assert ("Hard negatives" in texts[0][: own[0]]) == shared


def test_a_mixed_cycle_gives_what_it_cannot_label_to_generation() -> None:
    """share 0.5 of 40: 20 texts to label; a selection of 6 (the unlabelled texts are running
    out) leaves 34 to generation. Labelling only (share 1) never generates."""
    from distillq.spec import LabellingSpec

    def counts(share: float, selected: int) -> tuple[int, int]:
        gen = GenerationSpec(examples_per_cycle=40, examples_per_request=5)
        lab = LabellingSpec(share=share, texts_per_request=4)
        texts = [{"id": f"u{i}", "text": f"text {i}"} for i in range(selected)]
        jobs = Planner(gen, TAX, _seed(), labelling=lab).plan(1, _report(), texts)
        return (sum(j["n_examples"] for j in jobs if j.get("kind") != "label"),
                sum(j["n_examples"] for j in jobs if j.get("kind") == "label"))

    assert counts(0.5, 20) == (20, 20)
    assert counts(0.5, 6) == (34, 6)
    assert counts(0.5, 0) == (40, 0)
    assert counts(1.0, 6) == (0, 6)
