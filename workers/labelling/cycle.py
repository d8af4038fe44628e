"""The score and select jobs of a cycle that labels unlabelled texts (``labelling.share``).

``score_shard``: the student of cycle c-1 — the one whose report steers cycle c — reads one
shard of the run's unlabelled texts (``cycle=0/unlabelled/u00000``, …) and commits, for each
text not labelled in an earlier cycle, its predicted class, the margin between its two most
probable classes and the entropy of its distribution (``cycle=<c>/scores/<shard>``); the
``candidates_factor × budget`` most uncertain of the shard also keep their embedding (with
the ``diverse`` strategy, which clusters them; the global most uncertain are among the shards' most
uncertain, so no text it could need is missing). One job per shard, on the train queue; a
shard already scored is not scored again, so a killed cycle resumes where it stopped.

``select_texts``: once every shard is scored, picks the cycle's ``label_budget`` texts
(``workers.labelling.selection``: the strategy, and with ``balance`` the generation quotas of
the last report over the predicted classes) and writes them, with their texts, to
``cycle=<c>/selection.json`` — the controller plans the cycle's labelling jobs from it.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillq import paths
from distillq.errors import PermanentError
from distillq.manifest import require_manifest
from distillq.quotas import class_quotas, label_budget, steering
from distillq.spec import RunSpec
from storage.schemas import SCORES
from storage.store import ShardStore
from workers.labelling.selection import Candidates, select, uncertainty

log = logging.getLogger(__name__)


def labelled_ids(store: ShardStore, run_id: str, upto_cycle: int) -> set[str]:
    """The unlabelled texts the teacher labelled in cycles 1..``upto_cycle``: the rows of
    each cycle's labelling jobs (its plan names them), not of its generation jobs."""
    out: set[str] = set()
    for cycle in range(1, upto_cycle + 1):
        plan = store.read_json(run_id, paths.plan(cycle)) or {}
        for job in plan.get("labelling", []):
            if store.has(run_id, cycle, "generated", job):
                out.update(store.read_shard(run_id, cycle, "generated", job)
                           .column("id").to_pylist())
    return out


def score_shard(spec: RunSpec, store: ShardStore, run_id: str, cycle: int, shard: str,
                workdir: Path | str) -> int:
    """Score one unlabelled shard with cycle ``cycle - 1``'s student (module docstring);
    the number of texts scored."""
    if store.has(run_id, cycle, "scores", shard):
        return store.read_shard(run_id, cycle, "scores", shard).num_rows
    from workers.training.evaluate import Classifier  # deferred: torch, transformers

    texts_t = store.read_shard(run_id, 0, "unlabelled", shard)
    done = labelled_ids(store, run_id, cycle - 1)
    if done:
        texts_t = texts_t.filter(pc.invert(pc.is_in(texts_t.column("id"),
                                                     pa.array(sorted(done), pa.string()))))
    folder = Path(workdir) / run_id / f"score-cycle={cycle}-{shard}"
    shutil.rmtree(folder, ignore_errors=True)
    if not store.get_dir(run_id, paths.student(cycle - 1), folder):
        raise PermanentError(f"run {run_id} has no committed student for cycle {cycle - 1}")
    clf = Classifier.load(folder, spec.student.device)
    diverse = spec.labelling.strategy == "diverse"  # the only strategy that clusters
    pred = clf.predict(texts_t.column("text").to_pylist(), embed=diverse)
    shutil.rmtree(folder, ignore_errors=True)
    margin, entropy = uncertainty(pred.probs) if len(pred.probs) else (np.zeros(0),) * 2
    margin = margin.astype(np.float32)  # as stored: selection ranks these very values
    keep = math.ceil(spec.labelling.candidates_factor
                     * label_budget(spec.generation, spec.labelling))
    top = set(np.argsort(margin, kind="stable")[:keep].tolist()) if diverse else set()
    embeddings = pred.embeddings
    table = pa.table({
        "id": texts_t.column("id"),
        "pred": [clf.labels[i] for i in pred.preds],
        "margin": margin, "entropy": entropy.astype(np.float32),
        "embedding": [embeddings[i].tolist() if embeddings is not None and i in top else None
                      for i in range(len(margin))],
    }, schema=SCORES)
    store.commit(run_id, cycle, "scores", shard, table)
    return table.num_rows


def select_texts(spec: RunSpec, store: ShardStore, run_id: str, cycle: int) -> dict[str, Any]:
    """Pick cycle ``cycle``'s texts to label and write ``selection.json`` (module docstring)."""
    done: dict[str, Any] | None = store.read_json(run_id, paths.selection(cycle))
    if done is not None:
        return done
    lab = spec.labelling
    scores = store.read_kind(run_id, cycle, "scores")
    budget = label_budget(spec.generation, lab)
    cands, rows = _candidates(scores, lab.strategy == "diverse")
    quotas = None
    if lab.balance:
        report = store.read_json(run_id, paths.eval_report(cycle - 1)) or {}
        taxonomy = require_manifest(store, run_id).taxonomy
        quotas = class_quotas(steering(report), taxonomy, spec.generation.class_floor, budget)
    chosen = [rows[i] for i in select(cands, budget, lab.strategy, quotas=quotas,
                                      factor=lab.candidates_factor,
                                      seed=spec.dataset.sample_seed * 1000 + cycle)]
    texts = _texts(store, run_id, {scores.column("id")[i].as_py() for i in chosen})
    picked = [{"id": scores.column("id")[i].as_py(), "text": texts[scores.column("id")[i].as_py()],
               "pred": scores.column("pred")[i].as_py(),
               "margin": round(float(scores.column("margin")[i].as_py()), 4)} for i in chosen]
    result = {"cycle": cycle, "strategy": lab.strategy, "budget": budget,
              "scored": scores.num_rows, "balance": lab.balance, "quotas": quotas,
              "texts": picked}
    store.write_json(run_id, paths.selection(cycle), result)
    log.info("run=%s cycle=%d selected %d of %d unlabelled texts (%s)", run_id, cycle,
             len(picked), scores.num_rows, lab.strategy)
    return result


def _candidates(scores: pa.Table, diverse: bool) -> tuple[Candidates, list[int]]:
    """The selection's candidates and, for each, its row in ``scores``: every scored text,
    or for ``diverse`` those that kept an embedding (the most uncertain)."""
    rows = list(range(scores.num_rows))
    if diverse:
        rows = [i for i, e in enumerate(scores.column("embedding").is_valid().to_pylist()) if e]
    sub = scores.take(pa.array(rows, pa.int64())) if diverse else scores
    embeddings = None
    if diverse and sub.num_rows:
        column = sub.column("embedding").combine_chunks()
        embeddings = column.flatten().to_numpy().astype(np.float32).reshape(sub.num_rows, -1)
    return Candidates(sub.column("id").to_pylist(), sub.column("pred").to_pylist(),
                      sub.column("margin").to_numpy().astype(np.float64),
                      sub.column("entropy").to_numpy().astype(np.float64), embeddings), rows


def _texts(store: ShardStore, run_id: str, ids: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    wanted = pa.array(sorted(ids), pa.string())
    for shard in store.list_jobs(run_id, 0, "unlabelled"):
        table = store.read_shard(run_id, 0, "unlabelled", shard)
        hit = table.filter(pc.is_in(table.column("id"), wanted))
        out.update(zip(hit.column("id").to_pylist(), hit.column("text").to_pylist(),
                       strict=True))
    return out
