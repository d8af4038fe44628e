"""What a person watching a run sees (``orchestrator run``, ``orchestrator watch``).

In a terminal: one live display, a row per phase a cycle really has (cycle 0: train; later
cycles: score when they label, generate, attribute when rationales are on, train; at the end:
test), updated in place, each with its true totals: jobs done of planned and failed, examples
kept, requests, tokens and cost so far (from the jobs' records in storage, read once each), the
validation score when the cycle is decided. Log records and the line each decided cycle gets
are printed above the display, through the same console (the root logger's handlers are
swapped for a ``RichHandler`` on it while the display runs), so nothing is written into a bar.

Without a terminal (CI, a pipe) or with ``quiet``: one plain line per event — a phase begins,
a cycle is decided — and no display.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from distillq import paths
from distillq.jobs import failed_names
from distillq.manifest import Manifest
from orchestrator.controller import Controller, CycleProgress
from orchestrator.runs import labelling_row, load_manifest, spend_split, unrecorded
from storage.store import ShardStore
from workers.teachers.accounting import read_spend

log = logging.getLogger(__name__)

COUNTED = ("examples", "requests", "tokens_in", "tokens_out", "cost")


@dataclass
class Row:
    """One phase of one cycle on the display."""

    task: TaskID
    total: int = 1


class Progress:
    def __init__(self, store: ShardStore, run_id: str, quiet: bool = False,
                 client: redis.Redis | None = None):
        self.store, self.run_id, self.client = store, run_id, client
        self.live = not quiet and sys.stderr.isatty()
        # a log (not a terminal) gets whole lines, never wrapped at 80 columns
        self.console = Console(stderr=True, width=None if self.live else 200)
        self.bars = RichProgress(
            TextColumn("{task.description:<20}"), BarColumn(bar_width=30), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}", markup=False),
            console=self.console,
            disable=not self.live, refresh_per_second=4)
        self.rows: dict[tuple[int, str], Row] = {}
        self.stats: dict[int, dict[str, dict[str, Any]]] = {}  # cycle -> job -> its record
        self.decided = 0
        self.last_phase = ""
        self.t0 = time.monotonic()
        self._handlers: list[logging.Handler] = []
        self.view_failed = False

    def __enter__(self) -> Progress:
        self.bars.start()
        if self.live:  # log records go above the display, through its console
            root = logging.getLogger()
            self._handlers = list(root.handlers)
            handler = RichHandler(console=self.console, show_path=False, markup=False,
                                  rich_tracebacks=False, log_time_format="%H:%M:%S")
            handler.setLevel(min((h.level for h in self._handlers), default=logging.INFO))
            root.handlers = [handler]
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.bars.stop()
        if self.live:
            logging.getLogger().handlers = self._handlers

    # ---- what drives it ------------------------------------------------------------------
    def update(self, controller: Controller) -> None:
        """From the controller of ``orchestrator run`` (after each of its ticks). What goes
        wrong here is the view's problem, never the run's: logged once, the run goes on."""
        try:
            if controller.manifest is not None:
                self._print_decisions(controller.manifest, controller.redis)
                if controller.progress is not None:
                    self._show(controller.progress, controller.manifest)
        except Exception as exc:  # noqa: BLE001 - the display must not stop the controller
            self._failed(exc)

    def refresh(self) -> None:
        """For ``watch`` (and ``run``'s last look): the same view from storage (and the run's
        live counter in Redis, when there is a client), for a run driven elsewhere."""
        try:
            manifest = load_manifest(self.store, self.run_id)
            self._print_decisions(manifest, self.client)
            self._show(self._from_storage(manifest), manifest)
        except Exception as exc:  # noqa: BLE001 - as in update
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if not self.view_failed:
            log.warning("run=%s the progress view could not be updated (%s: %s); the run goes "
                        "on", self.run_id, type(exc).__name__, exc)
        self.view_failed = True

    def _from_storage(self, manifest: Manifest) -> CycleProgress:
        cycle = manifest.cycle
        if manifest.final is not None:
            if not manifest.counts.get("test"):  # no test split: nothing left to show
                return CycleProgress(manifest.final.best_cycle, trained=True, phase="done")
            return CycleProgress(manifest.final.best_cycle, phase="test")
        if self.store.read_json(self.run_id, paths.eval_report(cycle)) is not None:
            return CycleProgress(cycle, trained=True, phase="decide")
        if cycle == 0:
            return CycleProgress(0, phase="train")
        plan = self.store.read_json(self.run_id, paths.plan(cycle))
        if plan is None:
            if not _labels(manifest):
                return CycleProgress(cycle, phase="plan")
            shards = set(self.store.list_jobs(self.run_id, 0, "unlabelled"))
            scored = set(self.store.list_jobs(self.run_id, cycle, "scores")) & shards
            return CycleProgress(cycle, planned=len(shards), generated=len(scored),
                                 phase="score" if scored < shards else "select")
        p = self._settled(CycleProgress(cycle))
        p.phase = "train" if p.generated + p.failed == p.planned else "generate"
        return p

    # ---- the display ---------------------------------------------------------------------
    def _show(self, p: CycleProgress, manifest: Manifest) -> None:
        if p.phase == "done":
            return
        if p.phase == "test":
            done = self.store.read_json(self.run_id, paths.TEST_RESULT) or {}
            finished = done.get("cycle") == p.cycle
            self._row(p.cycle, "test", int(finished), 1,
                      f"test macro-F1 {done['macro_f1']:.4f}" if finished else "")
            return self._event(p, f"cycle {p.cycle}: test")
        if p.cycle > 0:
            scoring = p.phase in ("score", "select")
            if _labels(manifest) and ((p.cycle, "score") in self.rows or scoring):
                row = self.rows.get((p.cycle, "score"))
                total = p.planned if scoring else (row.total if row else p.planned)
                self._row(p.cycle, "score", p.generated if scoring else total, total,
                          "unlabelled shards scored" + ("; selecting" if p.phase == "select"
                                                        else ""))
            if scoring or p.phase == "plan":
                return self._event(p, f"cycle {p.cycle}: {p.phase}"
                                   + (f" ({p.generated}/{p.planned} unlabelled shards scored)"
                                      if scoring else ""))
            if p.phase not in ("generate", "train"):  # decided: the controller's counts
                p = self._settled(p)  # are gone; the generation is in storage
            self._row(p.cycle, "generate", p.generated + p.failed, p.planned,
                      self._generation_info(p))
            if manifest.spec.get("attribution", {}).get("enabled"):
                self._row(p.cycle, "attribute", p.attributed, p.planned, "jobs attributed")
        decided = next((d for d in manifest.decisions if d.cycle == p.cycle), None)
        trained = p.trained or decided is not None
        if p.phase in ("train", "decide") or trained:
            self._row(p.cycle, "train", int(trained), 1,
                      f"val {decided.metric}={decided.value:.4f}" if decided else
                      "evaluated" if trained else "training")
        self._event(p, f"cycle {p.cycle}: {p.phase}" + (
            f" ({p.generated}/{p.planned} jobs generated, {p.failed} failed)"
            if p.phase in ("generate", "train") and p.cycle else ""))

    def _settled(self, p: CycleProgress) -> CycleProgress:
        """A decided cycle's generation counts, from storage."""
        plan = self.store.read_json(self.run_id, paths.plan(p.cycle)) or {"jobs": []}
        jobs = set(plan["jobs"])
        done = set(self.store.list_jobs(self.run_id, p.cycle, "generated")) & jobs
        failed = failed_names(self.store.list_names(self.run_id, paths.failed_dir(p.cycle)),
                              "generate") & jobs - done
        attributed = set(self.store.list_jobs(self.run_id, p.cycle, "attributed")) & jobs
        return CycleProgress(p.cycle, planned=len(jobs), generated=len(done), failed=len(failed),
                             attributed=len(attributed), trained=p.trained, phase=p.phase)

    def _row(self, cycle: int, phase: str, done: int, total: int, info: str) -> None:
        key = (cycle, phase)
        if key not in self.rows:
            self.rows[key] = Row(self.bars.add_task(f"cycle {cycle} {phase}", total=max(total, 1),
                                                    info=info))
        row = self.rows[key]
        row.total = max(total, 1)
        self.bars.update(row.task, completed=done, total=row.total, info=info)
        if done >= row.total:
            self.bars.stop_task(row.task)  # its clock stops at the time it took

    def _generation_info(self, p: CycleProgress) -> str:
        """Failed jobs, then what the committed jobs recorded: examples kept, requests,
        tokens, cost (each job's record read once)."""
        seen = self.stats.setdefault(p.cycle, {})
        for job in self.store.list_jobs(self.run_id, p.cycle, "generated"):
            if job not in seen:
                seen[job] = self.store.read_json(self.run_id, paths.jobstats(p.cycle, job)) or {}
        total = {k: sum(float(s.get(k, 0) or 0) for s in seen.values()) for k in COUNTED}
        return (f"{p.failed} failed · {int(total['examples']):,} examples · "
                f"{int(total['requests']):,} requests · "
                f"{int(total['tokens_in'] + total['tokens_out']):,} tokens · "
                f"cost {total['cost']:.4f}")

    def _event(self, p: CycleProgress, text: str) -> None:
        """Without a display: one line when a phase begins."""
        key = f"{p.cycle}:{p.phase}"
        if not self.live and key != self.last_phase:
            self._say(text)
        self.last_phase = key

    # ---- a line per decided cycle ----------------------------------------------------------
    def _print_decisions(self, manifest: Manifest, client: redis.Redis | None = None) -> None:
        for d in manifest.decisions[self.decided:]:
            split = spend_split(self.store, self.run_id, d.cycle)
            spent, wasted = split["paid"], split["wasted"]
            tokens = int(spent["tokens_in"] + spent["tokens_out"])
            lost = int(wasted["tokens_in"] + wasted["tokens_out"])
            # the live counter holds the whole run: only the latest decision is set against
            # it, and against all the run recorded (a resumed run prints earlier ones too)
            latest = d is manifest.decisions[-1]
            flying = self._in_flight(client, spent if d.cycle == manifest.cycle else
                                     spend_split(self.store, self.run_id,
                                                 manifest.cycle)["paid"]) if latest else ""
            note = f" — stop: {d.reason}" if d.action == "stop" else ""
            row = labelling_row(self.store, self.run_id, d.cycle) if _labels(manifest) else None
            if row is not None:
                note = (f" labelled={row['labelled']}/{row['selected']} "
                        f"rejected={sum(row['rejected'].values())}{note}")
            cached = int(spent.get("tokens_cached", 0))
            self._say(f"cycle {d.cycle}: val {d.metric}={d.value:.4f} "
                      f"(best c{d.best_cycle}={d.best_value:.4f}) teacher tokens={tokens} "
                      f"(wasted {lost}{flying}){f' cached={cached}' if cached else ''} "
                      f"cost={spent['cost']:.4f}{note}")
        self.decided = manifest.cycle

    def _in_flight(self, client: redis.Redis | None, paid: dict[str, float]) -> str:
        """``, in flight N`` from the run's live counter, when there is any (else "")."""
        if client is None:
            return ""
        try:
            extra = unrecorded(read_spend(client, self.run_id), paid)
        except redis.RedisError:
            return ""
        return f", in flight {int(extra['tokens'])}" if extra["tokens"] else ""

    def _say(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        self.console.print(f"[{elapsed:7.1f}s] {text}", highlight=False, markup=False)


def _labels(manifest: Manifest) -> bool:
    """Whether the run labels unlabelled texts (``labelling.share`` above 0)."""
    return float(manifest.spec.get("labelling", {}).get("share", 0) or 0) > 0
