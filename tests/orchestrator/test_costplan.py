"""`orchestrator plan` (orchestrator/costplan.py): a run's teacher requests, tokens and cost,
estimated from the prompts the planner builds, before anything is spent or written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from runkit import write_spec

from distillq.spec import load_spec
from orchestrator.cli import main
from orchestrator.costplan import plan_costs
from workers.teachers.accounting import request_cost


def test_plan_prices_the_prompts_cycle_one_would_send(
        tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(tmp_path, corpus, "planned",
                      teacher={"price": {"input_per_1k": 0.5, "output_per_1k": 2.0}},
                      generation={"examples_per_cycle": 24, "examples_per_request": 4},
                      loop={"max_cycles": 3})
    spec = load_spec(path)
    plan = plan_costs(spec)
    c = plan.cycle
    # 6 classes: 18 examples in 6 class jobs, 6 in the 6 confused pairs' jobs (one request each)
    assert (c.examples, c.requests, c.jobs) == (24, 12, 12)
    assert c.tokens_in > 12 * 200, "each prompt carries the taxonomy, the report and examples"
    assert c.tokens_out == pytest.approx(24 * plan.output_tokens_per_example, abs=6)
    assert c.cost == pytest.approx(request_cost(spec.teacher.price, c.tokens_in, c.tokens_out),
                                   rel=1e-3), "no cached price set: cached tokens cost as input"
    assert plan.run.tokens_in == 3 * c.tokens_in and plan.run.cost == pytest.approx(3 * c.cost)
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the SIMULATED teacher" in out
    assert (f"| cycle 1 | 12 | 12 | 24 | {c.tokens_in:,} | {c.tokens_cached:,} | "
            f"{c.tokens_out:,} |") in out
    assert not (tmp_path / "store").exists(), "nothing written"


def test_plan_counts_what_a_prompt_cache_serves(tmp_path: Path, corpus: Path) -> None:
    """Shared examples make most of each prompt the same: the first job goes alone (the
    controller's warm-up), and every request after it finds that part cached, billed at the
    cached price. (All 12 requests fit ``teacher.concurrency`` 16: without the warm-up none
    would.)"""
    price = {"input_per_1k": 1.0, "output_per_1k": 0.0, "cached_input_per_1k": 0.5}
    plans = {}
    for shared in (False, True):
        path = write_spec(tmp_path, corpus, f"cache-{shared}",
                          teacher={"price": price},
                          generation={"examples_per_cycle": 24, "examples_per_request": 4,
                                      "shared_examples": shared, "n_correct": 40,
                                      "n_misclassified": 40, "n_hard_negatives": 40})
        plans[shared] = plan_costs(load_spec(path)).cycle
    own, shared = plans[False], plans[True]
    assert shared.tokens_cached > 0.5 * shared.tokens_in > own.tokens_cached
    assert shared.cost == pytest.approx((shared.tokens_in - shared.tokens_cached / 2) / 1000)


def test_plan_of_a_bad_spec_names_the_problem(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"train": str(tmp_path / "missing.csv")}}))
    assert main(["plan", str(path)]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_plan_prices_the_labelling_requests_too(tmp_path: Path, corpus: Path) -> None:
    """Half the budget labelled: 12 texts in requests of 6 (each asked twice), each label a
    few output tokens; the other half generated as before."""
    plans = {}
    for share in (0.0, 0.5):
        path = write_spec(tmp_path, corpus, f"label-{share}",
                          dataset={"unlabelled": "rest_of_train"},
                          generation={"examples_per_cycle": 24, "examples_per_request": 4},
                          labelling={"share": share, "texts_per_request": 6,
                                     "self_consistency": 2})
        plans[share] = plan_costs(load_spec(path))
    full, mixed = plans[0.0].cycle, plans[0.5].cycle
    assert mixed.examples == full.examples == 24
    from workers.teachers.generate import LABEL_OUTPUT_TOKENS

    generated = full.tokens_out / 24
    assert mixed.tokens_out == pytest.approx(12 * generated + 2 * 12 * LABEL_OUTPUT_TOKENS,
                                             abs=8)
    assert mixed.requests > full.requests / 2 + 2, "the labelling requests are counted"


def test_a_mixed_plan_prices_the_cycles_after_the_unlabelled_texts_run_short(
        tmp_path: Path, corpus: Path) -> None:
    """20 unlabelled texts, 12 a cycle to label: cycle 2 labels 8 and generates 16, cycle 3
    generates all 24; generating costs more than labelling, so the run costs more than three
    times cycle 1 (in output tokens; the spec has no prices)."""
    pool = tmp_path / "pool.csv"
    pool.write_text("text\n" + "".join(f"a new unlabelled message number {i}\n"
                                       for i in range(20)))
    path = write_spec(tmp_path, corpus, "short", dataset={"unlabelled": str(pool)},
                      generation={"examples_per_cycle": 24, "examples_per_request": 4},
                      labelling={"share": 0.5, "texts_per_request": 6},
                      loop={"max_cycles": 3})
    spec = load_spec(path)
    plan = plan_costs(spec)
    assert (plan.short_from, plan.unlabelled) == (2, 20)
    assert plan.run.examples == 72 and plan.run.tokens_out > 3 * plan.cycle.tokens_out
    assert "The 20 unlabelled texts run short in cycle 2" in "\n".join(plan.lines(spec))
    roomy = plan_costs(spec.model_copy(update={"loop": spec.loop.model_copy(
        update={"max_cycles": 1})}))
    assert roomy.short_from is None and roomy.run == roomy.cycle
    none = plan_costs(spec.model_copy(update={"loop": spec.loop.model_copy(
        update={"max_cycles": 0})}))  # cycle 0 only: nothing asked of the teacher
    assert none.run.requests == 0 and none.cycle.requests > 0
