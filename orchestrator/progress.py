"""Live progress in the terminal: one bar per stage of the current cycle, one line per cycle.

Falls back to plain log lines when the output is not a terminal (CI, pipes) or ``quiet`` is set.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from distillq import paths
from distillq.manifest import Manifest
from orchestrator.controller import Controller, CycleProgress
from orchestrator.runs import labelling_row, load_manifest, spend_split, unrecorded
from storage.store import ShardStore
from workers.teachers.accounting import read_spend


class Progress:
    def __init__(self, store: ShardStore, run_id: str, quiet: bool = False):
        self.store, self.run_id = store, run_id
        self.live = not quiet and sys.stderr.isatty()
        # a log (not a terminal) gets whole lines, never wrapped at 80 columns
        self.console = Console(stderr=True, width=None if self.live else 200)
        self.bars = RichProgress(
            TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console, disable=not self.live,
        )
        self.tasks: dict[str, Any] = {}
        self.decided = 0
        self.last_phase = ""
        self.t0 = time.monotonic()

    def __enter__(self) -> Progress:
        self.bars.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.bars.stop()

    def update(self, controller: Controller) -> None:
        if controller.manifest is not None:
            self._print_decisions(controller.manifest, controller.redis)
        if controller.progress is not None:
            self._show(controller.progress)

    def refresh(self) -> None:
        """For ``watch``: progress from storage alone (no controller in this process)."""
        manifest = load_manifest(self.store, self.run_id)
        self._print_decisions(manifest)
        cycle = manifest.cycle
        plan = self.store.read_json(self.run_id, paths.plan(cycle))
        if plan is None and cycle and _labels(manifest):  # scoring the unlabelled texts
            shards = set(self.store.list_jobs(self.run_id, 0, "unlabelled"))
            scored = set(self.store.list_jobs(self.run_id, cycle, "scores")) & shards
            self._show(CycleProgress(cycle, planned=len(shards), generated=len(scored),
                                     phase="score" if scored < shards else "select"))
            return
        plan = plan or {"jobs": []}
        jobs = set(plan["jobs"]) or ({"seed"} if cycle == 0 else set())
        done = set(self.store.list_jobs(self.run_id, cycle, "generated")) & jobs
        attributed = set(self.store.list_jobs(self.run_id, cycle, "attributed")) & jobs
        self._show(CycleProgress(cycle, planned=len(jobs), generated=len(done),
                                 attributed=len(attributed), phase="generate"))

    def _show(self, p: CycleProgress) -> None:
        scoring = p.phase in ("score", "select")  # counts are unlabelled shards scored
        self._bar(f"cycle {p.cycle} {'score' if scoring else 'generate'}",
                  p.generated + p.failed, p.planned)
        if p.attributed:
            self._bar(f"cycle {p.cycle} attribute", p.attributed, p.planned)
        self._bar(f"cycle {p.cycle} train", int(p.trained), 1)
        if not self.live and p.phase != self.last_phase:
            done = "unlabelled shards scored" if scoring else "jobs generated"
            self._say(f"cycle {p.cycle}: {p.phase} ({p.generated}/{p.planned} {done})")
        self.last_phase = p.phase

    def _bar(self, name: str, done: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.bars.add_task(name, total=max(total, 1))
        self.bars.update(self.tasks[name], completed=done, total=max(total, 1))

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
        self.console.print(f"[{elapsed:7.1f}s] {text}", highlight=False)


def _labels(manifest: Manifest) -> bool:
    """Whether the run labels unlabelled texts (``labelling.share`` above 0)."""
    return float(manifest.spec.get("labelling", {}).get("share", 0) or 0) > 0
