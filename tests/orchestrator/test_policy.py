"""The stop policy (orchestrator/policy.py) as a pure function: no Redis, no storage."""

from __future__ import annotations

from manifestkit import decision

from distillq.spec import BudgetSpec, LoopSpec
from orchestrator.policy import decide

LOOP = LoopSpec(max_cycles=5, patience=2, min_delta=0.01)
FREE = BudgetSpec()


def test_the_first_cycle_is_the_baseline() -> None:
    d = decide(LOOP, FREE, None, 0, 0.5, at=1.0)
    assert (d.best_cycle, d.best_value, d.action, d.reason, d.at) == (0, 0.5, "continue", "", 1.0)
    assert d.metric == LOOP.metric


def test_a_gain_within_min_delta_does_not_move_the_baseline() -> None:
    d = decide(LOOP, FREE, decision(0, 0, value=0.5), 1, 0.505, at=0)
    assert (d.best_cycle, d.best_value, d.action) == (0, 0.5, "continue")
    d = decide(LOOP, FREE, d, 2, 0.509, at=0)
    assert d.action == "stop" and d.reason == "no macro_f1 gain for 2 cycles (patience)"
    d = decide(LOOP, FREE, decision(0, 0, value=0.5), 1, 0.52, at=0)
    assert (d.best_cycle, d.best_value, d.action) == (1, 0.52, "continue")


def test_stop_reasons_in_order() -> None:
    last = decision(4, 4, value=0.5)
    assert decide(LOOP, FREE, last, 5, 0.9, at=0,
                  refusal=lambda: "x").reason == "max_cycles=5 reached"
    last = decision(1, 1, value=0.5)
    refused = decide(LOOP, FREE, last, 2, 0.9, at=0,
                     refusal=lambda: "BudgetExceededError: cap")
    assert refused.reason == "budget spent in cycle 2 (BudgetExceededError: cap)"
    capped = BudgetSpec(max_tokens=1000, max_cost=1.0)
    d = decide(LOOP, capped, last, 2, 0.9, at=0,
               spent=lambda: {"tokens_in": 600.0, "tokens_out": 400.0, "cost": 0.2})
    assert d.reason == "token budget spent (1000 of 1000)"
    d = decide(LOOP, capped, last, 2, 0.9, at=0,
               spent=lambda: {"tokens_in": 6.0, "tokens_out": 4.0, "cost": 1.5})
    assert d.reason == "cost budget spent (1.5000 of 1.0)"
    assert decide(LOOP, capped, last, 2, 0.9, at=0, spent=lambda: {"cost": 0.1}).action == \
        "continue"


def test_storage_is_asked_only_for_what_the_decision_needs() -> None:
    """Refusals and spend are read from storage by the caller: not at all once an earlier
    reason stops the loop, and spend only under a budget cap."""
    asked: list[str] = []

    def refusal() -> str:
        asked.append("refusal")
        return ""

    def spent() -> dict[str, float]:
        asked.append("spent")
        return {}

    decide(LOOP, BudgetSpec(max_cost=1.0), decision(4, 4), 5, 0.9, 0, refusal, spent)
    assert asked == [], "max_cycles decides alone"
    decide(LOOP, FREE, decision(1, 1), 2, 0.9, 0, refusal, spent)
    assert asked == ["refusal"], "no cap: spend is not read"
    decide(LOOP, BudgetSpec(max_cost=1.0), decision(1, 1), 2, 0.9, 0, refusal, spent)
    assert asked == ["refusal", "refusal", "spent"]
