"""The PGKD cycle controller: level-triggered and idempotent.

Each ``tick`` reads the manifest and the committed shards, compares them with what the current
cycle needs, and sends whatever is missing, with deterministic job ids. Nothing it knows lives
only in memory or only in Redis: killing and restarting it at any point re-derives the same
state from storage. Redis holds just the in-flight table, which the dispatcher owns
(``orchestrator.dispatch``); the stop policy is a pure function (``orchestrator.policy``);
every change to the manifest goes through its model (``distillq.manifest``).

One cycle:
  c = 0: [prepare teacher → attribute seed] → train(0)
  c ≥ 1: plan from eval(c-1) → generate jobs → [attribute each shard] → train(c)
  after train(c): decide → next cycle, or stop (max cycles, patience, budget) → test(best)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from distillq import paths
from distillq.errors import BudgetExceededError
from distillq.jobs import JobId, failed_names
from distillq.keys import SPEND_CHECKED, SPEND_KEY
from distillq.manifest import Manifest, Status, save_manifest
from distillq.plans import write_plan
from distillq.runstate import cancel_pending
from distillq.spec import RunSpec
from orchestrator.dispatch import Dispatcher, Send
from orchestrator.planning import Planner
from orchestrator.policy import decide, has_caps
from orchestrator.runs import load_manifest, spend
from storage.store import ShardStore
from workers.teachers.accounting import restore_spend

log = logging.getLogger("distillq.controller")


@dataclass
class CycleProgress:
    cycle: int
    planned: int = 0
    generated: int = 0
    failed: int = 0
    attributed: int = 0
    trained: bool = False
    phase: str = "plan"


@dataclass
class Controller:
    """Drives one run. ``send`` enqueues a Celery task (injected so tests and benches can
    count); it and ``clock`` are handed to the dispatcher when the controller is made."""

    store: ShardStore
    redis: redis.Redis
    run_id: str
    send: Send
    clock: Callable[[], float] = time.time
    manifest: Manifest | None = None
    spec: RunSpec | None = None
    progress: CycleProgress | None = None
    dispatch: Dispatcher = field(init=False)
    _plans: dict[int, list[str]] = field(default_factory=dict)
    # failed generate job → its error if the budget refused it, else None
    _refusals: dict[tuple[int, str], str | None] = field(default_factory=dict)
    _warm_since: dict[int, float] = field(default_factory=dict)  # cycle -> warm-up start
    _labelling: dict[int, set[str]] = field(default_factory=dict)  # cycle -> its label jobs
    _unlabelled: list[str] = field(default_factory=list)  # the run's unlabelled shards

    def __post_init__(self) -> None:
        self.dispatch = Dispatcher(self.redis, self.run_id, self.send, self.clock)

    # ---- entry point -------------------------------------------------------------------
    def tick(self) -> str:
        """One pass: returns the run's status after it."""
        manifest = self.manifest = load_manifest(self.store, self.run_id)
        if manifest.ended:
            return manifest.status
        self.spec = manifest.run_spec()
        if cancel_pending(self.store, manifest):
            return self._finish("cancelled", "cancelled by the user")
        self.dispatch.load(self.spec.loop)
        try:
            if manifest.final is not None:
                return self._final_phase()
            self._drive_cycle(manifest.cycle)
        finally:  # a run that ended in this tick (failed) does not want its jobs any more
            self.dispatch.flush(send=not manifest.ended)
        return manifest.status

    @property
    def _spec(self) -> RunSpec:
        assert self.spec is not None
        return self.spec

    @property
    def _manifest(self) -> Manifest:
        assert self.manifest is not None
        return self.manifest

    # ---- a cycle -----------------------------------------------------------------------
    def _drive_cycle(self, cycle: int) -> None:
        self.progress = CycleProgress(cycle)
        self.dispatch.forget_before(cycle)
        report = self.store.read_json(self.run_id, paths.eval_report(cycle))
        if report is not None:
            self.progress.trained, self.progress.phase = True, "decide"
            self._decide(cycle, report)
            return
        jobs = self._plan(cycle)
        if jobs is None:
            return
        if self._data_ready(cycle, jobs):
            self.progress.phase = "train"
            if self._gave_up(JobId.single("train", cycle)):
                return
            self._ensure(JobId.single("train", cycle), self._spec.loop.train_deadline_s)

    def _plan(self, cycle: int) -> list[str] | None:
        """Job names of the cycle's generation (``["seed"]`` for cycle 0)."""
        if cycle == 0:
            return ["seed"]
        if cycle in self._plans:
            if has_caps(self._spec.budget) and not self.redis.hexists(
                    SPEND_KEY.format(run_id=self.run_id), SPEND_CHECKED):
                self._restore_spend(cycle)  # Redis lost its data mid-cycle (one HEXISTS)
            return self._plans[cycle]
        plan = self.store.read_json(self.run_id, paths.plan(cycle))
        if plan is None:
            selection = self._selection(cycle) if self._spec.labelling.share > 0 else []
            if selection is None:  # the unlabelled texts are still being scored
                return None
            previous = self.store.read_json(self.run_id, paths.eval_report(cycle - 1)) or {}
            planner = Planner(self._spec.generation, list(self._manifest.taxonomy),
                              self._fewshot_pool(), seed=self._spec.dataset.sample_seed,
                              labelling=self._spec.labelling)
            jobs = planner.plan(cycle, previous, selection)
            if not jobs:  # labelling only, and nothing left to label
                self._stop_at_best(cycle, f"cycle {cycle} has nothing to ask the teacher: "
                                   "every text of dataset.unlabelled is labelled")
                return None
            plan = write_plan(self.store, self.run_id, cycle, jobs)
            labelling = sum(1 for j in jobs if j.get("kind") == "label")
            log.info("run=%s cycle=%d planned %d generation jobs%s", self.run_id, cycle,
                     len(jobs) - labelling, f" and {labelling} labelling jobs" if labelling
                     else "")
        # the first time this controller meets the cycle: planned now, or mid-cycle after a
        # restart or `resume` on a Redis that lost the counter
        self._restore_spend(cycle)
        self._plans[cycle] = list(plan["jobs"])
        self._labelling[cycle] = set(plan.get("labelling", []))
        return self._plans[cycle]

    def _selection(self, cycle: int) -> list[dict[str, Any]] | None:
        """The texts the cycle labels (``selection.json``), or None while it waits for them:
        a score job per unlabelled shard the cycle has not scored, then the select job
        (``workers.labelling.cycle``). Scores already committed are kept, so a restarted
        controller sends only what is missing."""
        assert self.progress is not None
        chosen = self.store.read_json(self.run_id, paths.selection(cycle))
        if chosen is not None:
            return list(chosen["texts"])
        if not self._unlabelled:  # written with the run, never changed: listed once
            self._unlabelled = self.store.list_jobs(self.run_id, 0, "unlabelled")
        shards = self._unlabelled
        scored = set(self.store.list_jobs(self.run_id, cycle, "scores"))
        self.progress.phase, self.progress.planned = "score", len(shards)
        self.progress.generated = len(scored & set(shards))
        deadline = self._spec.loop.train_deadline_s
        for shard in sorted(set(shards) - scored):
            job = JobId("score", cycle, shard)
            if self._gave_up(job):
                return None
            self._ensure(job, deadline)
        if scored >= set(shards):
            self.progress.phase = "select"
            if not self._gave_up(JobId.single("select", cycle)):
                self._ensure(JobId.single("select", cycle), deadline)
        return None

    def _fewshot_pool(self) -> list[dict[str, Any]]:
        seed = self.store.read_shard(self.run_id, 0, "generated", "seed")
        return [{"text": t, "label": lab} for t, lab in
                zip(seed.column("text").to_pylist(), seed.column("label").to_pylist(),
                    strict=True)]

    def _data_ready(self, cycle: int, jobs: list[str]) -> bool:
        """Send missing generate / attribute jobs; True once all of them are settled."""
        assert self.progress is not None
        committed = set(self.store.list_jobs(self.run_id, cycle, "generated"))
        failed = self._failed(cycle, "generate") - committed
        self.progress.planned, self.progress.generated = len(jobs), len(committed & set(jobs))
        self.progress.failed, self.progress.phase = len(failed), "generate"
        if cycle > 0:  # the hot loop of a big cycle: one JobId and one ensure per open job
            ensure, uri = self.dispatch.ensure, self.store.uri
            deadline = self._spec.loop.generate_deadline_s
            warm_up = not failed and committed.isdisjoint(jobs) and self._warming(cycle)
            labels = self._labelling.get(cycle, set())
            # the warm-up holds back generation jobs only: labelling prompts share no examples
            for name in [n for i, n in enumerate(jobs) if i == 0 or n in labels] if warm_up \
                    else jobs:
                if name not in committed and name not in failed:
                    job = JobId.generate(cycle, name)
                    if sends := ensure(job, uri, deadline):
                        self._give_up(job, sends)
        # Jobs the run's budget refused are not failures: the loop stops after this cycle.
        refused = self._budget_refused(cycle, failed)
        broken = len(failed) - len(refused)
        tolerated = self._spec.generation.tolerated_failure_fraction
        if broken > tolerated * max(1, len(jobs)):
            done = len(committed & set(jobs))
            open_ = len(jobs) - done - len(failed)
            self._finish("failed", f"cycle {cycle}: {broken} of {len(jobs)} generation jobs "
                         f"failed permanently, over generation.tolerated_failure_fraction="
                         f"{tolerated:g} ({done} committed, {open_} not finished when the run "
                         "stopped)")
            return False
        settled = len(committed & set(jobs)) + len(failed) == len(jobs)
        if refused and settled and not committed & set(jobs):
            self._stop_at_best(cycle, f"budget spent before cycle {cycle} generated anything "
                               f"({next(iter(refused.values()))})")
            return False
        attributed = self._attribution_ready(cycle, committed & set(jobs))
        return settled and attributed

    def _warming(self, cycle: int) -> bool:
        """Cache warm-up: with shared examples, a cycle's first generate job goes alone and
        the rest once it is settled, so they find its prompt's shared part in the provider's
        prompt cache (sent together, none would: a prompt is cached once answered). Not for
        longer than ``loop.generate_deadline_s`` after this controller first held them back:
        a slow or lost first job delays the cycle by that much at most."""
        gen = self._spec.generation
        if not gen.shared_examples or gen.mode == "unguided" or self._spec.labelling.share >= 1:
            return False
        since = self._warm_since.setdefault(cycle, self.clock())
        return self.clock() - since <= self._spec.loop.generate_deadline_s

    def _budget_refused(self, cycle: int, failed: set[str]) -> dict[str, str]:
        """The failed generate jobs of ``cycle`` that the run's budget refused: job → error.
        The failure record's ``error_type`` says so; each record is read once per controller."""
        out = {}
        for job in sorted(failed):
            if (cycle, job) not in self._refusals:
                record = self.store.read_json(
                    self.run_id, JobId.generate(cycle, job).failed_record) or {}
                # records written before error_type existed: the error text's class name
                error_type = (record.get("error_type")
                              or str(record.get("error", "")).partition(":")[0])
                budget = error_type == BudgetExceededError.__name__
                self._refusals[(cycle, job)] = str(record.get("error", "")) if budget else None
            refusal = self._refusals[(cycle, job)]
            if refusal is not None:
                out[job] = refusal
        return out

    def _stop_at_best(self, cycle: int, reason: str) -> None:
        """End the loop in ``cycle`` without training it: the best cycle so far is final."""
        best = self._manifest.decisions[-1].best_cycle
        self._manifest.stop_at(best, reason)
        save_manifest(self.store, self._manifest)
        log.info("run=%s cycle=%d stopped: %s; best cycle %d", self.run_id, cycle, reason, best)

    def _restore_spend(self, cycle: int) -> None:
        """Before this controller sends a cycle's jobs, make the Redis spend counter the
        workers check the budget against at least what storage recorded up to and in the
        cycle (Redis may have lost it); what was in flight when it was lost is not recorded."""
        if not has_caps(self._spec.budget):
            return
        added = restore_spend(self.redis, self.run_id, spend(self.store, self.run_id, cycle))
        if added:
            log.warning("run=%s the spend counter was behind storage; restored %s",
                        self.run_id, added)

    def _attribution_ready(self, cycle: int, generated: set[str]) -> bool:
        assert self.progress is not None
        attribution = self._spec.attribution
        if not attribution.enabled:
            return True
        if not self.store.has_dir(self.run_id, paths.TEACHER_DIR):
            if attribution.kind == "classifier" and attribution.finetune:
                teacher = JobId.single("prepare_teacher")
                if not self._gave_up(teacher):
                    self._ensure(teacher, self._spec.loop.attribute_deadline_s)
                return False
        done = set(self.store.list_jobs(self.run_id, cycle, "attributed"))
        self.progress.attributed = len(done & generated)
        missing = sorted(generated - done - self._failed(cycle, "attribute"))
        for job in missing:
            self._ensure(JobId.attribute(cycle, job), self._spec.loop.attribute_deadline_s)
        return not missing

    def _failed(self, cycle: int, kind: str) -> set[str]:
        """Jobs of this kind recorded as failed permanently (one folder listing)."""
        return failed_names(self.store.list_names(self.run_id, paths.failed_dir(cycle)), kind)

    # ---- sending -------------------------------------------------------------------------
    def _ensure(self, job: JobId, deadline_s: float) -> None:
        sends = self.dispatch.ensure(job, self.store.uri, deadline_s)
        if sends:
            self._give_up(job, sends)

    def _gave_up(self, job: JobId) -> bool:
        """A worker recorded a job the run cannot go on without (train, test,
        prepare_teacher, score, select) as failed for good (a permanent error, or its retries
        used up): fail the run now, not after the job's deadline. ``orchestrator resume``
        gives it another chance."""
        record = self.store.read_json(self.run_id, job.failed_record)
        if record is None:
            return False
        self._finish("failed", f"{job.kind} of cycle {job.cycle} failed: "
                     f"{record.get('error', '?')}")
        return True

    def _give_up(self, job: JobId, sends: int) -> None:
        """No result after ``loop.max_sends`` sends: the job failed for good."""
        self.store.write_json(self.run_id, job.failed_record,
                              {"kind": job.kind, "job_id": job.name, "error_type": "NoResult",
                               "error": f"no result after {sends} sends"})
        if job.kind in ("train", "test", "prepare_teacher", "score", "select"):
            self._finish("failed", f"{job.kind} of cycle {job.cycle} got no result after "
                         f"{sends} sends")

    # ---- deciding ------------------------------------------------------------------------
    def _decide(self, cycle: int, report: dict[str, Any]) -> None:
        loop, budget = self._spec.loop, self._spec.budget
        decisions = self._manifest.decisions

        def refusal() -> str:
            refused = self._budget_refused(cycle, self._failed(cycle, "generate"))
            return next(iter(refused.values()), "")

        decision = decide(loop, budget, decisions[-1] if decisions else None, cycle,
                          float(report.get(loop.metric, 0.0)), self.clock(), refusal=refusal,
                          spent=lambda: spend(self.store, self.run_id, cycle))
        self._manifest.decide(decision)
        save_manifest(self.store, self._manifest)
        log.info("run=%s cycle=%d %s=%.4f best=c%d → %s%s", self.run_id, cycle, loop.metric,
                 decision.value, decision.best_cycle, decision.action,
                 f" ({decision.reason})" if decision.reason else "")

    # ---- the end -------------------------------------------------------------------------
    def _final_phase(self) -> str:
        # every cycle is over (one the budget stopped before training included)
        manifest = self._manifest
        assert manifest.final is not None
        self.dispatch.forget_before(manifest.cycle + 1)
        best = manifest.final.best_cycle
        has_test = bool(manifest.counts.get("test"))
        result = self.store.read_json(self.run_id, paths.TEST_RESULT) if has_test else {}
        if result is None or (has_test and int(result.get("cycle", -1)) != best):
            self.progress = CycleProgress(best, phase="test")
            test = JobId.single("test", best)
            if not self._gave_up(test):
                self._ensure(test, self._spec.loop.train_deadline_s)
            return manifest.status
        return self._finish("done", manifest.final.reason)

    def _finish(self, status: Status, reason: str) -> str:
        self._manifest.finish(status, reason, self.clock())
        save_manifest(self.store, self._manifest)
        log.info("run=%s %s: %s", self.run_id, status, reason)
        return status
