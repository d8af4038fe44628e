"""Distillation quality study: seed-only vs PGKD vs its ablations on Banking77 (issue 9).

Every row is a real run of the system (`orchestrator run`, embedded Redis, local workers, the
SIMULATED teacher answering from the training rows outside the seed), except row 0, the upper
bound, which trains the same student directly on the whole training split. One student and one
test set throughout; the same teacher budget (cycles × examples per cycle) for every row that
generates.

The study is resumable, one cell (row, seed) at a time: each finished cell is written to
``<results>/<protocol>/row<k>-seed<s>.json``, where ``<protocol>`` is a short hash of every
setting that changes a result (data, student, budget). A cell already measured under the same
protocol is not run again (``--redo`` runs it again). After each cell the Markdown table
(default docs/quality.md) is rewritten from every cell of the protocol measured so far, with
the number of seeds behind each row, so a study spread over several sittings — the full one
is many hours of CPU — always has an honest table of what has been measured.

    python -m bench.quality.run                       # the full study: 9 rows × 3 seeds
    python -m bench.quality.run --rows 1,2,4 --seeds 0 --classes 10 --seed-size 200 \
        --layers 2 --max-cycles 1 --examples-per-cycle 40 --results /tmp/q \
        --out /tmp/q.md                               # a quick look

The full study trains MiniLM-L6 (all 6 layers) dozens of times; on a 2-core CPU a generating
row takes tens of minutes per seed; on one GPU the whole study is about an hour or two.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.teachers.prompts import PROMPT_LAYOUT
from workers.teachers.sim import SIM_VERSION

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT.parent / "shared" / "data" / "banking77"
RESULTS = ROOT / "bench" / "quality" / "results"
FINDINGS = ROOT / "bench" / "quality" / "findings.md"
FINDINGS_PROTOCOL = "ebc17e772e"  # the cells findings.md was written about (prompt layout 1)
# Which cells run first when the whole study is asked for: the rows the targets need, then
# the ablations (the table is always printed in row order).
PRIORITY = "1,2,4,0,10,9,11,12,7,3,5,6,8"


@dataclass(frozen=True)
class Row:
    key: int
    name: str
    spec: dict[str, Any] = field(default_factory=dict)  # overrides of the base spec


ROWS = [
    Row(0, "whole training split (upper bound)"),
    Row(1, "seed only", {"loop": {"max_cycles": 0}}),
    Row(2, "PGKD guided, class-sharded"),
    Row(3, "PGKD single prompt", {"generation": {"mode": "single"}}),
    Row(4, "unguided (uniform, no report, no hard negatives)",
        {"generation": {"mode": "unguided"}}),
    Row(5, "guided without hard negatives", {"generation": {"use_hard_negatives": False}}),
    Row(6, "guided without the report", {"generation": {"use_report": False}}),
    Row(7, "guided + rationale-aware training",
        # saliency, top 2: on this teacher input×gradient (the default until 2026-12-03) picks
        # words no more telling than random ones; docs/attribution.md, "On Banking77"
        {"attribution": {"enabled": True, "method": "saliency", "top_k": 2},
         "student": {"rationales": True}}),
    Row(8, "guided, teacher at 10% label noise", {"teacher": {"sim": {"label_noise": 0.1}}}),
    # active labelling (issue 25): the teacher labels training texts outside the seed, given
    # as texts only (dataset.unlabelled: rest_of_train), chosen by the last student
    Row(9, "labelling, random selection",
        {"dataset": {"unlabelled": "rest_of_train"},
         "labelling": {"share": 1.0, "strategy": "random", "balance": False}}),
    Row(10, "labelling, uncertainty + diversity",
        {"dataset": {"unlabelled": "rest_of_train"},
         "labelling": {"share": 1.0, "strategy": "diverse"}}),
    Row(11, "mixed: half labelling (uncertainty + diversity), half guided generation",
        {"dataset": {"unlabelled": "rest_of_train"},
         "labelling": {"share": 0.5, "strategy": "diverse"}}),
    Row(12, "labelling, uncertainty + diversity, teacher at 10% label noise",
        {"dataset": {"unlabelled": "rest_of_train"},
         "labelling": {"share": 1.0, "strategy": "diverse"},
         "teacher": {"sim": {"label_noise": 0.1}}}),
]
METRICS = ("accuracy", "macro_f1", "weighted_f1")
TARGET_ADDED = 1600  # target 1: PGKD with at most this many examples added


def parse_study_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    for name in ("rows", "seeds"):
        try:
            values = [int(x) for x in getattr(args, name).split(",") if x.strip()]
        except ValueError:
            p.error(f"--{name} must be comma-separated integers, got {getattr(args, name)!r}")
        if not values:
            p.error(f"--{name} is empty")
        setattr(args, name + "_list", values)
    unknown = sorted(set(args.rows_list) - {r.key for r in ROWS})
    if unknown:
        p.error(f"--rows: no row {unknown[0]} (rows are 0-{ROWS[-1].key})")
    if not (Path(args.data) / "train.csv").is_file() or not (Path(args.data) / "test.csv").is_file():
        p.error(f"--data: {args.data} has no train.csv and test.csv (Banking77's layout)")
    return args


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def parser() -> argparse.ArgumentParser:
    # the description is this module's docstring: the study, as --help shows it
    p = argparse.ArgumentParser(prog="python -m bench.quality.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=PRIORITY, help="rows to measure, in this order")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--data", default=str(BANKING77), help="folder with train.csv and test.csv")
    p.add_argument("--classes", type=int, default=None, help="keep only the first N labels")
    p.add_argument("--seed-size", type=int, default=1000, help="PGKD: 1,000 = 800 + 200")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--layers", type=int, default=None, help="truncate MiniLM (default: all 6)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patience", type=int, default=3,
                   help="epochs without a lower validation loss before a training stops")
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="train every cycle's student from MiniLM (default: from the last one)")
    p.add_argument("--steer-fraction", type=_fraction, default=0.0,
                   help="dataset.steer_fraction of the generating rows: the share of the "
                        "validation texts that steers generation, the rest selecting "
                        "(default 0: all of them do both, as in PGKD)")
    p.add_argument("--max-cycles", type=int, default=4)
    p.add_argument("--examples-per-cycle", type=int, default=400)
    p.add_argument("--examples-per-request", type=int, default=10)
    p.add_argument("--work", default=None,
                   help="scratch folder (default: a temp folder); reuse it to resume a cell")
    p.add_argument("--results", default=str(RESULTS),
                   help="one JSON file per measured cell, under a folder per protocol")
    p.add_argument("--redo", action="store_true", help="measure cells already measured again")
    p.add_argument("--table-only", action="store_true",
                   help="measure nothing: rewrite the table from the cells already measured")
    p.add_argument("--fill", action="store_true",
                   help="measure nothing new: give the cells of --rows / --seeds that an "
                        "earlier version of this harness wrote the fields it did not record "
                        "(test score per cycle, training time per cycle), from their runs "
                        "in --work")
    p.add_argument("--out", default=str(ROOT / "docs" / "quality.md"))
    return p


# Settings that matter only to rows that generate (2-8): rows 0 and 1 are measured once for
# every protocol that differs only in these, and kept under the protocol without them.
GENERATION_KEYS = ("warm_start", "max_cycles", "examples_per_cycle", "examples_per_request")
NON_GENERATING = (0, 1)


def protocol(args: argparse.Namespace, generating: bool = True) -> dict[str, Any]:
    """Every setting that changes a cell's result (for a row that generates, or not); its
    hash names the results folder."""
    keys = ("classes", "seed_size", "test_limit", "layers", "max_length", "epochs", "lr",
            "batch_size", "patience", *(GENERATION_KEYS if generating else ()))
    proto = {"data": Path(args.data).name, **{k: getattr(args, k) for k in keys}}
    # how the simulated teacher answers (1: no key; 3 came with the planner showing each
    # cycle the next few-shot examples of a class)
    if generating and SIM_VERSION > 1:
        proto["sim"] = SIM_VERSION
    # the order of the prompts' sections (2: shared parts first, workers.teachers.prompts)
    if generating and PROMPT_LAYOUT > 1:
        proto["prompt_layout"] = PROMPT_LAYOUT
    # only when set, so the protocols measured before the option keep their names
    if generating and args.steer_fraction:
        proto["steer_fraction"] = args.steer_fraction
    return proto


def protocol_id(proto: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:10]


def merge_spec(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge_spec(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def base_spec(args: argparse.Namespace, train: str, test: str, seed: int,
              store: Path, generating: bool = True) -> dict[str, Any]:
    """The spec every row's runs start from; ``generating``: for rows 2 on (rows 0 and 1 are
    measured without the generation-only settings, ``--steer-fraction``)."""
    # The cache lets every generating row but 7 copy the seed-only student of cycle 0 (row
    # 1's student: same settings, data and seed) instead of training it again; it changes no
    # result.
    student: dict[str, Any] = {"model": "builtin:minilm", "max_length": args.max_length,
                               "lr": args.lr, "batch_size": args.batch_size,
                               "epochs": args.epochs, "patience": args.patience,
                               "warm_start": args.warm_start, "seed": seed,
                               "cache_dir": str(store.parent / "students")}  # shared
    if args.layers:
        student["num_layers"] = args.layers
    return {
        "name": "quality", "storage": str(store),
        "dataset": {"train": train, "test": test, "label_column": "category",
                    "seed_size": args.seed_size, "sample_seed": seed,
                    **({"steer_fraction": args.steer_fraction}
                       if generating and args.steer_fraction else {}),
                    **({"test_limit": args.test_limit} if args.test_limit else {})},
        "teacher": {"kind": "sim", "model": "distillq-sim", "rpm": 60000,
                    "price": {"input_per_1k": 0.003, "output_per_1k": 0.015},
                    "sim": {"seed": seed}},
        "generation": {"mode": "sharded", "examples_per_cycle": args.examples_per_cycle,
                       "examples_per_request": args.examples_per_request},
        "student": student,
        # row 7's white-box teacher: MiniLM fine-tuned on the seed with the student's epoch
        # budget and early stopping (3 epochs left it near chance: validation loss 3.54 against
        # ln 77 = 4.34, and rationales no more faithful than random words)
        "attribution": {"enabled": False, "model": "builtin:minilm",
                        "finetune_epochs": args.epochs},
        "loop": {"max_cycles": args.max_cycles, "patience": args.max_cycles + 1},
    }


def row_settings(args: argparse.Namespace, row: Row) -> dict[str, Any]:
    """The spec the harness gives a row's runs, for seed 0 and with placeholder paths. The
    protocol hash covers the command-line settings; this covers the harness's own choices
    (``ROWS``, ``base_spec``), so a cell measured before one of them changed is not mixed with
    cells measured after."""
    generating = row.key not in NON_GENERATING
    if not generating:  # rows 0 and 1 are shared by protocols that differ in these
        defaults = parser().parse_args([])
        args = argparse.Namespace(**{**vars(args), **{k: getattr(defaults, k)
                                                       for k in GENERATION_KEYS}})
    spec = base_spec(args, "<train>", "<test>", 0, Path("<work>") / "<store>",
                     generating=generating)
    return json.loads(json.dumps(merge_spec(spec, row.spec), sort_keys=True))
