"""The quality study's command runs end to end (a reduced version: the full study is a
benchmark, see docs/quality.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_quality_study_runs_and_writes_its_table(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.quality.run import main
    from bench.quality.study import FINDINGS

    out = tmp_path / "quality.md"
    small = ["--data", str(corpus), "--classes", "4", "--seed-size", "80",
             "--test-limit", "60", "--layers", "1", "--epochs", "2", "--lr", "1e-3",
             "--batch-size", "16", "--max-cycles", "1", "--examples-per-cycle", "16",
             "--examples-per-request", "4", "--work", str(tmp_path / "work"),
             "--results", str(tmp_path / "results"), "--out", str(out)]
    assert main(["--rows", "2,0", "--seeds", "0", *small]) == 0
    text = out.read_text()
    assert "The teacher is simulated" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 0 | whole",
                                                                     "| 2 | PGKD"))]
    assert len(rows) == 2
    assert "Not measured yet: (1) seed only" in text
    assert FINDINGS.read_text().splitlines()[0] not in text, \
        "the study's findings are not a quick look's"
    folders = {p.name: sorted(c.name for c in p.iterdir())
               for p in (tmp_path / "results").iterdir()}
    assert sorted(folders.values()) == [["protocol.json", "row0-seed0.json"],
                                        ["protocol.json", "row2-seed0.json"]], \
        "row 0 generates nothing: kept under the protocol without generation settings"

    # A second sitting measures only what is missing and tabulates everything.
    capsys.readouterr()
    assert main(["--rows", "0,1", "--seeds", "0", *small]) == 0
    said = capsys.readouterr().out
    assert "row 0, seed 0: already measured" in said and "row 1 (seed only), seed 0 ..." in said
    text = out.read_text()
    assert all(f"| {k} |" in text for k in (0, 1, 2))
    assert "- (2) closes" in text, "rows 0, 1 and 2 are in: the first target is checked"
    assert "| (1) − (2) | seed only | 0 | " in text, "each row meets (2) seed by seed"
    assert "--work" not in text and "--out" not in text, "the command says what, not where"
    # another generation setting: a new protocol for rows 2-8, rows 0 and 1 carried over
    assert main(["--rows", "1", "--seeds", "0", "--no-warm-start", *small]) == 0
    assert "row 1, seed 0: already measured" in capsys.readouterr().out
    other = out.read_text()
    assert "| 0 |" in other and "| 1 |" in other and "| 2 |" not in other
    assert len(list((tmp_path / "results").iterdir())) == 2, "nothing new was measured"
    out.write_text(text)
    out.unlink()
    assert main(["--rows", "3", "--table-only", *small]) == 0  # measures nothing
    assert "row 3" not in capsys.readouterr().out
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line for line in out.read_text().splitlines() if line.startswith("| ")] == table
    results = json.loads(out.with_suffix(".json").read_text())
    assert set(results) == {"0", "1", "2"}
    guided = results["2"][0]
    assert 0.0 <= guided["macro_f1"] <= 1.0 and guided["tokens"] > 0 and guided["cost"] > 0
    assert 0 <= guided["added"] <= 16  # up to the best cycle
    assert results["0"][0]["added"] > 16, "the upper bound trains on the whole split"
    # The validation score the controller decided on, per cycle, and the kept cycle's.
    assert len(guided["val_by_cycle"]) == guided["cycles_run"] == 2
    assert guided["val_macro_f1"] == guided["val_by_cycle"][guided["best_cycle"]]
    assert 0.0 <= results["0"][0]["val_macro_f1"] <= 1.0
    # Training time per cycle, and whether cycle 0 was trained here or copied: row 2 ran
    # first and trained it, row 1 (the same student) copied it from student.cache_dir.
    assert len(guided["train_s_by_cycle"]) == 2 and guided["train_s_by_cycle"][0] > 0
    assert guided["cycle0_cached"] is False and results["1"][0]["cycle0_cached"] is True
    assert guided["resumed"] is False
    # Every cycle's student on the test set (for the findings; the controller never sees it)
    assert len(guided["test_by_cycle"]) == 2
    assert guided["test_by_cycle"][guided["best_cycle"]] == round(guided["macro_f1"], 4)
    assert "| 2 | 1 | " in out.read_text(), "the by-cycle table lists row 2"

    # --fill gives a cell an earlier harness wrote the fields it lacks, from its run
    cell_path = next((tmp_path / "results").glob("*/row2-seed0.json"))
    cell = json.loads(cell_path.read_text())
    old = {k: v for k, v in cell["result"].items()
           if k not in ("test_by_cycle", "train_s_by_cycle", "cycle0_cached", "resumed")}
    cell_path.write_text(json.dumps({**cell, "result": {**old, "wall_s": 123.0}}))
    assert main(["--rows", "2", "--seeds", "0", "--fill", *small]) == 0
    assert "row 2, seed 0: filled from its run" in capsys.readouterr().out
    filled = json.loads(cell_path.read_text())
    assert filled["result"]["test_by_cycle"] == guided["test_by_cycle"]
    assert filled["result"]["wall_s"] == 123.0 and filled["finished"] == cell["finished"]
    row2 = next(line for line in table if line.startswith("| 2 | PGKD")).split(" | ")
    assert row2[6] == f"{guided['val_macro_f1']:.3f}", "the table shows it beside the test"
    assert not row2[-1].endswith("† |"), "row 2 trained its own cycle 0"
    row1 = next(line for line in table if line.startswith("| 1 | seed only"))
    assert row1.endswith(" † |"), "row 1's cycle 0 was copied: its time is another row's"


def _cells(**rows: list[tuple[int, float, int]]) -> dict[int, list[dict[str, object]]]:
    """Synthetic results: row → [(seed, macro-F1, examples added)]."""
    return {int(k[1:]): [{"seed": seed, "macro_f1": f1, "added": added}
                         for seed, f1, added in cells] for k, cells in rows.items()}


def test_targets_are_always_listed_and_checked_on_shared_seeds() -> None:
    from bench.quality.render import targets

    text = "\n".join(targets({}))
    assert text.count("**not checked**") == 6, "every target is listed, even with no rows"

    got = targets(_cells(r0=[(0, 0.92, 9803)], r1=[(0, 0.80, 0), (1, 0.82, 0)],
                         r2=[(0, 0.90, 1200), (1, 0.95, 1200)]))
    first = next(line for line in got if line.startswith("- (2) closes"))
    # seed 0 only (row 0 has no seed 1): (0.90 - 0.80) / (0.92 - 0.80) = 83%
    assert "(2) closes 83%" in first and "on seed 0 — one seed: indicative" in first
    assert first.endswith("**met**.")

    over = targets(_cells(r0=[(0, 0.92, 9803)], r1=[(0, 0.80, 0)], r2=[(0, 0.91, 2000)]))
    assert "2,000 added, over 1,600" in over[4] and over[4].endswith("**missed**.")

    # (0) below (1) and (2) below (1): two negatives must not make a "met"
    upside = targets(_cells(r0=[(0, 0.80, 9803)], r1=[(0, 0.81, 0)], r2=[(0, 0.79, 800)]))
    assert "**not checkable**" in upside[4] and "met" not in upside[4]


def test_the_labelling_targets_are_judged_on_their_rows() -> None:
    """(10) against the gap, against (9), and per teacher token against (2)."""
    from bench.quality.render import targets, tokens_per_point

    cells = _cells(r0=[(0, 0.92, 9803), (1, 0.92, 9803)], r1=[(0, 0.80, 0), (1, 0.80, 0)],
                   r2=[(0, 0.85, 1600), (1, 0.85, 1600)], r9=[(0, 0.88, 1600), (1, 0.87, 1600)],
                   r10=[(0, 0.90, 1600), (1, 0.91, 1600)])
    for seed_cells, tokens in ((cells[2], 500_000), (cells[10], 60_000), (cells[9], 60_000)):
        for cell in seed_cells:
            cell["tokens"] = tokens
    got = "\n".join(targets(cells))
    assert ("(10) closes 87% ((1) 0.800, (10) 0.905, (0) 0.920) on seeds 0, 1 — two seeds of "
            "three: indicative, not a verdict: **met**") in got
    # stds (n - 1): (10) 0.00707, (9) 0.00707; the bar 0.0141; (10) - (9) = +0.030
    assert ("(10) − (9) = +0.030 against 0.014 on seeds 0, 1 — two seeds of three: "
            "indicative, not a verdict: **met**") in got
    # (2): 500k / 5 points = 100,000; (10): 60k / 10 and 60k / 11 points
    assert tokens_per_point(cells, 2) == pytest.approx([100_000.0, 100_000.0])
    assert "(10) 5,727 against (2) 100,000 tokens per point (6%)" in got and \
        "**met**" in got.split("tokens per point (6%)")[1]
    lost = _cells(r1=[(0, 0.80, 0)], r10=[(0, 0.78, 1600)])
    lost[10][0]["tokens"] = 1000
    assert tokens_per_point(lost, 10) == [], "no gain: no tokens per point"


def test_the_guided_against_unguided_target_needs_two_seeds_and_beats_twice_the_std() -> None:
    from bench.quality.render import targets

    one = targets(_cells(r2=[(0, 0.86, 1600)], r4=[(0, 0.84, 1600), (1, 0.85, 1600)]))
    line = next(x for x in one if x.startswith("- (2) beats (4)"))
    assert "**not checked**" in line and "(2) − (4) = +0.020 on seed 0" in line
    # stds: (2) 0.01 and (4) 0.005 (sample, n - 1); the bar is 0.020
    won = targets(_cells(r2=[(0, 0.86, 1), (1, 0.87, 1), (2, 0.88, 1)],
                         r4=[(0, 0.845, 1), (1, 0.85, 1), (2, 0.855, 1)]))
    line = next(x for x in won if x.startswith("- (2) beats (4)"))
    assert "(2) − (4) = +0.020 against 0.020" in line and line.endswith("**missed**.")
    won = targets(_cells(r2=[(0, 0.87, 1), (1, 0.88, 1), (2, 0.89, 1)],
                         r4=[(0, 0.845, 1), (1, 0.85, 1), (2, 0.855, 1)]))
    line = next(x for x in won if x.startswith("- (2) beats (4)"))
    assert "on seeds 0, 1, 2:" in line and line.endswith("**met**.")
    rationale = targets(_cells(r2=[(0, 0.86, 1)], r7=[(0, 0.855, 1)]))
    line = next(x for x in rationale if x.startswith("- (7)"))
    assert "(7) − (2) = -0.005" in line and line.endswith("**missed**.")


def test_each_row_meets_the_guided_row_on_the_seeds_both_measured() -> None:
    """A row measured at fewer seeds than (2) is compared with (2)'s cells of those seeds, not
    with (2)'s mean over all of its seeds; rows 0 and 1 get no validation difference."""
    from bench.quality.render import against_guided

    def cells(*got: tuple[int, float, float]) -> list[dict[str, object]]:
        return [{"seed": s, "macro_f1": t, "val_macro_f1": v} for s, t, v in got]

    assert against_guided({5: cells((0, 0.84, 0.89))}) == [], "nothing to meet without (2)"
    results = {
        1: cells((0, 0.80, 0.77), (1, 0.78, 0.70)),
        2: cells((0, 0.85, 0.90), (1, 0.84, 0.86), (2, 0.80, 0.91)),
        5: cells((0, 0.84, 0.89)),
        4: cells((0, 0.86, 0.85), (1, 0.83, 0.80), (3, 0.99, 0.99)),
    }
    lines = against_guided(results)
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| (")}
    # (2)'s mean over its three seeds is 0.830; row 5 meets its seed-0 cell (0.85) alone
    assert rows["| (5) − (2)"] == ("| (5) − (2) | guided without hard negatives | 0 | -0.010 "
                                   "| -0.010 | — | -0.010 |")
    # seed 3 has no (2) cell: left out; differences +0.010 and -0.010, std 0.014
    assert rows["| (4) − (2)"].endswith("| 0, 1 | +0.010, -0.010 | +0.000 ± 0.014 | — | "
                                        "-0.055 ± 0.007 |")
    assert rows["| (1) − (2)"].endswith("| 0, 1 | -0.050, -0.060 | -0.055 ± 0.007 | — | — |")
    assert list(rows) == ["| (1) − (2)", "| (4) − (2)", "| (5) − (2)"], "in row order, no (2)"

    # with every cycle scored on test, cycles 1.. that both ran are averaged seed by seed:
    # seed 0 (0.84 + 0.86) / 2 − (0.85 + 0.83) / 2 = +0.010; seed 1 ran one cycle against
    # (2)'s two, so only cycle 1 counts: 0.80 − 0.83 = −0.030; cycle 0 never counts
    for seed, by_cycle in ((0, [0.80, 0.85, 0.83]), (1, [0.70, 0.83, 0.99]),
                           (2, [0.70, 0.80, 0.80])):
        results[2][seed]["test_by_cycle"] = by_cycle
    results[4][0]["test_by_cycle"] = [0.10, 0.84, 0.86]
    results[4][1]["test_by_cycle"] = [0.10, 0.80]
    results[1][0]["test_by_cycle"] = [0.80]
    rows = {line.split(" | ")[0]: line for line in against_guided(results)
            if line.startswith("| (")}
    assert rows["| (4) − (2)"].endswith("| +0.000 ± 0.014 | -0.010 ± 0.028 | "
                                        "-0.055 ± 0.007 |")
    assert rows["| (5) − (2)"].endswith("| -0.010 | — | -0.010 |"), "no cycles: no reading"
    assert rows["| (1) − (2)"].endswith("| — | — |"), "row 1 ran no generating cycle"


def test_the_notes_follow_the_settings() -> None:
    from bench.quality.render import notes
    from bench.quality.study import parser

    args = parser().parse_args(["--no-warm-start", "--patience", "5", "--seed-size", "80"])
    text = "\n".join(notes(args, {1: [{"seed": 0, "machine": {"cpus": 16, "cuda": "H200",
                                                                "torch": "2.13.0"}}]}))
    assert "Every cycle trains its student from MiniLM" in text and "after 5 epochs" in text
    assert "same 16 validation examples" in text and "H200, 16 CPUs, torch 2.13.0" in text
    assert "warm starts keep" not in text


def test_unguided_cycles_keep_adding_new_texts(corpus: Path) -> None:
    """Replayed without training (bench.quality.novelty): four unguided cycles add mostly new
    texts. On Banking77 (77 labels, ~117 pool texts a label) the study's 400 a cycle ask ~4.4 %
    of a label's pool each cycle; before the planner rotated few-shot examples and the sim drew
    from a wider window, they added 965 of 1,600 (cycle 4: 109 of 400). The tests' corpus has 12
    labels and ~237 pool texts a label, so the same share is 120 a cycle; the bounds keep the
    Banking77 test's proportions (every cycle over 62.5 % new, over 81 % in all)."""
    from bench.quality.novelty import replay

    rows = replay(corpus, "unguided", cycles=4, per_cycle=120, per_request=10,
                  seed_size=1000, seed=0)
    assert [r["returned"] for r in rows] == [120] * 4
    assert rows[0]["new"] == 120 and all(r["new"] > 75 for r in rows)
    assert sum(r["new"] for r in rows) > 390


def test_a_rationale_run_keeps_its_rationale_quality_and_teacher_fit(tmp_path: Path) -> None:
    """Row 7's cell keeps how good its rationales were and how well the white-box teacher
    fit the seed, and the table shows both; a run without rationales adds nothing."""
    from bench.quality.render import rationales
    from bench.quality.runner import rationale_summary
    from storage.store import ShardStore

    store = ShardStore(str(tmp_path / "store"))
    assert rationale_summary(store, "row2-seed0") == {}
    quality = {"method": "input_x_gradient", "rationale_words_mean": 2.565,
               "deletion": {"topk_drop": 0.287, "random_drop": 0.322, "topk_wins": 0.349},
               "label_overlap": {"hit_rate": 0.657}}
    store.write_json("row7-seed0", "attribution_quality.json", quality)
    store.write_json("row7-seed0", "teacher/training_state.json",
                     {"val_losses": [4.15, 3.84, 3.54], "best_epoch": 3, "epochs_run": 3,
                      "train_seconds": 101.5})
    got = rationale_summary(store, "row7-seed0")
    assert got["rationale_quality"] == quality
    assert got["teacher_fit"] == {"epochs_run": 3, "best_epoch": 3, "best_val_loss": 3.54,
                                  "train_s": 101.5}

    assert rationales({2: [{"seed": 0}]}, 77) == []
    lines = rationales({7: [{"seed": 0, **got}]}, 77)
    assert "chance: ln 77 = 4.34" in lines[1]
    assert lines[-1] == ("| 7 | 0 | input_x_gradient | 2.56 | 0.287 | 0.322 | 35% | 66% | "
                         "3.5400 (epoch 3 of 3) |")


def test_a_steer_fraction_names_its_own_protocol_and_says_so() -> None:
    """--steer-fraction: the generating rows get their own protocol (rows 0 and 1 keep theirs;
    the protocols measured before the option keep their names), and the table says which
    validation texts select."""
    from bench.quality.render import notes, table
    from bench.quality.study import ROWS, base_spec, parser, protocol, protocol_id, row_settings

    plain, split = parser().parse_args([]), parser().parse_args(["--steer-fraction", "0.5"])
    # ebc17e772e until prompt layout 2 (its cells are the committed docs/quality.md's)
    assert protocol_id(protocol(plain)) == "bc3d449f7d"
    assert protocol_id(protocol(split)) != protocol_id(protocol(plain))
    assert protocol(split, generating=False) == protocol(plain, generating=False)
    spec = base_spec(split, "train.csv", "test.csv", 0, Path("/tmp/store"))
    assert spec["dataset"]["steer_fraction"] == 0.5
    assert "steer_fraction" not in base_spec(plain, "a", "b", 0, Path("/tmp/s"))["dataset"]
    # row 1, the seed-only run of the system, is measured without the split, as row 0
    rows = {r.key: r for r in ROWS}
    assert "steer_fraction" not in row_settings(split, rows[1])["dataset"]
    assert row_settings(split, rows[1]) == row_settings(plain, rows[1])
    cold = parser().parse_args(["--no-warm-start", "--max-cycles", "2"])
    assert row_settings(cold, rows[1]) == row_settings(plain, rows[1]), "shared by protocols"
    assert row_settings(cold, rows[2]) != row_settings(plain, rows[2])
    assert row_settings(split, rows[2])["dataset"]["steer_fraction"] == 0.5
    for bad in ("1.0", "-0.1", "half"):
        with pytest.raises(SystemExit):
            parser().parse_args(["--steer-fraction", bad])
    text = table({}, split, "cmd", "p", "b") + "\n".join(notes(split, {}))
    assert "`dataset.steer_fraction: 0.5` of it steers generation alone" in text
    assert "not row 1's" in text
    assert "`dataset.steer_fraction: " not in table({}, plain, "cmd", "p", "b")


def test_a_cell_measured_with_other_row_settings_is_left_out(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    from bench.quality.results import load_results, save_cell
    from bench.quality.study import ROWS, parser, row_settings

    args = parser().parse_args([])
    rows = {r.key: r for r in ROWS}
    settings = {k: row_settings(args, r) for k, r in rows.items()}
    assert settings[7]["attribution"]["method"] == "saliency"
    assert settings[7] != settings[2] and "max_cycles" in settings[1]["loop"]
    result = {"macro_f1": 0.85}
    save_cell(tmp_path, {}, rows[2], 0, result, settings[2])
    stale = {**settings[7], "attribution": {**settings[7]["attribution"],
                                            "method": "input_x_gradient"}}
    save_cell(tmp_path, {}, rows[7], 0, result, stale)
    save_cell(tmp_path, {}, rows[7], 1, result)  # a cell from before cells recorded them
    got = load_results(tmp_path, settings=settings)
    assert [r["seed"] for r in got[2]] == [0] and [r["seed"] for r in got[7]] == [1]
    assert "row7-seed0.json was measured with other row settings" in capsys.readouterr().err
    assert [r["seed"] for r in load_results(tmp_path)[7]] == [0, 1], "no settings: all cells"
