"""What ``status``, ``list`` and ``report`` print for a person: rich tables on stdout, built
from the same dictionaries ``--json`` prints (``orchestrator.runs.summarize``), so the two
never disagree."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.runs import rejects_text


def console() -> Console:
    """stdout; a pipe or a log gets whole lines (160 columns), not 80-column wraps; text is
    printed as it is, never read as rich markup."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160,
                   highlight=False, soft_wrap=False, markup=False)  # errors hold [brackets]


def print_status(summary: dict[str, Any], teacher: str) -> None:
    """``status RUN``: the run's state, its teacher (``teacher`` in words), cycles, spend,
    labelling and test result."""
    out = console()
    stop = f" — {summary['stop_reason']}" if summary.get("stop_reason") else ""
    out.print(f"run {summary['run_id']}: {summary['status']}{stop}")
    for cause in summary.get("causes", []):
        out.print(f"  cause: {cause}")
    out.print(f"teacher: {teacher}")
    out.print(cycles_table(summary))
    out.print(spend_line(summary["spend"]))
    if summary.get("labelling"):
        out.print(labelling_table(summary["labelling"]))
    final, test = summary.get("final"), summary.get("test")
    if final:
        out.print(f"kept: the student of cycle {final['best_cycle']} ({final['reason']})")
    if test:
        out.print(f"test (cycle {test['cycle']}): macro-F1 {test['macro_f1']:.4f}, "
                  f"accuracy {test['accuracy']:.4f}")


def cycles_table(summary: dict[str, Any]) -> Table:
    table = Table(title="cycles", title_justify="left")
    for name in ("cycle", f"val {summary['metric']}", "decision", "examples", "cost",
                 "of it wasted"):
        table.add_column(name, justify="left" if name == "decision" else "right")
    for c in summary["cycles"]:
        table.add_row(str(c["cycle"]), f"{c['value']:.4f}", c["action"], f"{c['examples']:,}",
                      f"{c['cost']:.4f}", f"{c['wasted_cost']:.4f}")
    if not summary["cycles"]:
        table.add_row("-", "no cycle decided yet", "", "", "", "")
    return table


def spend_line(spend: dict[str, Any]) -> str:
    """The teacher spend as storage records it, and what the live counter adds."""
    def tokens(part: str) -> int:
        return int(spend[f"{part}_tokens_in"] + spend[f"{part}_tokens_out"])

    line = (f"teacher spend: {int(spend['paid_requests']):,} requests, {tokens('paid'):,} tokens "
            f"(input read from the prompt cache: {int(spend['paid_tokens_cached']):,}), cost "
            f"{spend['paid_cost']:.4f}; wasted on failed attempts: {tokens('wasted'):,} tokens, "
            f"cost {spend['wasted_cost']:.4f}")
    if "in_flight_or_unrecorded_tokens" in spend:
        line += (f"; in flight or not yet recorded: "
                 f"{int(spend['in_flight_or_unrecorded_tokens']):,} tokens, cost "
                 f"{spend['in_flight_or_unrecorded_cost']:.4f}")
    return line


def labelling_table(labelling: dict[str, Any]) -> Table:
    pool = labelling.get("unlabelled")
    table = Table(title="labelling" + (f": {pool:,} unlabelled texts" if pool is not None
                                       else ""), title_justify="left")
    for name in ("cycle", "strategy", "scored", "selected", "labelled", "rejected (by reason)",
                 "answers", "agreement", "requests", "tokens", "cost"):
        table.add_column(name, justify="left" if name in ("strategy", "rejected (by reason)")
                         else "right")
    for r in labelling["cycles"]:
        why = rejects_text(r["rejected"])
        table.add_row(str(r["cycle"]), str(r["strategy"]), f"{r['scored'] or 0:,}",
                      str(r["selected"]), str(r["labelled"]), why or "0", str(r["answers"]),
                      "-" if r["agreement"] is None else f"{r['agreement']:.2f}",
                      f"{int(r['requests']):,}", f"{int(r['tokens_in'] + r['tokens_out']):,}",
                      f"{r['cost']:.4f}")
    if not labelling["cycles"]:
        table.add_row("-", str(labelling["strategy"]), "nothing selected yet", *[""] * 8)
    return table


def print_runs(runs: list[dict[str, Any]]) -> None:
    """``list`` (and ``status`` without a run): one row per run of the storage."""
    table = Table()
    for name in ("run", "status", "cycles", "last validation", "created"):
        table.add_column(name, justify="right" if name == "cycles" else "left")
    for r in runs:
        last = f"{r['metric']} {r['last_value']:.4f}" if r.get("last_value") is not None else "-"
        created = (datetime.fromtimestamp(r["created_at"], timezone.utc)
                   .strftime("%Y-%m-%d %H:%M UTC") if r.get("created_at") else "-")
        table.add_row(r["run_id"], r["status"], str(r.get("cycles", "-")), last, created)
    out = console()
    out.print(table if runs else "no runs in this storage")
    for r in runs:  # below the table: a manifest's error is long
        if r.get("error"):
            out.print(f"{r['run_id']}: {r['error']}")
