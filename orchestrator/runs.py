"""Runs in storage: creating one (validate, split, seed), its manifest, and its progress.

Storage is the source of truth. A run exists once its ``manifest.json`` is committed, and that
happens last: an invalid spec or dataset raises before anything is written.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from distillq import paths
from distillq.errors import InvalidInputError
from distillq.manifest import Manifest, read_manifest, save_manifest
from distillq.spec import RunSpec, spec_to_dict, validate_run_id
from orchestrator.datasets import Labelled, load_and_split
from orchestrator.unlabelled import check_unlabelled, write_unlabelled
from storage.schemas import EXAMPLES
from storage.store import ShardStore

STORAGE_ROOTS_ENV = "DISTILLQ_STORAGE_ROOTS"


def check_run_id(run_id: str) -> str:
    """``validate_run_id`` for command-line input: InvalidInputError (exit code 2)."""
    try:
        return validate_run_id(run_id)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def check_storage(uri: str, roots: str | None = None, what: str = "storage") -> str:
    """Refuse a storage URI outside the allowed roots.

    ``roots`` (default: ``$DISTILLQ_STORAGE_ROOTS``): comma-separated folders or URI prefixes a
    deployment allows specs to name (unset: any). Local paths are compared after resolving
    symlinks and ``..``; URIs must start with an allowed prefix and may not contain ``..``.
    """
    allowed = [r.strip() for r in (roots if roots is not None
                                    else os.environ.get(STORAGE_ROOTS_ENV, "")).split(",")
               if r.strip()]
    if not allowed:
        return uri
    if "://" in uri and not uri.startswith("file://"):
        ok = ".." not in uri.split("?")[0].split("/") and any(
            uri.rstrip("/") == r.rstrip("/") or uri.startswith(r.rstrip("/") + "/")
            for r in allowed if "://" in r)
    else:
        path = Path(uri.removeprefix("file://")).expanduser().resolve()
        ok = any(path.is_relative_to(Path(r.removeprefix("file://")).expanduser().resolve())
                 for r in allowed if "://" not in r or r.startswith("file://"))
    if not ok:
        raise InvalidInputError(f"{what} {uri!r} is outside the allowed roots "
                                f"({STORAGE_ROOTS_ENV}={','.join(allowed)})")
    return uri


def check_cache_dir(path: str) -> str:
    """``student.cache_dir``: a local folder (workers copy students in and out of it), inside
    the allowed storage roots like the storage itself."""
    if "://" in path and not path.startswith("file://"):
        raise InvalidInputError(f"student.cache_dir {path!r} must be a local folder (a shared "
                                "mount when workers run on several machines), not a URI")
    local = Path(path.removeprefix("file://")).expanduser()
    if local.exists() and not local.is_dir():
        raise InvalidInputError(f"student.cache_dir {path!r} exists and is not a folder")
    return check_storage(path, what="student.cache_dir")


def new_run_id(spec: RunSpec) -> str:
    if spec.run_id:
        return spec.run_id
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in spec.name)[:24] or "run"
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def examples_table(data: Labelled, run_id: str, cycle: int, source: str, job_id: str,
                   id_prefix: str) -> pa.Table:
    n = len(data)
    cols: dict[str, list[Any]] = {
        "id": [f"{id_prefix}-{i}" for i in data.ids],
        "run_id": [run_id] * n,
        "cycle": [cycle] * n,
        "source": [source] * n,
        "label": list(data.labels),
        "text": list(data.texts),
        "job_id": [job_id] * n,
        "teacher_model": [""] * n,
        "prompt_id": [""] * n,
        "input_tokens": [0] * n,
        "output_tokens": [0] * n,
        "latency_s": [0.0] * n,
        "cost": [0.0] * n,
    }
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in EXAMPLES}, schema=EXAMPLES)


def create_run(spec: RunSpec, store: ShardStore | None = None) -> str:
    """Validate the data, write the seed / val / test / pool tables, then the manifest."""
    run_id = check_run_id(new_run_id(spec))
    check_storage(spec.storage if store is None else store.uri)
    if spec.student.cache_dir is not None:
        check_cache_dir(spec.student.cache_dir)
    store = store or ShardStore(spec.storage)
    if store.read_json(run_id, paths.MANIFEST) is not None:
        raise InvalidInputError(f"run {run_id!r} already exists in {spec.storage}")
    split = load_and_split(spec.dataset)  # raises InvalidInputError before any write
    unlabelled = check_unlabelled(spec.dataset, split) if spec.labelling.share > 0 else None
    store.write_table(run_id, "val", examples_table(split.val, run_id, 0, "seed", "val", "val"))
    store.write_table(run_id, "pool", examples_table(split.pool, run_id, 0, "pool", "pool", "pool"))
    if split.test is not None:
        store.write_table(run_id, "test",
                          examples_table(split.test, run_id, 0, "test", "test", "test"))
    seed = examples_table(split.seed_train, run_id, 0, "seed", "seed", "seed")
    store.commit(run_id, 0, "generated", "seed", seed)
    counts = {"seed_train": len(split.seed_train), "val": len(split.val),
              "pool": len(split.pool), "test": len(split.test or [])}
    if unlabelled is not None:
        keep, found = unlabelled
        write_unlabelled(store, run_id, spec.dataset, split, keep, found,
                         spec.labelling.shard_rows)
        counts |= {"unlabelled": found.kept, "unlabelled_shards": found.shards,
                   **{f"unlabelled_dropped_{k}": v for k, v in found.dropped.items()}}
    save_manifest(store, Manifest(
        run_id=run_id, spec=spec_to_dict(spec), taxonomy=split.taxonomy, created_at=time.time(),
        counts=counts))
    return run_id


def load_manifest(store: ShardStore, run_id: str) -> Manifest:
    """The manifest of a run named on the command line (InvalidInputError: no such run)."""
    manifest = read_manifest(store, check_run_id(run_id))
    if manifest is None:
        raise InvalidInputError(f"no run {run_id!r} in {store.root}")
    return manifest


def unrecorded(live: Mapping[str, float], paid: Mapping[str, float]) -> dict[str, float]:
    """What the run's live counter in Redis (``read_spend``: every answer as it came back)
    holds beyond what storage recorded: answers of jobs still in flight, or of attempts whose
    record was lost (a worker killed mid-job)."""
    tokens = float(live.get("tokens_in", 0.0)) + float(live.get("tokens_out", 0.0))
    recorded = float(paid.get("tokens_in", 0.0)) + float(paid.get("tokens_out", 0.0))
    return {"tokens": max(0.0, tokens - recorded),
            "cost": max(0.0, float(live.get("cost", 0.0)) - float(paid.get("cost", 0.0)))}


def summarize(store: ShardStore, run_id: str,
              live: Mapping[str, float] | None = None) -> dict[str, Any]:
    """What ``status`` shows: per-cycle metric and spend, the status and the final choice;
    with ``live`` (the run's counter in Redis), also the spend storage has not recorded yet."""
    manifest = load_manifest(store, run_id)
    cycles = []
    for d in manifest.decisions:
        stats = cycle_stats(store, run_id, d.cycle) if d.cycle else []
        wasted = failed_attempts(store, run_id, d.cycle) if d.cycle else []
        cycles.append({"cycle": d.cycle, "value": d.value, "action": d.action,
                       "examples": sum(int(s.get("examples", 0) or 0) for s in stats),
                       "cost": sum(float(s.get("cost", 0) or 0) for s in stats + wasted),
                       "wasted_cost": sum(float(s.get("cost", 0) or 0) for s in wasted)})
    final = manifest.final.model_dump() if manifest.final is not None else None
    # the cycle it is in (or stopped in) has paid too, decided or not
    split = spend_split(store, run_id, manifest.cycle)
    spend = {"recorded_in": "storage: committed jobs and failed attempts",
             **{f"{part}_{key}": round(split[part][key], 6)
                for part in ("paid", "kept", "wasted") for key in SPEND_FIELDS}}
    if live is not None:
        extra = unrecorded(live, split["paid"])
        spend |= {"in_flight_or_unrecorded_tokens": round(extra["tokens"], 6),
                  "in_flight_or_unrecorded_cost": round(extra["cost"], 6)}
    out = {"run_id": run_id, "status": manifest.status,
           "metric": manifest.spec["loop"]["metric"], "cycles": cycles, "final": final,
           "stop_reason": manifest.stop_reason, "teacher": manifest.spec["teacher"]["kind"],
           "teacher_simulated": simulated(manifest.spec, split["paid"]),
           "spend": spend}
    if manifest.status in ("failed", "cancelled"):
        out["causes"] = failure_causes(store, manifest)
    test = store.read_json(run_id, paths.TEST_RESULT)
    if isinstance(test, dict):
        out["test"] = {k: test.get(k) for k in ("cycle", "macro_f1", "accuracy")}
    if manifest.spec.get("labelling", {}).get("share", 0) > 0:
        out["labelling"] = {"strategy": manifest.spec["labelling"]["strategy"],
                            "unlabelled": manifest.counts.get("unlabelled"),
                            "cycles": labelling_rows(store, run_id, manifest.cycle)}
    return out


def simulated(spec: dict[str, Any], paid: Mapping[str, float] | None = None) -> bool:
    """Whether the run's teacher was, wholly or partly, the simulation: by its spec
    (``teacher.kind: sim``), or by its answers (``paid``, a ``spend_split`` part: its
    ``requests_simulated``, the simulation reached as a real server)."""
    return spec["teacher"]["kind"] == "sim" or float((paid or {}).get("requests_simulated",
                                                                       0)) > 0


SPEND_FIELDS = ("tokens_in", "tokens_out", "tokens_cached", "cost", "requests",
                "requests_simulated", "requests_real")  # answered by the sim, by another


def spend(store: ShardStore, run_id: str, upto_cycle: int) -> dict[str, float]:
    """Teacher tokens, cost and requests paid for in cycles 1..``upto_cycle``, as storage
    records them: committed jobs and failed attempts alike (``spend_split`` tells them
    apart). Answers still in flight are only on the run's counter in Redis."""
    return spend_split(store, run_id, upto_cycle)["paid"]


def spend_split(store: ShardStore, run_id: str,
                upto_cycle: int) -> dict[str, dict[str, float]]:
    """``kept``: what the committed jobs paid (their shards hold its answers, malformed
    re-asks and rejected examples included); ``wasted``: what failed attempts paid, whose
    answers were thrown away; ``paid``: both."""
    kept = dict.fromkeys(SPEND_FIELDS, 0.0)
    wasted = dict.fromkeys(SPEND_FIELDS, 0.0)
    for cycle in range(1, upto_cycle + 1):
        for into, rows in ((kept, cycle_stats(store, run_id, cycle)),
                           (wasted, failed_attempts(store, run_id, cycle))):
            for stats in rows:
                for key in SPEND_FIELDS:
                    into[key] += float(stats.get(key, 0) or 0)
    return {"kept": kept, "wasted": wasted,
            "paid": {k: kept[k] + wasted[k] for k in SPEND_FIELDS}}


def cycle_stats(store: ShardStore, run_id: str, cycle: int) -> list[dict[str, Any]]:
    """The statistics of the cycle's committed generate jobs."""
    out = []
    for job_id in store.list_jobs(run_id, cycle, "generated"):
        stats = store.read_json(run_id, paths.jobstats(cycle, job_id))
        if stats:
            out.append(stats)
    return out


def failed_attempts(store: ShardStore, run_id: str, cycle: int) -> list[dict[str, Any]]:
    """What the cycle's failed generate attempts paid for (``paths.failed_attempt``)."""
    folder = paths.failed_attempts_dir(cycle)
    out = []
    for name in store.list_names(run_id, folder):
        stats = store.read_json(run_id, f"{folder}/{name}") if name.endswith(".json") else None
        if isinstance(stats, dict):
            out.append(stats)
    return out


def reopen_failed_jobs(store: ShardStore, run_id: str, cycle: int,
                       kinds: tuple[str, ...] | None = None) -> list[str]:
    """Give the permanently failed jobs of ``cycle`` (of these ``kinds``, default all) another
    chance (``orchestrator resume``): each ``cycle=<c>/failed/<name>.json`` is copied to
    ``paths.failed_before_resume`` (kept for the record) and then removed, so the
    controller sends the job again. Safe to repeat after a crash between the copy and the
    removal. Returns the names reopened."""
    folder = paths.failed_dir(cycle)
    names = [n for n in store.list_names(run_id, folder) if n.endswith(".json")
             and (kinds is None or n.startswith(tuple(f"{k}-" for k in kinds)))]
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for name in names:
        record = store.read_json(run_id, f"{folder}/{name}")
        if record is not None:
            store.write_json(run_id, paths.failed_before_resume(
                cycle, name.removesuffix(".json"), stamp), record)
        store.delete_json(run_id, f"{folder}/{name}")
    return [n.removesuffix(".json") for n in names]


FAILURES_READ = 500  # failure records read per cycle to name a run's causes


def failure_causes(store: ShardStore, manifest: Manifest, top: int = 3) -> list[str]:
    """Why a run that did not finish stopped, from its failure records (in the cycle it
    stopped in, and the run-level jobs: the teacher's preparation, the test of the best
    cycle): one line per distinct error, most frequent first, with its count, kind and the
    error as the worker recorded it (a server's own message included)."""
    cycles = {manifest.cycle, 0}
    if manifest.final is not None:
        cycles.add(manifest.final.best_cycle)
    causes: dict[tuple[str, int, str], int] = {}
    for cycle in sorted(cycles):
        folder = paths.failed_dir(cycle)
        for name in store.list_names(manifest.run_id, folder)[:FAILURES_READ]:
            record = store.read_json(manifest.run_id, f"{folder}/{name}") if \
                name.endswith(".json") else None
            if isinstance(record, dict):
                error = " ".join(str(record.get("error", "?")).split())[:300]
                key = (str(record.get("kind", "?")), cycle, error)
                causes[key] = causes.get(key, 0) + 1
    ranked = sorted(causes.items(), key=lambda item: (-item[1], item[0]))
    lines = [f"{n} {kind} job{'s' if n > 1 else ''} of cycle {cycle} failed: {error}"
             for (kind, cycle, error), n in ranked[:top]]
    if len(ranked) > top:
        lines.append(f"... and {sum(n for _, n in ranked[top:])} more failures "
                     f"({paths.failed_dir(manifest.cycle)}/ in the run's storage)")
    return lines


def labelling_rows(store: ShardStore, run_id: str, upto_cycle: int) -> list[dict[str, Any]]:
    """``labelling_row`` of every cycle 1..``upto_cycle`` that selected texts to label."""
    rows = (labelling_row(store, run_id, cycle) for cycle in range(1, upto_cycle + 1))
    return [row for row in rows if row is not None]


def rejects_text(rejected: dict[str, int]) -> str:
    """Rejects by reason, ``reason count, ...`` in name order ("" for none)."""
    return ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))


def labelling_row(store: ShardStore, run_id: str, cycle: int) -> dict[str, Any] | None:
    """For a cycle that labelled unlabelled texts: the selection (strategy, texts scored and
    chosen) and what the labelling jobs did (texts labelled, rejected by reason, answers per
    text, mean agreement, requests, tokens, cost), from storage alone; None for a cycle that
    selected nothing (yet)."""
    chosen = store.read_json(run_id, paths.selection(cycle))
    if chosen is None:
        return None
    stats = [s for s in cycle_stats(store, run_id, cycle) if s.get("kind") == "label"]
    wasted = [s for s in failed_attempts(store, run_id, cycle) if s.get("kind") == "label"]
    rejects: Counter[str] = Counter()
    for s in stats + wasted:
        rejects.update(s.get("rejects_by_reason") or {})
    agreement = [float(s["agreement"]) for s in stats  # one answer a text: no agreement
                 if s.get("agreement") is not None and int(s.get("self_consistency", 1)) > 1]
    return {
        "cycle": cycle, "strategy": chosen.get("strategy"), "scored": chosen.get("scored"),
        "selected": len(chosen.get("texts", [])),
        "labelled": sum(int(s.get("examples", 0) or 0) for s in stats),
        "rejected": dict(rejects), "answers": max(
            (int(s.get("self_consistency", 1)) for s in stats), default=1),
        "agreement": round(sum(agreement) / len(agreement), 4) if agreement else None,
        **{k: sum(float(s.get(k, 0) or 0) for s in stats + wasted)
           for k in ("requests", "tokens_in", "tokens_out", "cost")}}
