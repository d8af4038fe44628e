"""The run report: Markdown plus PNG plots, written into the run's storage (``report/``).

Contents: per-cycle validation metrics, per-class F1 of the seed-only student vs the best one,
generated examples per class, teacher tokens and cost per cycle, the student-vs-teacher latency
and cost table (PGKD's Table 5, measured on this run), rationale quality when attribution ran.
A run that used the simulated teacher says so at the top.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distillq import paths
from distillq.jobs import failed_names
from distillq.manifest import Manifest
from orchestrator.runs import (
    cycle_stats,
    failed_attempts,
    failure_causes,
    labelling_rows,
    load_manifest,
    rejects_text,
    simulated,
    spend_split,
)
from storage.store import ShardStore
from workers.teachers.openai import host_of

SIM_NOTE = ("> **Simulated teacher.** This run's teacher was distillq's simulated teacher: it "
            "answers from a held-out pool of real labelled examples (an oracle), not an LLM. "
            "Teacher quality, tokens, latency and cost below are those of the simulation.")


def teacher_line(spec: dict[str, Any], paid: Mapping[str, float] | None = None) -> str:
    """The teacher as the report and the summary name it: model and host, never a key, and
    whether it is real or the simulation. ``paid`` (``runs.spend_split``'s): how many of the
    run's requests distillq's simulated teacher answered, so the simulation reached as a real
    server (``teacher.kind: openai``), or a run that changed teacher, is named as it was."""
    teacher = spec["teacher"]
    if teacher["kind"] == "sim":
        return ("SIMULATED (distillq's simulated teacher: answers from a pool of real labelled "
                "examples)")
    host = host_of(str(teacher.get("base_url") or ""))
    by_sim, real = sim_answers(paid)
    if by_sim and not real:
        return (f"SIMULATED: `{teacher['model']}` at {host} is distillq's simulated teacher "
                f"(its answers to {by_sim:,} requests say so), reached as a real server "
                "(teacher.kind openai)")
    line = f"`{teacher['model']}` at {host} (a real OpenAI-compatible server)"
    if by_sim:
        line += (f"; distillq's simulated teacher answered {by_sim:,} of the run's requests, "
                 f"a real server {real:,}")
    return line


def sim_note(spec: dict[str, Any], paid: Mapping[str, float] | None) -> list[str]:
    """The warning at the top of a report whose teacher was, wholly or partly, the simulation."""
    by_sim, real = sim_answers(paid)
    if partly_simulated(spec, paid):
        return [f"> **Partly simulated teacher.** distillq's simulated teacher (an oracle over "
                f"real labelled examples, not an LLM) answered {by_sim:,} of this run's "
                f"requests, a real server {real:,}; figures that mix their answers say nothing "
                "of either alone.", ""]
    return [SIM_NOTE, ""] if simulated(spec, paid) else []


def partly_simulated(spec: dict[str, Any], paid: Mapping[str, float] | None) -> bool:
    """A run whose requests both the simulation and a real server answered (a run resumed
    with another teacher, say)."""
    by_sim, real = sim_answers(paid)
    return spec["teacher"]["kind"] != "sim" and by_sim > 0 and real > 0


def sim_answers(paid: Mapping[str, float] | None) -> tuple[int, int]:
    """(requests the simulated teacher answered, requests another server answered) of a
    ``spend_split`` part; a request that got no answer is neither."""
    paid = paid or {}
    return int(paid.get("requests_simulated", 0)), int(paid.get("requests_real", 0))


def _evals(store: ShardStore, run_id: str, manifest: Manifest) -> list[dict[str, Any]]:
    out = []
    for d in manifest.decisions:
        report = store.read_json(run_id, paths.eval_report(d.cycle))
        if report:
            out.append(report)
    return out


def best_eval(manifest: Manifest, evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The kept cycle's evaluation: the final one, or for a run stopped early (failed,
    cancelled: no final) the best so far — not simply the last cycle evaluated."""
    best = manifest.best_so_far()
    return next((e for e in evals if e["cycle"] == best), evals[-1])


def _teacher_totals(store: ShardStore, run_id: str, n_cycles: int) -> list[dict[str, float]]:
    rows = []
    for cycle in range(1, n_cycles):
        stats = cycle_stats(store, run_id, cycle)
        wasted = failed_attempts(store, run_id, cycle)
        row = {k: sum(float(s.get(k, 0) or 0) for s in stats + wasted)
               for k in ("requests", "tokens_in", "tokens_cached", "tokens_out", "cost",
                         "latency_s")}
        row["examples"] = sum(float(s.get("examples", 0) or 0) for s in stats)
        row["wasted_tokens"] = sum(float(s.get("tokens_in", 0) or 0)
                                   + float(s.get("tokens_out", 0) or 0) for s in wasted)
        row["wasted_cost"] = sum(float(s.get("cost", 0) or 0) for s in wasted)
        for name, field in (("retries", "retries_by_reason"), ("rejected", "rejects_by_reason")):
            row[name] = sum(sum((s.get(field) or {}).values()) for s in stats + wasted)
        row["bad_answers"] = sum((s.get(f) or {}).get(reason, 0) for s in stats + wasted
                                 for f in ("retries_by_reason", "failures_by_reason")
                                 for reason in ("malformed", "truncated"))
        row["cycle"] = cycle
        failed = store.list_names(run_id, paths.failed_dir(cycle))
        row["failed"] = len(failed_names(failed, "generate"))
        row["failed_attribute"] = len(failed_names(failed, "attribute"))
        rows.append(row)
    return rows


def _generated_counts(store: ShardStore, run_id: str, n_cycles: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for cycle in range(1, n_cycles):
        table = store.read_kind(run_id, cycle, "generated")
        counts.update(table.column("label").to_pylist() if table.num_rows else [])
    return counts


def labelling_lines(rows: list[dict[str, Any]], spec: dict[str, Any],
                    paid: Mapping[str, float] | None = None) -> list[str]:
    """The "Labelled texts" section: per cycle, the selection and the labelling jobs."""
    if not rows:
        return []
    lab, source = spec.get("labelling", {}), spec["dataset"].get("unlabelled")
    lines = ["", "## Labelled texts per cycle", "",
             f"The teacher labelled texts of `dataset.unlabelled` ({source}): "
             f"{lab.get('share', 0):.0%} of each cycle's "
             f"{spec['generation']['examples_per_cycle']} examples, chosen by the student of "
             f"the cycle before (strategy `{lab.get('strategy')}`, "
             f"{'balanced over its predicted classes' if lab.get('balance') else 'unbalanced'}"
             f"), {lab.get('self_consistency', 1)} answer(s) per text, the majority kept."]
    if spec["teacher"]["kind"] == "sim":
        sim = spec["teacher"].get("sim", {})
        lines += ["", "The simulated teacher labels a text of its pool by the pool's own label "
                  "(an oracle) and any other by the label whose texts are closest to it; "
                  f"label noise {sim.get('label_noise', 0)} ({sim.get('noise_kind', 'uniform')})."]
    elif simulated(spec, paid):
        lines += ["", f"The simulated teacher, reached as a server, labelled "
                  f"{'some of ' if partly_simulated(spec, paid) else ''}these texts: it labels "
                  "a text of its pool by the pool's own label (an oracle) and any other by the "
                  "label whose texts are closest to it; its label noise is the server's own "
                  "setting."]
    lines += ["", "| cycle | strategy | texts scored | selected | labelled | rejected (by reason) "
              "| answers per text | mean agreement | requests | tokens | cost |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        why = rejects_text(r["rejected"]) or "0"
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.3f}"
        lines.append(f"| {r['cycle']} | {r['strategy']} | {r['scored']} | {r['selected']} | "
                     f"{r['labelled']} | {why} | {r['answers']} | {agree} | "
                     f"{int(r['requests'])} | {int(r['tokens_in'] + r['tokens_out'])} | "
                     f"{r['cost']:.4f} |")
    return lines


def rationale_lines(quality: dict[str, Any] | None) -> list[str]:
    """Teacher rationale quality (Ballout et al.): the deletion test and label-word overlap."""
    if not quality:
        return []
    d, o = quality["deletion"], quality["label_overlap"]
    return [
        "", "## Teacher rationales", "",
        f"Method `{quality['method']}` on a {quality['teacher']} teacher, {quality['examples']} "
        f"validation examples, {quality['rationale_words_mean']:.1f} rationale words on average.",
        "",
        "| deletion test | mean drop of the teacher's target score |",
        "|---|---|",
        f"| remove the rationale's top-k words | {d['topk_drop']:.4f} |",
        f"| remove k random words | {d['random_drop']:.4f} |",
        "",
        f"Top-k removal hurts more than random removal on {d['topk_wins']:.0%} of {d['n']} "
        f"examples. Rationales hold a word of the label's own name in {o['hit_rate']:.0%} of the "
        f"{o['eligible']} texts that contain one (Ballout et al. report 68% on their data).",
    ]


def latency_table(test: dict[str, Any], rows: list[dict[str, float]],
                  sim_latency: str | None = None) -> list[str]:
    """PGKD Table 5 on this run: student per-64 latency vs the teacher's, and cost."""
    lat = test.get("latency", {}) if test else {}
    student_64 = lat.get("seconds_per_64")
    examples = sum(r["examples"] for r in rows)
    requests = sum(r["requests"] for r in rows)
    if not examples or not requests or student_64 is None:
        return ["(latency table needs at least one teacher cycle and a test evaluation)"]
    teacher_64 = sum(r["latency_s"] for r in rows) / examples * 64
    cost_64 = sum(r["cost"] for r in rows) / examples * 64
    speed = teacher_64 / student_64 if student_64 else float("inf")
    note = ([] if sim_latency is None else [
        "", f"The teacher here is the simulation, answering after {sim_latency}; its latency "
        "and cost stand in for an LLM's and say nothing about one."])
    return [
        "| | seconds per 64 examples | cost per 64 examples |",
        "|---|---|---|",
        f"| student ({lat.get('device', '?')}) | {student_64:.3f} | 0 (own hardware) |",
        f"| teacher (sequential request latency) | {teacher_64:.3f} | {cost_64:.4f} |",
        "",
        f"Student is **{speed:.3g}×** as fast per 64 examples as the teacher's sequential "
        "request latency on this run (PGKD reports ≈130× against Claude 3 Sonnet).",
        *note,
    ]


def _steer_note(spec: dict[str, Any], evals: list[dict[str, Any]]) -> list[str]:
    """A line saying which validation examples steered and which selected, if they differ."""
    fraction = float(spec["dataset"].get("steer_fraction", 0.0))
    if fraction == 0 or not evals:
        return []
    steer = evals[-1].get("steer", {})
    return ["", f"Validation is split (`dataset.steer_fraction: {fraction}`): the metrics below "
            f"are on the {evals[-1].get('n', '?')} validation examples that select the epoch "
            f"and the cycle to keep; generation was steered by the other "
            f"{steer.get('n', '?')} alone."]


def _markdown(manifest: Manifest, evals: list[dict[str, Any]], test: dict[str, Any],
              rows: list[dict[str, float]], plots: list[str],
              quality: dict[str, Any] | None = None, causes: list[str] | None = None,
              labelled: list[dict[str, Any]] | None = None,
              paid: Mapping[str, float] | None = None) -> str:
    spec = manifest.spec
    causes, labelled = causes or [], labelled or []
    lines = [f"# distillq run `{manifest.run_id}`", "", *sim_note(spec, paid)]
    final_best = manifest.final.best_cycle if manifest.final is not None else None
    lines += [f"Status: **{manifest.status}** — {manifest.stop_reason or ''}",
              *([""] + [f"- {cause}" for cause in causes] + [""] if causes else []),
              f"Teacher: `{spec['teacher']['model']}` ({spec['teacher']['kind']}); student: "
              f"`{spec['student']['model']}`; generation mode: {spec['generation']['mode']}.",
              *_steer_note(spec, evals),
              "", "## Validation per cycle", "",
              "| cycle | train examples | accuracy | macro-F1 | weighted-F1 | loss |",
              "|---|---|---|---|---|---|"]
    for e in evals:
        lines.append(f"| {e['cycle']} | {e.get('n_train', '')} | {e.get('accuracy', 0):.4f} | "
                     f"{e.get('macro_f1', 0):.4f} | {e.get('weighted_f1', 0):.4f} | "
                     f"{e.get('loss', 0):.4f} |")
    if test:
        lines += ["", f"## Test (best cycle {final_best})", "",
                  f"accuracy {test.get('accuracy', 0):.4f}, macro-F1 "
                  f"{test.get('macro_f1', 0):.4f}, weighted-F1 {test.get('weighted_f1', 0):.4f}"
                  f" on {test.get('n', test.get('support', '?'))} examples."]
    lines += ["", "## Teacher spend per cycle", "",
              f"Teacher: {teacher_line(spec, paid)}. Every paid request is counted: those of "
              "committed jobs and those of failed attempts (wasted: their answers were thrown "
              "away).", "",
              "| cycle | requests | retries | malformed / truncated answers | examples rejected "
              "| examples kept | tokens in (of them cached) | tokens out | cost "
              "| of it wasted (tokens, cost) "
              "| failed jobs |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {int(r['cycle'])} | {int(r['requests'])} | {int(r['retries'])} | "
                     f"{int(r['bad_answers'])} | {int(r['rejected'])} | {int(r['examples'])} | "
                     f"{int(r['tokens_in'])} ({int(r['tokens_cached'])}) | "
                     f"{int(r['tokens_out'])} | {r['cost']:.4f} | "
                     f"{int(r['wasted_tokens'])}, {r['wasted_cost']:.4f} | "
                     f"{int(r.get('failed', 0))} generate, {int(r.get('failed_attribute', 0))} "
                     "attribute |")
    if any(r.get("failed") for r in rows):
        lines += ["", "Failed generate jobs failed permanently (see `cycle=<c>/failed/`); a "
                  "cycle goes on while they stay within "
                  "`generation.tolerated_failure_fraction` and fails the run beyond it."]
    if any(r.get("failed_attribute") for r in rows):
        lines += ["", "Failed attribute jobs leave their examples without rationale words; "
                  "the student still trains on them."]
    lines += labelling_lines(labelled, spec, paid)
    lines += rationale_lines(quality)
    lines += ["", "## Student vs teacher", "",
              *latency_table(test, rows, _sim_latency(spec, paid)), ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _sim_latency(spec: dict[str, Any], paid: Mapping[str, float] | None) -> str | None:
    """How long the simulated teacher took to answer, for the latency table's note; None for
    a run no simulation answered."""
    if spec["teacher"]["kind"] == "sim":
        return f"a configured {spec['teacher']['sim']['latency_ms']:g} ms (`teacher.sim.latency_ms`)"
    if partly_simulated(spec, paid):
        return ("the latency it was started with (reached as a server), for some requests "
                "only: the teacher's figures mix it with a real server's")
    if simulated(spec, paid):
        return "the latency it was started with (reached as a server)"
    return None


def write_report(store: ShardStore, run_id: str, out_dir: Path | None = None) -> str:
    """Render the report into storage (and ``out_dir``); return where report.md is."""
    from orchestrator import plots  # deferred: matplotlib, ~0.3 s every CLI command would pay

    manifest = load_manifest(store, run_id)
    evals = _evals(store, run_id, manifest)
    test = store.read_json(run_id, paths.TEST_RESULT) or {}
    # a failed or cancelled run also spent on the cycle it stopped in (no decision yet)
    unfinished = manifest.status != "done" and store.read_json(
        run_id, paths.plan(manifest.cycle)) is not None
    rows = _teacher_totals(store, run_id, manifest.cycle + int(unfinished))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = []
        if evals:
            images.append(plots.metrics(evals, folder))
            images.append(plots.per_class(evals[0], best_eval(manifest, evals), folder))
        # the same cycles as the spend table: a stopped run's unfinished cycle included
        counts = _generated_counts(store, run_id, manifest.cycle + int(unfinished))
        if counts:
            images.append(plots.generated(counts, folder))
        if rows:
            images.append(plots.cost(rows, folder))
        quality = store.read_json(run_id, paths.ATTRIBUTION_QUALITY)
        causes = (failure_causes(store, manifest)
                  if manifest.status in ("failed", "cancelled") else [])
        labelled = labelling_rows(store, run_id, manifest.cycle + int(unfinished))
        paid = spend_split(store, run_id, manifest.cycle)["paid"]
        (folder / "report.md").write_text(_markdown(manifest, evals, test, rows, images, quality,
                                                    causes, labelled, paid))
        where = store.put_dir(folder, run_id, paths.REPORT_DIR)  # a local path, or bucket/key
        if out_dir is not None:
            shutil.copytree(folder, out_dir, dirs_exist_ok=True)
    if "://" in store.uri:  # s3://bucket/key, without the URI's query (endpoint, ...)
        where = f"{store.uri.split('://', 1)[0]}://{where}"
    return f"{where}/report.md"


def labelling_line(row: dict[str, Any]) -> str:
    """One ``labelling_row`` in words, for the terminal (``status``, ``watch``, ``run``)."""
    why = rejects_text(row["rejected"])
    rejected = sum(row["rejected"].values())
    agree = f", agreement {row['agreement']:.2f}" if row["agreement"] is not None else ""
    return (f"cycle {row['cycle']}: labelled {row['labelled']} of {row['selected']} texts "
            f"selected by `{row['strategy']}` from {row['scored']} scored; rejected {rejected}"
            f"{f' ({why})' if why else ''}{agree}; {int(row['requests'])} requests, "
            f"{int(row['tokens_in'] + row['tokens_out'])} tokens, cost {row['cost']:.4f}")


def summary_lines(store: ShardStore, run_id: str) -> list[str]:
    manifest = load_manifest(store, run_id)
    lines = [f"run {run_id}: {manifest.status} ({manifest.stop_reason or ''})"]
    if manifest.status in ("failed", "cancelled"):
        lines += [f"  cause: {cause}" for cause in failure_causes(store, manifest)]
    split = spend_split(store, run_id, manifest.cycle)
    paid, wasted = split["paid"], split["wasted"]
    lines.append(f"teacher: {teacher_line(manifest.spec, paid)}")
    lines.append(f"  paid: {int(paid['requests'])} requests, "
                 f"{int(paid['tokens_in'] + paid['tokens_out'])} tokens, cost "
                 f"{paid['cost']:.4f}; of it wasted on failed attempts: "
                 f"{int(wasted['tokens_in'] + wasted['tokens_out'])} tokens, cost "
                 f"{wasted['cost']:.4f}; input tokens read from the provider's prompt cache: "
                 f"{int(paid['tokens_cached'])}")
    lines += [f"  labelling {labelling_line(row)}"
              for row in labelling_rows(store, run_id, manifest.cycle)]
    for d in manifest.decisions:
        lines.append(f"  cycle {d.cycle}: val {d.metric} {d.value:.4f}")
    test = store.read_json(run_id, paths.TEST_RESULT)
    if test:
        lines.append(f"  test (cycle {test.get('cycle')}): macro-F1 {test.get('macro_f1', 0):.4f}"
                     f", accuracy {test.get('accuracy', 0):.4f}")
    return lines
