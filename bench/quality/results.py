"""The quality study's measured cells on disk: one JSON file per cell (row, seed) under a
folder per protocol, written whole, and read back per row."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from bench.quality.study import NON_GENERATING, Row


def load_results(folder: Path, base: Path | None = None,
                 settings: dict[int, dict[str, Any]] | None = None
                 ) -> dict[int, list[dict[str, Any]]]:
    """Every cell measured under one protocol, per row, in seed order: the generating rows
    from ``folder``, rows 0 and 1 from ``base`` (their protocol without generation settings;
    ``None``: from ``folder`` too). With ``settings`` (row → ``row_settings``), a cell that
    recorded other settings is left out, with a warning (cells written before cells recorded
    them are taken as they are)."""
    results: dict[int, list[dict[str, Any]]] = {}
    base = folder if base is None else base
    for where in dict.fromkeys([folder, base]):  # one folder, or the two
        for path in sorted(where.glob("row*-seed*.json")):
            cell = json.loads(path.read_text())
            if base != folder and (int(cell["row"]) in NON_GENERATING) != (where == base):
                continue  # a row kept in the other folder
            recorded, wanted = cell.get("row_settings"), (settings or {}).get(int(cell["row"]))
            if recorded is not None and wanted is not None and recorded != wanted:
                print(f"[quality] WARNING: {path} was measured with other row settings than "
                      "this harness gives the row now; it is left out of the table (run it "
                      "again with --redo)", file=sys.stderr, flush=True)
                continue
            results.setdefault(int(cell["row"]), []).append(
                {**cell["result"], "seed": cell["seed"], "machine": cell.get("machine", {})})
    for got in results.values():
        got.sort(key=lambda r: r["seed"])
    return results


def write_cell(path: Path, cell: dict[str, Any]) -> None:
    """A cell written whole: a temp file, then renamed over the name."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=1) + "\n")
    os.replace(tmp, path)


def save_cell(folder: Path, proto: dict[str, Any], row: Row, seed: int,
              result: dict[str, Any], settings: dict[str, Any] | None = None) -> Path:
    """One measured cell, written whole (temp file, then rename); ``settings``: the row's
    ``row_settings``."""
    import torch  # deferred: torch is heavy, and only a measured cell needs its version

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "protocol.json").write_text(json.dumps(proto, indent=1, sort_keys=True) + "\n")
    path = folder / f"row{row.key}-seed{seed}.json"
    cell = {"row": row.key, "setting": row.name, "seed": seed, "result": result,
            **({"row_settings": settings} if settings is not None else {}),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                        else None, "python": platform.python_version()}}
    write_cell(path, cell)
    return path
