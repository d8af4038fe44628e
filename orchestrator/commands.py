"""The CLI's commands, one function each (``cmd_<name>(args) -> exit code``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import redis
import yaml

from distillq import paths
from distillq.errors import EXIT_FAILED, InvalidInputError, ManifestError
from distillq.keys import INFLIGHT, RESENDS, RUNS_KEY, STARTED_KEY, TEACHER_URL_KEY
from distillq.manifest import TERMINAL, Manifest, read_manifest, save_manifest
from distillq.runstate import request_cancel
from distillq.spec import RunSpec, TeacherSpec, load_spec
from orchestrator.costplan import plan_costs
from orchestrator.driver import drive, serve
from orchestrator.embedded import LocalCluster, state_dir
from orchestrator.exporting import export
from orchestrator.metrics import start_metrics_server
from orchestrator.progress import Progress
from orchestrator.report import summary_lines, teacher_line, write_report
from orchestrator.runs import (
    check_run_id,
    check_storage,
    create_run,
    load_manifest,
    reopen_failed_jobs,
    summarize,
)
from orchestrator.tables import print_runs, print_status
from storage.store import ShardStore
from workers.app import app, configure
from workers.teachers.accounting import read_spend
from workers.teachers.preflight import preflight

log = logging.getLogger("distillq.cli")


def _redis_from_env(ping: bool = True) -> redis.Redis:
    """The shared Redis of ``$REDIS_URL``; with ``ping``, reached once before anything is
    written (the CLI turns an unreachable Redis into exit 3 with the address)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        raise InvalidInputError("REDIS_URL is not set: `submit`, `serve` and `resume` of a "
                                "served run talk to a shared Redis (or use `orchestrator run "
                                "SPEC`, which embeds one)")
    try:
        client = redis.Redis.from_url(url)
    except ValueError as exc:  # the message never includes a password
        raise InvalidInputError(f"REDIS_URL is not a Redis URL: {exc}") from None
    configure(url)
    if ping:
        client.ping()
    return client


def _store(args: argparse.Namespace) -> ShardStore:
    return ShardStore(check_storage(args.storage))


# ---- run / resume (embedded) --------------------------------------------------------------
def check_teacher(teacher: TeacherSpec, args: argparse.Namespace) -> None:
    """The pre-flight request (``workers.teachers.preflight``), for a real teacher whose spec
    asks for it, unless ``--no-preflight`` (a machine that cannot reach the teacher the
    workers will): TeacherUnavailableError before anything is written."""
    if teacher.kind == "openai" and teacher.preflight and not getattr(args, "no_preflight",
                                                                       False):
        print(preflight(teacher).line())


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    store = ShardStore(check_storage(spec.storage))
    check_teacher(spec.teacher, args)
    run_id = create_run(spec, store)
    print(f"run {run_id} created in {store.uri}")
    return _run_embedded(spec, store, run_id, quiet=args.quiet)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a run: a failed or cancelled one gets the failed jobs of its current cycle
    sent again (their records kept under ``failed-before-resume/``) and, under ``serve``, a
    fresh in-flight table; a done run is refused. Nothing is written before the manifest's
    spec parses, (with ``REDIS_URL``) Redis answers and a real teacher answers the
    pre-flight request."""
    store = _store(args)
    run_id = check_run_id(args.run_id)
    manifest = load_manifest(store, run_id)
    if manifest.status == "done":
        raise InvalidInputError(f"run {run_id} is done: there is nothing to resume "
                                f"(`orchestrator report {run_id}` writes its report)")
    changes = _teacher_changes(getattr(args, "teacher", []))
    if changes:
        if manifest.status not in ("failed", "cancelled"):
            raise InvalidInputError(f"run {run_id} is {manifest.status}: cancel it "
                                    f"(`orchestrator cancel {run_id}`) before changing its "
                                    "teacher")
        manifest.change_teacher(changes, time.time())  # in memory until the checks pass
    spec = manifest.run_spec()
    client = _redis_from_env() if os.environ.get("REDIS_URL") else None
    check_teacher(spec.teacher, args)
    if changes:
        print(f"run {run_id}: teacher settings changed: "
              + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
    if manifest.status in ("failed", "cancelled"):
        cycle = manifest.cycle
        reopened = reopen_failed_jobs(store, run_id, cycle)
        for earlier in range(cycle):  # the teacher (cycle 0) and the final test (best cycle)
            reopened += reopen_failed_jobs(store, run_id, earlier, ("prepare_teacher", "test"))
        if reopened:
            print(f"run {run_id}: {len(reopened)} failed job(s) will be sent again: "
                  f"{', '.join(sorted(reopened)[:5])}{' …' if len(reopened) > 5 else ''}")
        if client is not None:  # sends counted before the failure start again from zero
            client.delete(INFLIGHT.format(run_id=run_id), STARTED_KEY.format(run_id=run_id),
                          RESENDS.format(run_id=run_id))
        # only a stopped run's manifest is written: a running one may be mid-tick in a
        # controller that writes its own copy back (and a pending cancel must stay pending)
        manifest.reopen(time.time())
        save_manifest(store, manifest)
    if client is not None:
        client.hset(RUNS_KEY, run_id, store.uri)
        print(f"run {run_id} handed back to `orchestrator serve`")
        return 0
    return _run_embedded(spec, store, run_id, quiet=False)


def stop_flag() -> Callable[[], bool]:
    """A flag set by SIGTERM (SIGINT raises KeyboardInterrupt as usual)."""
    event = threading.Event()

    def handle(_signum: int, _frame: Any) -> None:
        event.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
    return event.is_set


def _teacher_changes(pairs: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs of ``resume --teacher`` (VALUE read as YAML)."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        field, sep, raw = pair.partition("=")
        field = field.strip().removeprefix("teacher.")
        if not sep or not field:
            raise InvalidInputError(f"--teacher {pair!r}: expected FIELD=VALUE, e.g. "
                                    "--teacher model=gpt-4o-mini")
        try:
            changes[field] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"--teacher {pair!r}: the value is not YAML: "
                                    f"{exc}") from None
    return changes


def _run_embedded(spec: RunSpec, store: ShardStore, run_id: str, quiet: bool) -> int:
    local = state_dir(spec.storage, run_id)
    cluster = LocalCluster(local, os.environ.get("REDIS_URL"))
    sim: subprocess.Popen[bytes] | None = None
    try:
        url = cluster.start()
        app = configure(url)
        client = redis.Redis.from_url(url)
        if spec.teacher.kind == "sim":
            sim, sim_url = start_sim_process(spec, store, run_id, local)
            client.set(TEACHER_URL_KEY.format(run_id=run_id), sim_url)
            store.write_json(run_id, paths.TEACHER_URL, {"base_url": sim_url})
        cluster.wait_ready()
        with Progress(store, run_id, quiet=quiet) as progress:
            status = drive(store, client, run_id, app, on_tick=progress.update,
                           should_stop=stop_flag())
            progress.refresh()  # the last tick's work (the test) settled in storage
        if status in TERMINAL:  # a failed or cancelled run's too: what it did and why
            try:
                print(f"report: {write_report(store, run_id)}")
            except Exception as exc:  # noqa: BLE001 - the run's own outcome is the exit code
                log.error("run=%s: report not written: %s: %s", run_id, type(exc).__name__,
                          exc)
        _print_summary(store, run_id)
        return 0 if status == "done" else EXIT_FAILED
    finally:
        if sim is not None:
            sim.terminate()
            try:
                sim.wait(10)
            except subprocess.TimeoutExpired:  # requests it was told to hang on (fault tests)
                sim.kill()
                sim.wait(10)
        cluster.stop()


def start_sim_process(spec: RunSpec, store: ShardStore, run_id: str,
                      local: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The simulated teacher as its own process, answering from the run's pool."""
    local.mkdir(parents=True, exist_ok=True)
    pool = local / "pool.parquet"
    pq.write_table(store.read_table(run_id, "pool").select(["text", "label"]), pool)
    sim = spec.teacher.sim
    cmd = [sys.executable, "-m", "workers.teachers.sim", "--pool", str(pool),
           "--host", "127.0.0.1", "--port", "0", "--seed", str(sim.seed),
           "--label-noise", str(sim.label_noise), "--noise-kind", sim.noise_kind,
           "--latency-ms", str(sim.latency_ms),
           "--fault-rate", str(sim.fault_rate),
           "--prefix-cache-tokens", str(sim.prefix_cache_tokens)]
    if sim.rpm_limit:
        cmd += ["--rpm-limit", str(sim.rpm_limit)]
    log_file = open(local / "sim.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file)
    log_file.close()
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("http"):
        proc.kill()
        raise RuntimeError(f"the simulated teacher did not start; see {local / 'sim.log'}")
    return proc, line


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    for line in plan_costs(spec).lines(spec):
        print(line)
    return 0


# ---- distributed --------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    client = _redis_from_env()  # reached before the run is written
    store = ShardStore(check_storage(spec.storage))
    check_teacher(spec.teacher, args)
    run_id = create_run(spec, store)
    client.hset(RUNS_KEY, run_id, store.uri)
    print(run_id)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    client = _redis_from_env(ping=False)  # serve waits out an unreachable Redis
    if args.metrics_port:
        start_metrics_server(client, args.metrics_port)
    log.info("serving runs from %s", os.environ.get("REDIS_URL", "").split("@")[-1])
    serve(client, app, poll_s=args.poll, should_stop=stop_flag(), storages=tuple(args.storage))
    return 0


# ---- inspection ---------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    if not args.run_id:
        return cmd_list(args)
    run_id = check_run_id(args.run_id)
    store = _store(args)
    live = None
    if os.environ.get("REDIS_URL"):  # a served run: its live counter has the answers in flight
        try:
            live = read_spend(_redis_from_env(ping=False), run_id)
        except redis.RedisError as exc:
            log.warning("the run's live spend in Redis is unavailable: %s", exc)
    summary = summarize(store, run_id, live)
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2))
    else:
        _status_tables(store, run_id, summary)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    runs: list[dict[str, Any]] = []
    for run_id in store.list_runs():
        try:
            manifest = read_manifest(store, run_id)
        except ManifestError as exc:  # listed, not hidden: `list` is how one finds it
            runs.append({"run_id": run_id, "status": "invalid", "error": str(exc)})
            continue
        if manifest is None:  # removed since it was listed
            runs.append({"run_id": run_id, "status": "?"})
            continue
        last = manifest.decisions[-1] if manifest.decisions else None
        runs.append({"run_id": run_id, "status": manifest.status,
                     "cycles": len(manifest.decisions), "created_at": manifest.created_at,
                     "metric": last.metric if last else None,
                     "last_value": last.value if last else None})
    if getattr(args, "json", False):
        print(json.dumps(runs, indent=2))
    else:
        print_runs(runs)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    store = _store(args)
    manifest = load_manifest(store, check_run_id(args.run_id))
    # a served run's live counter (answers not yet in storage), when REDIS_URL names its Redis
    client = _redis_from_env(ping=False) if os.environ.get("REDIS_URL") else None
    with Progress(store, args.run_id, client=client) as progress:
        while not manifest.ended:
            progress.refresh()
            time.sleep(1.0)
            manifest = load_manifest(store, args.run_id)
        progress.refresh()
    _print_summary(store, args.run_id)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    store = _store(args)
    manifest = load_manifest(store, check_run_id(args.run_id))
    if manifest.ended:
        print(f"run {args.run_id} is already {manifest.status}: nothing to cancel")
        return 0
    request_cancel(store, args.run_id, time.time())
    print(f"run {args.run_id}: cancel requested; no new jobs will be sent")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    store = _store(args)
    load_manifest(store, check_run_id(args.run_id))
    path = write_report(store, args.run_id, out_dir=Path(args.out) if args.out else None)
    if getattr(args, "json", False):
        print(json.dumps({"report": str(path), **summarize(store, args.run_id)}, indent=2))
        return 0
    print(f"report: {path}")
    _status_tables(store, args.run_id, summarize(store, args.run_id))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = _store(args)
    manifest = load_manifest(store, check_run_id(args.run_id))
    cycle = args.cycle if args.cycle is not None else _best_so_far(manifest)
    if not store.has_dir(args.run_id, paths.student(cycle)):
        raise InvalidInputError(f"run {args.run_id} has no committed student for cycle {cycle}")
    if args.int8 and not args.onnx:
        raise InvalidInputError("export: --int8 quantises the ONNX student: add --onnx")
    out = Path(args.dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"export: {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise InvalidInputError(f"export: {out} is not empty; pass --force to replace it "
                                "(everything in it is removed)")
    if args.onnx:
        print("exporting to ONNX, checking it against PyTorch and timing it (a minute or so)",
              file=sys.stderr, flush=True)
    info = export(store, manifest, cycle, out, onnx=args.onnx, int8=args.int8)
    print(f"exported the cycle {cycle} student of {args.run_id} to {args.dir}: "
          f"{', '.join(info['files'])}")
    for name, ms in info.get("latency_ms_per_64", {}).items():
        agree = info["agreement"].get(name)
        print(f"  {name}: {ms:.1f} ms per 64 texts"
              + (f", agrees with PyTorch fp32 on {agree:.2%} of {info['agreement_n']} "
                 f"{info['agreement_split']} texts" if agree is not None else ""))
    return 0


def _best_so_far(manifest: Manifest) -> int:
    best = manifest.best_so_far()
    if best is None:
        raise InvalidInputError(f"run {manifest.run_id} has no trained student yet")
    return best


def _status_tables(store: ShardStore, run_id: str, summary: dict[str, Any]) -> None:
    """``status``'s tables, under the teacher's line (simulated by its spec or its answers)."""
    spend = summary["spend"]
    paid = {k: spend[f"paid_{k}"] for k in ("requests_simulated", "requests_real")}
    print_status(summary, teacher_line(load_manifest(store, run_id).spec, paid))


def _print_summary(store: ShardStore, run_id: str) -> None:
    """How a run ended: tables for a person at a terminal, else one line per fact (logs)."""
    if sys.stdout.isatty():
        _status_tables(store, run_id, summarize(store, run_id))
        return
    for line in summary_lines(store, run_id):
        print(line)
