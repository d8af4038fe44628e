"""How many new texts each cycle's teacher answers add, without training anything.

The quality study's budget is examples asked of the teacher; an answer that repeats a text
the training set already holds adds nothing. This replays a generation mode's cycles through
the real planner, the real prompts and the simulated teacher's own answers (``Simulator``,
keyed per request as the sim serves them, read back by the job's parser) on Banking77's seed
split, and counts the texts each cycle adds. No student is trained, so guided modes are replayed with an
empty report (no mined examples): their prompts are guided by the few-shot examples only.

    python -m bench.quality.novelty --mode unguided --cycles 4 --examples-per-cycle 400

Seconds on a CPU. The simulated teacher is a simulation: an oracle pool of real labelled
texts, bounded by the pool (about 117 texts a class here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distillq.jobs import request_id
from distillq.spec import parse_spec
from orchestrator.datasets import load_and_split
from orchestrator.planning import Planner
from workers.teachers.openai import request_seed
from workers.teachers.parsing import extract_items, normalise
from workers.teachers.prompts import job_prompts
from workers.teachers.sim import SIM_VERSION, SimOptions, Simulator, request_key
from workers.teachers.simpool import Pool

BANKING77 = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77"


def replay(data: Path, mode: str, cycles: int, per_cycle: int, per_request: int,
           seed_size: int, seed: int) -> list[dict[str, int]]:
    """Per cycle: texts the teacher returned, and how many of them were new."""
    spec = parse_spec({
        "run_id": "novelty", "storage": "/nonexistent",
        "dataset": {"train": str(data / "train.csv"), "test": str(data / "test.csv"),
                    "label_column": "category", "seed_size": seed_size, "sample_seed": seed},
        "teacher": {"kind": "sim", "model": "distillq-sim", "sim": {"seed": seed}},
        "generation": {"mode": mode, "examples_per_cycle": per_cycle,
                       "examples_per_request": per_request}})
    split = load_and_split(spec.dataset)
    taxonomy = list(split.taxonomy)
    sim = Simulator(Pool(list(split.pool.texts), list(split.pool.labels)), SimOptions(seed=seed))
    fewshot = [{"text": t, "label": lab}
               for t, lab in zip(split.seed_train.texts, split.seed_train.labels, strict=True)]
    planner = Planner(spec.generation, taxonomy, fewshot, seed=spec.dataset.sample_seed)
    have = {normalise(t) for t in split.seed_train.texts}
    out = []
    for cycle in range(1, cycles + 1):
        returned = []
        for job in planner.plan(cycle, {}):
            for i, prompt in enumerate(job_prompts(spec, job, taxonomy)):
                key = request_key(prompt.messages, request_seed(request_id(job["job_id"], i)))
                answer = sim.content(key, prompt.messages)
                returned += [normalise(str(x["text"])) for x in extract_items(answer)]
        new = set(returned) - have
        have |= new
        out.append({"cycle": cycle, "returned": len(returned), "new": len(new)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality.novelty", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(BANKING77))
    p.add_argument("--mode", default="unguided", choices=["unguided", "sharded", "single"])
    p.add_argument("--cycles", type=int, default=4)
    p.add_argument("--examples-per-cycle", type=int, default=400)
    p.add_argument("--examples-per-request", type=int, default=10)
    p.add_argument("--seed-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (Path(args.data) / "train.csv").is_file():
        p.error(f"--data: {args.data} has no train.csv (Banking77's layout)")
    rows = replay(Path(args.data), args.mode, args.cycles, args.examples_per_cycle,
                  args.examples_per_request, args.seed_size, args.seed)
    print(f"simulated teacher version {SIM_VERSION}, mode {args.mode}, seed {args.seed}")
    for row in rows:
        print(f"cycle {row['cycle']}: {row['returned']} returned, {row['new']} new")
    print(f"total: {sum(r['new'] for r in rows)} new of {sum(r['returned'] for r in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
