"""The stop policy: after a cycle is trained, continue or stop. A pure function of what the
controller read (the cycle's validation metric, the last decision, spend, budget refusals):
no Redis, no storage, no clock.

The best cycle so far is the last decision's: a cycle that gained no more than
``loop.min_delta`` does not become the baseline later cycles are measured against. The loop
stops, first reason first, at ``loop.max_cycles``, after ``loop.patience`` cycles without a
gain, when the run's budget refused some of the cycle's generation, or when the tokens or
cost spent reach ``budget.max_tokens`` / ``budget.max_cost``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from distillq.manifest import Decision
from distillq.spec import BudgetSpec, LoopSpec

Spent = Mapping[str, float]  # tokens_in, tokens_out, cost of the run so far


def decide(loop: LoopSpec, budget: BudgetSpec, last: Decision | None, cycle: int,
           value: float, at: float, refusal: Callable[[], str] = lambda: "",
           spent: Callable[[], Spent] = dict) -> Decision:
    """The decision after ``cycle`` scored ``value`` on ``loop.metric``. ``refusal``: the
    error of a generation job of the cycle the budget refused ("" if none); ``spent``: the
    tokens and cost spent so far. Both are asked for only when the reasons before them do not
    stop the loop already (and ``spent`` only under a budget cap): the caller reads storage
    for them."""
    improved = last is None or value > last.best_value + loop.min_delta
    best_cycle = cycle if improved or last is None else last.best_cycle
    best_value = value if improved or last is None else last.best_value
    reason = stop_reason(loop, budget, cycle, cycle - best_cycle, refusal, spent)
    return Decision(cycle=cycle, value=value, metric=loop.metric, best_cycle=best_cycle,
                    best_value=best_value, action="stop" if reason else "continue",
                    reason=reason, at=at)


def stop_reason(loop: LoopSpec, budget: BudgetSpec, cycle: int, cycles_without_gain: int,
                refusal: Callable[[], str] = lambda: "",
                spent: Callable[[], Spent] = dict) -> str:
    """Why the loop stops after ``cycle`` ("" to go on)."""
    if cycle >= loop.max_cycles:
        return f"max_cycles={loop.max_cycles} reached"
    if cycles_without_gain >= loop.patience:
        return f"no {loop.metric} gain for {loop.patience} cycles (patience)"
    refused = refusal()
    if refused:
        return f"budget spent in cycle {cycle} ({refused})"
    if not has_caps(budget):
        return ""
    return _cap_reached(budget, spent())


def _cap_reached(budget: BudgetSpec, spent: Spent) -> str:
    tokens = spent.get("tokens_in", 0.0) + spent.get("tokens_out", 0.0)
    if budget.max_tokens is not None and tokens >= budget.max_tokens:
        return f"token budget spent ({tokens:.0f} of {budget.max_tokens})"
    cost = spent.get("cost", 0.0)
    if budget.max_cost is not None and cost >= budget.max_cost:
        return f"cost budget spent ({cost:.4f} of {budget.max_cost})"
    return ""


def has_caps(budget: BudgetSpec) -> bool:
    """Whether the run's budget caps tokens or cost (spend matters only then)."""
    return budget.max_tokens is not None or budget.max_cost is not None
