"""Distillation quality study: seed-only vs PGKD vs its ablations on Banking77 (issue 9).

The entry point, ``python -m bench.quality.run``: it measures the cells (row, seed) asked for
that are not measured yet, one at a time, and rewrites the table after each; ``--help``
describes the study (it prints the docstring of ``study.py``). The harness is four modules,
each importing only those listed before it:

- ``study.py`` — the study definition: the rows, the metrics, the targets' budget, the
  protocol whose hash names a results folder, the command line, and the spec every row's runs
  start from;
- ``results.py`` — the measured cells on disk: each written whole, read back per row;
- ``runner.py`` — measuring a cell: a row through the system or the upper bound trained
  directly, a finished run read back into a cell, and ``--fill``;
- ``render.py`` — the Markdown table and everything under it, with the cells as JSON beside it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from bench.quality.render import write_outputs
from bench.quality.results import load_results, save_cell
from bench.quality.runner import data_files, fill, run_system, run_upper_bound, study_args
from bench.quality.study import (
    NON_GENERATING,
    ROWS,
    base_spec,
    parse_study_args,
    protocol,
    protocol_id,
    row_settings,
)


def main(argv: list[str] | None = None) -> int:
    args = parse_study_args(argv)

    # row 0 trains in this process: show its epochs (the other rows' logs are under
    # <work>/store-<protocol>/.local/<run>/logs/)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    progress = logging.getLogger("workers.training.train")
    if not progress.handlers:
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)

    work = Path(args.work or tempfile.mkdtemp(prefix="distillq-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    train, test = data_files(args, work)
    proto, base = protocol(args), protocol(args, generating=False)
    proto_id, base_id = protocol_id(proto), protocol_id(base)
    folder, base_folder = Path(args.results) / proto_id, Path(args.results) / base_id
    command = "python -m bench.quality.run " + " ".join(
        study_args(argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    rows = {r.key: r for r in ROWS}
    settings = {r.key: row_settings(args, r) for r in ROWS}
    print(f"[quality] protocol {proto_id}: {json.dumps(proto)} (rows 0 and 1: {base_id})",
          flush=True)
    if args.fill:
        fill(args, folder, base_folder, work)
    for seed in [] if args.table_only or args.fill else args.seeds_list:
        for row in (rows[k] for k in args.rows_list):
            cells, cell_proto = ((base_folder, base) if row.key in NON_GENERATING
                                 else (folder, proto))
            if (cells / f"row{row.key}-seed{seed}.json").exists() and not args.redo:
                print(f"[quality] row {row.key}, seed {seed}: already measured", flush=True)
                continue
            # one store per protocol: a run id names a row and seed, not the settings
            store = work / f"store-{cells.name}"
            if args.redo:
                stale = ([work / f"upper-{seed}", work / f"upper-{seed}.epochs"]
                         if row.key == 0 else
                         [store / f"row{row.key}-seed{seed}",
                          store / ".local" / f"row{row.key}-seed{seed}"])
                for path in stale:
                    shutil.rmtree(path, ignore_errors=True)
            spec = base_spec(args, train, test, seed, store,
                             generating=row.key not in NON_GENERATING)
            print(f"[quality] row {row.key} ({row.name}), seed {seed} ...", flush=True)
            got = (run_upper_bound(spec, work, seed) if row.key == 0
                   else run_system(row, spec, work, seed))
            save_cell(cells, cell_proto, row, seed, got, settings[row.key])
            print(f"[quality]   macro-F1 {got['macro_f1']:.4f}, added {got['added']}, "
                  f"{got['wall_s']:.0f}s", flush=True)
            write_outputs(out, load_results(folder, base_folder, settings), args,
                          command.strip(), proto_id, base_id)
    write_outputs(out, load_results(folder, base_folder, settings), args, command.strip(),
                  proto_id, base_id)
    print(f"[quality] table: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
