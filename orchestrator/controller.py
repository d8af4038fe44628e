"""The PGKD cycle controller: level-triggered and idempotent.

Each ``tick`` reads the manifest and the committed shards, compares them with what the current
cycle needs, and sends whatever is missing, with deterministic job ids. Nothing it knows lives
only in memory or only in Redis: killing and restarting it at any point re-derives the same
state from storage. Redis holds just the in-flight table (job → last send time, number of
sends), so a job whose deadline passed is sent again; if Redis is lost, everything not yet
committed is simply sent again, and the idempotent workers make that harmless.

One cycle:
  c = 0: [prepare teacher → attribute seed] → train(0)
  c ≥ 1: plan from eval(c-1) → generate jobs → [attribute each shard] → train(c)
  after train(c): decide → next cycle, or stop (max cycles, patience, budget) → test(best)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from distillq import paths
from distillq.errors import BudgetExceededError
from distillq.keys import INFLIGHT, RESENDS, STARTED_KEY
from distillq.plans import write_plan
from distillq.queues import ATTRIBUTE, GENERATE, PREPARE_TEACHER, ROUTES, TEST, TRAIN
from distillq.runstate import TERMINAL, cancel_pending
from distillq.spec import RunSpec, parse_spec
from orchestrator.planning import Planner
from orchestrator.runs import cycle_stats, load_manifest, spend
from storage.store import ShardStore
from workers.context import SINGLE_JOBS, as_text
from workers.teachers.accounting import restore_spend

log = logging.getLogger("distillq.controller")

Send = Callable[[str, list[Any], str], None]  # (task name, args, task id)

# KEYS: in-flight table, started table, re-send count; ARGV: started-field prefix, job keys.
# Removes the jobs' entries and adds the re-sends of those it removed (idempotent).
FORGET_LUA = """
local total = 0
for i = 2, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local ok, entry = pcall(cjson.decode, raw)
    if ok and type(entry) == 'table' and tonumber(entry['sends']) then
      total = total + math.max(0, tonumber(entry['sends']) - 1)
    end
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
  redis.call('HDEL', KEYS[2], ARGV[1] .. ARGV[i])
end
if total > 0 then
  redis.call('INCRBY', KEYS[3], total)
end
return total
"""
SEND_BATCH = 500  # sends recorded in the in-flight table, then made, this many at a time


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
    """Drives one run. ``send`` enqueues a Celery task (injected so tests and benches can count)."""

    store: ShardStore
    redis: redis.Redis
    run_id: str
    send: Send
    clock: Callable[[], float] = time.time
    manifest: dict[str, Any] = field(default_factory=dict)
    spec: RunSpec | None = None
    progress: CycleProgress | None = None
    _inflight: dict[str, dict[str, float]] = field(default_factory=dict)
    _plans: dict[int, list[str]] = field(default_factory=dict)
    _updates: dict[str, str] = field(default_factory=dict)
    # failed generate job → its error if the budget refused it, else None
    _refusals: dict[tuple[int, str], str | None] = field(default_factory=dict)
    _started: set[str] | None = None  # job keys a worker has begun (read when first needed)
    _cycle: int = 0  # the cycle this tick drives (the final phase: one past the last)
    _forget: Any = None  # FORGET_LUA, registered when first needed
    _busy: dict[str, bool] = field(default_factory=dict)  # queue → holds messages (this tick)
    _outbox: list[tuple[str, list[Any], str]] = field(default_factory=list)  # sends to make

    # ---- entry point -------------------------------------------------------------------
    def tick(self) -> str:
        """One pass: returns the run's status after it."""
        self.manifest = load_manifest(self.store, self.run_id)
        if self.manifest["status"] in TERMINAL:
            return str(self.manifest["status"])
        self.spec = parse_spec(self.manifest["spec"], f"manifest of {self.run_id}")
        if cancel_pending(self.store, self.run_id, self.manifest):
            return self._finish("cancelled", "cancelled by the user")
        self._load_inflight()
        try:
            if "final" in self.manifest:
                return self._final_phase()
            self._drive_cycle(len(self.manifest["decisions"]))
        finally:
            self._flush_inflight()
        return str(self.manifest["status"])

    # ---- a cycle -----------------------------------------------------------------------
    def _drive_cycle(self, cycle: int) -> None:
        self.progress = CycleProgress(cycle)
        self._forget_before(cycle)
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
            if self._gave_up(cycle, "train"):
                return
            self._ensure(TRAIN, [self.run_id, cycle, self.store.uri],
                         f"c{cycle:02d}/train", self._spec.loop.train_deadline_s)

    @property
    def _spec(self) -> RunSpec:
        assert self.spec is not None
        return self.spec

    def _plan(self, cycle: int) -> list[str] | None:
        """Job ids of the cycle's generation (``["seed"]`` for cycle 0)."""
        if cycle == 0:
            return ["seed"]
        if cycle in self._plans:
            return self._plans[cycle]
        plan = self.store.read_json(self.run_id, paths.plan(cycle))
        if plan is None:
            previous = self.store.read_json(self.run_id, paths.eval_report(cycle - 1)) or {}
            planner = Planner(self._spec.generation, list(self.manifest["taxonomy"]),
                              self._fewshot_pool(), seed=self._spec.dataset.sample_seed)
            plan = write_plan(self.store, self.run_id, cycle, planner.plan(cycle, previous))
            log.info("run=%s cycle=%d planned %d generation jobs", self.run_id, cycle,
                     len(plan["jobs"]))
            self._restore_spend(cycle)
        self._plans[cycle] = list(plan["jobs"])
        return self._plans[cycle]

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
        for job in jobs:
            if job not in committed and job not in failed and cycle > 0:
                self._ensure(GENERATE, [self.run_id, cycle, job, self.store.uri],
                             f"c{cycle:02d}/gen/{job}", self._spec.loop.generate_deadline_s)
        # Jobs the run's budget refused are not failures: the loop stops after this cycle.
        refused = self._budget_refused(cycle, failed)
        broken = len(failed) - len(refused)
        if broken > self._spec.generation.tolerated_failure_fraction * max(1, len(jobs)):
            self._finish("failed", f"cycle {cycle}: {broken} of {len(jobs)} generation "
                         "jobs failed permanently, over generation.tolerated_failure_fraction")
            return False
        settled = len(committed & set(jobs)) + len(failed) == len(jobs)
        if refused and settled and not committed & set(jobs):
            self._stop_at_best(cycle, f"budget spent before cycle {cycle} generated anything "
                               f"({next(iter(refused.values()))})")
            return False
        attributed = self._attribution_ready(cycle, committed & set(jobs))
        return settled and attributed

    def _budget_refused(self, cycle: int, failed: set[str]) -> dict[str, str]:
        """The failed generate jobs of ``cycle`` that the run's budget refused: job → error.
        The failure record's ``error_type`` says so; each record is read once per controller."""
        out = {}
        for job in sorted(failed):
            if (cycle, job) not in self._refusals:
                record = self.store.read_json(self.run_id,
                                              paths.failed_record(cycle, "generate", job)) or {}
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
        best = int(self.manifest["decisions"][-1]["best_cycle"])
        self.manifest["final"] = {"best_cycle": best, "reason": reason}
        self.store.write_json(self.run_id, paths.MANIFEST, self.manifest)
        log.info("run=%s cycle=%d stopped: %s; best cycle %d", self.run_id, cycle, reason, best)

    def _restore_spend(self, cycle: int) -> None:
        """Before a cycle's jobs go out, make the Redis spend counter the workers check the
        budget against at least what storage recorded (Redis may have lost it)."""
        budget = self._spec.budget
        if budget.max_tokens is None and budget.max_cost is None:
            return
        added = restore_spend(self.redis, self.run_id, spend(self.store, self.run_id, cycle - 1))
        if added:
            log.warning("run=%s the spend counter was behind storage; restored %s",
                        self.run_id, added)

    def _attribution_ready(self, cycle: int, generated: set[str]) -> bool:
        assert self.progress is not None
        if not self._spec.attribution.enabled:
            return True
        if not self.store.has_dir(self.run_id, "teacher"):
            if self._spec.attribution.kind == "classifier" and self._spec.attribution.finetune:
                if self._gave_up(0, "prepare_teacher"):
                    return False
                self._ensure(PREPARE_TEACHER, [self.run_id, self.store.uri],
                             "teacher", self._spec.loop.attribute_deadline_s)
                return False
        done = set(self.store.list_jobs(self.run_id, cycle, "attributed"))
        self.progress.attributed = len(done & generated)
        missing = sorted(generated - done - self._failed(cycle, "attribute"))
        for job in missing:
            self._ensure(ATTRIBUTE, [self.run_id, cycle, job, self.store.uri],
                         f"c{cycle:02d}/attr/{job}", self._spec.loop.attribute_deadline_s)
        return not missing

    def _failed(self, cycle: int, kind: str) -> set[str]:
        """Jobs of this kind recorded as failed permanently (one folder listing)."""
        prefix = f"{kind}-"
        return {n[len(prefix):-len(".json")] for n in
                self.store.list_names(self.run_id, paths.failed_dir(cycle))
                if n.startswith(prefix) and n.endswith(".json")}

    # ---- sending -------------------------------------------------------------------------
    def _load_inflight(self) -> None:
        """One HGETALL per tick: the in-flight table of the whole run."""
        raw = self.redis.hgetall(INFLIGHT.format(run_id=self.run_id))
        self._inflight = {as_text(k): json.loads(v) for k, v in raw.items()}
        self._updates: dict[str, str] = {}
        self._started = None
        self._busy = {}
        self._outbox = []

    def _forget_before(self, cycle: int) -> None:
        """Drop the in-flight and started entries of cycles before ``cycle``: they are decided
        and their jobs are never sent again, so the tables read each tick do not grow with
        the run. Their re-sends are added to ``RESENDS`` by the same script, which counts only
        the entries it removes: run twice (a retried EXEC, two controllers), it adds nothing
        the second time (the ``distillq_job_resends`` metric counts the whole run)."""
        self._cycle = cycle
        old = [key for key in self._inflight
               if (c := key_cycle(key)) is not None and c < cycle]
        if not old:
            return
        if self._forget is None:
            self._forget = self.redis.register_script(FORGET_LUA)
        keys = [INFLIGHT.format(run_id=self.run_id), STARTED_KEY.format(run_id=self.run_id),
                RESENDS.format(run_id=self.run_id)]
        for start in range(0, len(old), SEND_BATCH):
            self._forget(keys=keys, args=[f"{self.run_id}:", *old[start : start + SEND_BATCH]])
        for key in old:
            del self._inflight[key]
        log.debug("run=%s dropped %d in-flight entries of cycles before %d",
                 self.run_id, len(old), cycle)

    def _has_started(self, key: str) -> bool:
        """Whether a worker has begun a send of job ``key`` (one HKEYS per tick, and only in
        a tick where some job is past its deadline)."""
        if self._started is None:
            prefix = f"{self.run_id}:"
            self._started = {as_text(k)[len(prefix):] for k in
                             self.redis.hkeys(STARTED_KEY.format(run_id=self.run_id))}
            # a late duplicate of a decided cycle's job, marked after its entries were dropped
            stray = [k for k in self._started if (c := key_cycle(k)) is not None
                     and c < self._cycle]
            if stray:
                self.redis.hdel(STARTED_KEY.format(run_id=self.run_id),
                                *(prefix + k for k in stray))
                self._started.difference_update(stray)
        return key in self._started

    def _queue_busy(self, task: str) -> bool:
        """Whether the broker queue of ``task`` holds messages (one LLEN per queue and tick;
        the Redis transport keeps a queue as a list of its name)."""
        queue = ROUTES.get(task, {}).get("queue", "generate")
        if queue not in self._busy:
            self._busy[queue] = bool(self.redis.llen(queue))
        return self._busy[queue]

    def _flush_inflight(self) -> None:
        """Record the sends of this tick in the in-flight table, then make them: a controller
        killed while it dispatches a big cycle has recorded every send it made (a recorded
        send it did not make waits for its deadline; an unrecorded one would go out twice)."""
        if self._updates:
            updates: dict[Any, Any] = self._updates
            self.redis.hset(INFLIGHT.format(run_id=self.run_id), mapping=updates)
            self._updates = {}
        outbox, self._outbox = self._outbox, []
        if self.manifest.get("status") in TERMINAL:
            return  # the run ended in this tick (failed): its jobs are not wanted any more
        for task, args, task_id in outbox:
            self.send(task, args, task_id)

    def _ensure(self, task: str, args: list[Any], key: str, deadline_s: float) -> None:
        """Send the job unless a send of it is in flight and not yet past its deadline.

        The deadline runs from the send, but a job no worker has started while its queue
        holds messages is most likely waiting there (a big cycle, a slow teacher): it is
        re-sent only after ``loop.queue_deadline_s``, and such re-sends do not count towards
        ``max_sends``. Not started with its queue empty, it was lost (say, reserved by a worker
        killed before it began): the job's own deadline applies."""
        entry = self._inflight.get(key, {"sent_at": 0.0, "sends": 0})
        now = self.clock()
        queued = (bool(entry["sends"]) and now - entry["sent_at"] >= deadline_s
                  and not self._has_started(key) and self._queue_busy(task))
        if entry["sends"]:
            limit = max(deadline_s, self._spec.loop.queue_deadline_s) if queued else deadline_s
            if now - entry["sent_at"] < limit:
                return
        requeued = int(entry.get("requeued", 0))
        if not queued and entry["sends"] - requeued >= self._spec.loop.max_sends:
            self._give_up(task, args, key, int(entry["sends"]))
            return
        entry = {"sent_at": now, "sends": entry["sends"] + 1, "requeued": requeued + queued}
        self._inflight[key] = entry
        self._updates[key] = json.dumps(entry)
        self._outbox.append((task, args, f"{self.run_id}:{key}:{entry['sends']}"))
        if len(self._outbox) >= SEND_BATCH:
            self._flush_inflight()
        if entry["sends"] > 1:
            log.warning("run=%s re-sent %s (send %d)", self.run_id, key, entry["sends"])

    def _gave_up(self, cycle: int, kind: str) -> bool:
        """A worker recorded this run-level job (train, test, prepare_teacher) as failed for
        good (a permanent error, or its retries used up): fail the run now, not after the
        job's deadline. ``orchestrator resume`` gives it another chance."""
        record = self.store.read_json(self.run_id,
                                      paths.failed_record(cycle, kind, SINGLE_JOBS[kind]))
        if record is None:
            return False
        self._finish("failed", f"{kind} of cycle {cycle} failed: {record.get('error', '?')}")
        return True

    def _give_up(self, task: str, args: list[Any], key: str, sends: int) -> None:
        kind = task.split(".")[-1]
        cycle = args[1] if len(args) > 2 else 0
        job = args[2] if len(args) > 3 else SINGLE_JOBS.get(kind, kind)
        self.store.write_json(self.run_id, paths.failed_record(cycle, kind, job),
                              {"kind": kind, "job_id": job, "error_type": "NoResult",
                               "error": f"no result after {sends} sends"})
        if kind in ("train", "test", "prepare_teacher"):
            self._finish("failed", f"{kind} of cycle {cycle} got no result after {sends} sends")

    # ---- deciding ------------------------------------------------------------------------
    def _decide(self, cycle: int, report: dict[str, Any]) -> None:
        loop = self._spec.loop
        decisions = self.manifest["decisions"]
        value = float(report.get(loop.metric, 0.0))
        # The best so far is the last decision's: a cycle that gained less than min_delta
        # does not become the baseline the next cycles are measured against.
        last = decisions[-1] if decisions else None
        improved = last is None or value > float(last["best_value"]) + loop.min_delta
        best_cycle = cycle if improved else int(last["best_cycle"])  # type: ignore[index]
        best_value = value if improved else float(last["best_value"])  # type: ignore[index]
        since = 0 if improved else cycle - best_cycle
        reason = self._stop_reason(cycle, since)
        decision = {"cycle": cycle, "value": value, "metric": loop.metric,
                    "best_cycle": best_cycle, "best_value": best_value,
                    "action": "stop" if reason else "continue", "reason": reason,
                    "at": self.clock()}
        decisions.append(decision)
        if reason:
            self.manifest["final"] = {"best_cycle": best_cycle, "reason": reason}
        self.store.write_json(self.run_id, paths.MANIFEST, self.manifest)
        log.info("run=%s cycle=%d %s=%.4f best=c%d → %s%s", self.run_id, cycle, loop.metric,
                 value, best_cycle, decision["action"], f" ({reason})" if reason else "")

    def _stop_reason(self, cycle: int, cycles_without_gain: int) -> str:
        loop, budget = self._spec.loop, self._spec.budget
        if cycle >= loop.max_cycles:
            return f"max_cycles={loop.max_cycles} reached"
        if cycles_without_gain >= loop.patience:
            return f"no {loop.metric} gain for {loop.patience} cycles (patience)"
        refused = self._budget_refused(cycle, self._failed(cycle, "generate"))
        if refused:
            return f"budget spent in cycle {cycle} ({next(iter(refused.values()))})"
        if budget.max_tokens is None and budget.max_cost is None:
            return ""
        spent = spend(self.store, self.run_id, cycle)
        tokens = spent["tokens_in"] + spent["tokens_out"]
        if budget.max_tokens is not None and tokens >= budget.max_tokens:
            return f"token budget spent ({tokens:.0f} of {budget.max_tokens})"
        if budget.max_cost is not None and spent["cost"] >= budget.max_cost:
            return f"cost budget spent ({spent['cost']:.4f} of {budget.max_cost})"
        return ""

    # ---- the end -------------------------------------------------------------------------
    def _final_phase(self) -> str:
        # every cycle is over (one the budget stopped before training included)
        self._forget_before(len(self.manifest["decisions"]) + 1)
        best = int(self.manifest["final"]["best_cycle"])
        has_test = bool(self.manifest["counts"].get("test"))
        result = self.store.read_json(self.run_id, "test.json") if has_test else {}
        if result is None or (has_test and int(result.get("cycle", -1)) != best):
            self.progress = CycleProgress(best, phase="test")
            if self._gave_up(best, "test"):
                return str(self.manifest["status"])
            self._ensure(TEST, [self.run_id, best, self.store.uri], "test",
                         self._spec.loop.train_deadline_s)
            return str(self.manifest["status"])
        return self._finish("done", str(self.manifest["final"]["reason"]))

    def _finish(self, status: str, reason: str) -> str:
        self.manifest["status"] = status
        self.manifest["stop_reason"] = reason
        self.manifest["finished_at"] = self.clock()
        self.store.write_json(self.run_id, paths.MANIFEST, self.manifest)
        log.info("run=%s %s: %s", self.run_id, status, reason)
        return status


def key_cycle(key: str) -> int | None:
    """The cycle of a job key (``c<cycle>/gen/<job>``, ``c<cycle>/train``…); None for the
    run-level ones (``teacher``, ``test``)."""
    head, sep, _ = key.partition("/")
    if sep and head[:1] == "c" and head[1:].isdigit():
        return int(head[1:])
    return None


def summarize(store: ShardStore, run_id: str) -> dict[str, Any]:
    """What ``status`` and ``watch`` show: per-cycle metric, spend, current phase."""
    manifest = load_manifest(store, run_id)
    cycles = []
    for d in manifest["decisions"]:
        stats = cycle_stats(store, run_id, d["cycle"]) if d["cycle"] else []
        cycles.append({"cycle": d["cycle"], "value": d["value"], "action": d["action"],
                       "examples": sum(int(s.get("examples", 0) or 0) for s in stats),
                       "cost": sum(float(s.get("cost", 0) or 0) for s in stats)})
    return {"run_id": run_id, "status": manifest["status"], "metric": manifest["spec"]["loop"]
            ["metric"], "cycles": cycles, "final": manifest.get("final"),
            "stop_reason": manifest.get("stop_reason"), "teacher": manifest["spec"]["teacher"]
            ["kind"]}
