"""An embedded `orchestrator run` end to end (embedded Redis, local workers, the simulated
teacher, a real tiny student, two cycles: 0 and 1), from a Parquet training file and a JSONL
test file, in a pseudo-terminal, as a person sees it: the run completes with its report, and
the final screen (rendered by pyte, a VT100 emulator) has each cycle's phases once, their
totals equal to the run's records, and the log records above the bars, never inside a bar's
line."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from runkit import env as run_env
from runkit import write_spec

from storage.store import ShardStore

pytestmark = pytest.mark.slow

COLS, ROWS = 160, 120  # tall enough that the whole run stays on the screen


def _run_in_a_terminal(args: list[str], cwd: Path, timeout: float = 600) -> tuple[int, bytes]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = run_env(TERM="xterm-256color", COLUMNS=str(COLS), LINES=str(ROWS))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                            start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the program ended
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
        raise AssertionError("orchestrator run did not finish in the terminal")
    os.close(master)
    return proc.wait(30), bytes(out)


def _screen(data: bytes) -> list[str]:
    import pyte

    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.ByteStream(screen)
    stream.feed(data)
    return [line.rstrip() for line in screen.display]


def _parquet_and_jsonl(tmp_path: Path, spec: Path) -> None:
    """The spec's data file as a Parquet training file and a JSONL test file."""
    import csv
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    rows = list(csv.DictReader(open(tmp_path / "data.csv", encoding="utf-8")))
    pq.write_table(pa.table({"text": [r["text"] for r in rows],
                             "category": [r["category"] for r in rows]}), tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = yaml.safe_load(spec.read_text())
    data["dataset"] |= {"train": str(tmp_path / "d.parquet"), "test": str(tmp_path / "d.jsonl")}
    spec.write_text(yaml.safe_dump(data))


def test_an_embedded_run_in_a_terminal_shows_each_phase_once_with_its_totals(
        tmp_path: Path, corpus: Path) -> None:
    spec = write_spec(tmp_path, corpus, "live", loop={"max_cycles": 1, "patience": 3})
    _parquet_and_jsonl(tmp_path, spec)
    code, raw = _run_in_a_terminal([sys.executable, "-m", "orchestrator.cli", "run", str(spec)],
                                   tmp_path)
    lines = _screen(raw)
    text = "\n".join(lines)
    assert code == 0, text[-3000:]
    store = ShardStore(str(tmp_path / "store"))
    manifest = store.read_json("live", "manifest.json")
    assert manifest["status"] == "done"
    assert [d["cycle"] for d in manifest["decisions"]] == [0, 1]
    generated = store.read_kind("live", 1, "generated")
    assert generated.num_rows > 0 and set(generated.column("source").to_pylist()) == {"teacher"}
    assert store.read_json("live", "test.json")["cycle"] in (0, 1)
    report = (tmp_path / "store" / "live" / "report" / "report.md").read_text()
    assert "Simulated teacher" in report and "metrics.png" in report
    assert "teacher: SIMULATED" in text
    for line in lines:
        if "━━━━━━━━━━" in line and not line.startswith(("┏", "┡", "└")):  # a bar
            assert line.startswith("cycle "), f"a bar line that is not a phase's: {line!r}"
    bars = [line for line in lines if line.startswith("cycle ") and "━" in line]
    for line in bars:
        assert not any(word in line for word in ("INFO", "WARNING", "distillq", "run=")), \
            f"log text inside a bar: {line!r}"
    names = [" ".join(line.split()[:3]) for line in bars]
    assert names == ["cycle 0 train", "cycle 1 generate", "cycle 1 train",
                     f"cycle {_kept(tmp_path)} test"], text[-3000:]

    for cycle in (1,):
        jobs = store.read_json("live", f"cycle={cycle}/plan.json")["jobs"]
        stats = [store.read_json("live", f"cycle={cycle}/jobstats/{j}.json") for j in jobs]
        examples = sum(s["examples"] for s in stats)
        tokens = sum(s["tokens_in"] + s["tokens_out"] for s in stats)
        (row,) = [line for line in bars if line.startswith(f"cycle {cycle} generate")]
        assert f" {len(jobs)}/{len(jobs)} " in row, row
        assert f"0 failed · {examples:,} examples · {len(jobs):,} requests · {tokens:,} tokens" \
            in row, row
        decided = store.read_json("live", "manifest.json")["decisions"][cycle]
        (train,) = [line for line in bars if line.startswith(f"cycle {cycle} train")]
        assert "1/1" in train and f"val macro_f1={decided['value']:.4f}" in train, train
    first_bar = lines.index(bars[0])
    logged = [i for i, line in enumerate(lines) if "run=live cycle=1 macro_f1=" in line]
    assert logged and logged[0] < first_bar, "log records are printed above the display"
    assert "┃ cycle ┃" in text, "it ends with the summary table"


def _kept(tmp_path: Path) -> int:
    store = ShardStore(str(tmp_path / "store"))
    return int(store.read_json("live", "manifest.json")["final"]["best_cycle"])
