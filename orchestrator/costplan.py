"""``orchestrator plan SPEC``: what a run will ask of its teacher, before it spends anything.

The dataset is read and split as ``run`` would (nothing is written), the planner plans cycle 1
and every request's prompt is built as a worker would build it. Input tokens are those
prompts' (the client's estimate: four characters a token, four a message); output tokens are
the examples asked for, each at the data's own size: its mean text (cut at
``generation.max_chars``) and label, four characters a token, plus the JSON around them.
Before any student exists the planner has no evaluation report: a stand-in one gives every
class the same score (even quotas), confuses each class once with another (so confused pairs
get their share of the jobs, as after a real cycle 0) and mines its examples from the seed,
so the prompts carry as many examples, of the same lengths, as a real report's would. Later
cycles are planned the same way, so each is estimated like cycle 1; the run at
``loop.max_cycles`` is their sum (an upper bound: early stopping ends most runs sooner). In
the mixed mode (0 < ``share`` < 1) the unlabelled texts are counted as ``run`` keeps them: a
cycle they cannot fill gives the rest of its budget to generation, which costs more, and is
priced so. Cached input tokens are those a provider's prompt cache would serve
(``workers.teachers.prefixcache``: OpenAI's rule, prompts from 1,024 tokens in steps of 128;
the simulated teacher's own ``prefix_cache_tokens``), the requests sent in plan order,
``teacher.concurrency`` at a time (with ``generation.shared_examples``, the first job alone:
the controller's cache warm-up); they are billed at ``price.cached_input_per_1k`` when it is
set. With ``labelling.share`` the labelling requests are planned too (seed texts standing in
for the texts a cycle would select), each label at ``generate.LABEL_OUTPUT_TOKENS`` output
tokens.
"""

from __future__ import annotations

import random
from dataclasses import astuple, dataclass
from typing import Any

from distillq.quotas import label_budget
from distillq.spec import RunSpec
from orchestrator.datasets import Split, load_and_split
from orchestrator.planning import Planner
from orchestrator.unlabelled import check_unlabelled
from workers.teachers.accounting import request_cost
from workers.teachers.generate import LABEL_OUTPUT_TOKENS
from workers.teachers.labelling import label_prompts
from workers.teachers.labelprompts import LabelPrompt
from workers.teachers.openai import estimate_tokens, host_of
from workers.teachers.prefixcache import InFlightCache, PrefixCache
from workers.teachers.prompts import job_prompts

JSON_TOKENS_PER_EXAMPLE = 8  # {"text": "...", "label": "..."}, and the separators


@dataclass(frozen=True)
class CyclePlan:
    """One generation cycle's requests and their estimated tokens and cost."""

    jobs: int
    requests: int
    examples: int
    tokens_in: int
    tokens_out: int
    tokens_cached: int
    cost: float

    def __add__(self, other: CyclePlan) -> CyclePlan:
        return CyclePlan(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass(frozen=True)
class CostPlan:
    cycle: CyclePlan
    cycles: int  # loop.max_cycles
    output_tokens_per_example: float
    run: CyclePlan  # every cycle to loop.max_cycles
    short_from: int | None = None  # the first cycle the unlabelled texts cannot fill
    unlabelled: int | None = None  # the unlabelled texts a run keeps (mixed mode)

    def lines(self, spec: RunSpec) -> list[str]:
        teacher = spec.teacher
        who = ("the SIMULATED teacher" if teacher.kind == "sim"
               else f"{teacher.model} at {host_of(teacher.base_url or '')}")
        rows = [("cycle 1", self.cycle), (f"run, {self.cycles} cycles (at most)", self.run)]
        out = [f"teacher: {who}; prices per 1k tokens: input {teacher.price.input_per_1k}, "
               f"output {teacher.price.output_per_1k}",
               f"output tokens per example (from the data): "
               f"{self.output_tokens_per_example:.0f}", "",
               "| | jobs | requests | examples | input tokens | of them cached | "
               "output tokens | cost |",
               "|---|---|---|---|---|---|---|---|"]
        out += [f"| {name} | {r.jobs} | {r.requests} | {r.examples} | {r.tokens_in:,} | "
                f"{r.tokens_cached:,} | {r.tokens_out:,} | {r.cost:.4f} |" for name, r in rows]
        cached_price = ("billed at price.cached_input_per_1k" if
                        teacher.price.cached_input_per_1k is not None else
                        "billed as input: price.cached_input_per_1k is not set")
        if self.short_from is not None:
            out += ["", f"The {self.unlabelled:,} unlabelled texts run short in cycle "
                    f"{self.short_from}: from it on, what a cycle cannot label is generated, "
                    "and priced so."]
        out += ["", "Estimates before any answer: retries, re-asks and malformed answers are "
                f"extra; cached tokens assume a provider prompt cache ({cached_price}; "
                "docs/teachers.md, \"Cost plan\")."]
        return out


def stand_in_report(split: Split, seed: int) -> dict[str, Any]:
    """An evaluation report for planning before any student: every class scored alike and
    confused once with another (a student far from perfect confuses every class with some
    other, so the planner gives confused pairs their share), its mined examples drawn from
    the seed (a real one mines the training and validation data)."""
    rng = random.Random(seed)
    others = {c: rng.choice([o for o in split.taxonomy if o != c] or [c])
              for c in split.taxonomy}
    confusions = [[c, others[c], 1] for c in split.taxonomy if others[c] != c]
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 1}
                 for c in split.taxonomy}
    items = [{"text": t, "label": lab, "pred": rng.choice(split.taxonomy), "confidence": 0.5}
             for data in (split.seed_train, split.val)
             for t, lab in zip(data.texts, data.labels, strict=True)]
    rng.shuffle(items)
    return {"accuracy": 0.5, "macro_f1": 0.5, "weighted_f1": 0.5, "per_class": per_class,
            "confusions": confusions, "mined": {"correct": items, "misclassified": items,
                                        "hard_negatives": items}}


def output_tokens_per_example(split: Split, max_chars: int) -> float:
    texts = split.seed_train.texts + split.val.texts
    labels = split.seed_train.labels + split.val.labels
    chars = sum(min(len(t), max_chars) + len(lab) for t, lab in zip(texts, labels, strict=True))
    return chars / max(1, len(texts)) / 4 + JSON_TOKENS_PER_EXAMPLE


def plan_cycle_one(spec: RunSpec, split: Split,
                   labelled: int | None = None) -> list[dict[str, Any]]:
    """Cycle 1's jobs as the controller would plan them, from the stand-in report; with
    ``labelling.share``, labelling jobs of seed texts standing in for the selection (texts
    of the same data, so of the same lengths): ``labelled`` of them (default: the cycle's
    labelling budget)."""
    pool = [{"text": t, "label": lab}
            for t, lab in zip(split.seed_train.texts, split.seed_train.labels, strict=True)]
    planner = Planner(spec.generation, list(split.taxonomy), pool,
                      seed=spec.dataset.sample_seed, labelling=spec.labelling)
    texts = split.seed_train.texts + split.val.texts
    budget = label_budget(spec.generation, spec.labelling) if labelled is None else labelled
    chosen = [{"id": f"stand-in-{i}", "text": texts[i % len(texts)]} for i in range(budget)]
    return planner.plan(1, stand_in_report(split, spec.dataset.sample_seed),
                        chosen if spec.labelling.share > 0 else None)


def plan_costs(spec: RunSpec) -> CostPlan:
    """Plan cycle 1 of ``spec`` and price its requests, then every cycle to
    ``loop.max_cycles`` (InvalidInputError: bad data)."""
    split = load_and_split(spec.dataset)
    per_example = output_tokens_per_example(split, spec.generation.max_chars)
    budget = label_budget(spec.generation, spec.labelling)
    labelled = [budget] * spec.loop.max_cycles
    kept = None
    if 0 < spec.labelling.share < 1:  # the mixed mode generates what it cannot label
        kept = check_unlabelled(spec.dataset, split)[1].kept
        labelled = [min(budget, max(0, kept - budget * c)) for c in range(spec.loop.max_cycles)]
    first = labelled[0] if labelled else budget  # loop.max_cycles may be 0: cycle 0 alone
    priced = {n: _price_cycle(spec, split, n, per_example) for n in {first, *labelled}}
    run = CyclePlan(0, 0, 0, 0, 0, 0, 0.0)
    for n in labelled:
        run += priced[n]
    short = next((c + 1 for c, n in enumerate(labelled) if n < budget), None)
    return CostPlan(priced[first], spec.loop.max_cycles,
                    per_example, run, short, kept if short is not None else None)


def _price_cycle(spec: RunSpec, split: Split, labelled: int, per_example: float) -> CyclePlan:
    """One cycle that labels ``labelled`` texts, planned and priced."""
    jobs = plan_cycle_one(spec, split, labelled)
    teacher = spec.teacher
    cache = InFlightCache(PrefixCache(teacher.sim.prefix_cache_tokens if teacher.kind == "sim"
                                      else 1024), teacher.concurrency)
    requests = tokens_in = examples = tokens_out = tokens_cached = 0
    cost = 0.0
    taxonomy = list(split.taxonomy)
    for job in jobs:
        label = job.get("kind") == "label"
        prompts = label_prompts(spec, job, taxonomy) if label else job_prompts(spec, job, taxonomy)
        for prompt in prompts:
            t_in = estimate_tokens(prompt.messages)
            t_cached = min(cache.send(prompt.messages), t_in)
            t_out = min(round(prompt.n * (LABEL_OUTPUT_TOKENS if label else per_example)),
                        teacher.max_output_tokens)
            # a text k answers label is one example
            counted = not isinstance(prompt, LabelPrompt) or prompt.answer[0] == 0
            requests, examples = requests + 1, examples + (prompt.n if counted else 0)
            tokens_in, tokens_out = tokens_in + t_in, tokens_out + t_out
            tokens_cached += t_cached
            cost += request_cost(teacher.price, t_in, t_out, t_cached)
        if spec.generation.shared_examples and spec.generation.mode != "unguided" and \
                job is jobs[0]:
            cache.settle()  # the controller sends the rest once the first job is done
    return CyclePlan(len(jobs), requests, examples, tokens_in, tokens_out, tokens_cached, cost)
