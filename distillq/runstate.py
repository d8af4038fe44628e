"""Whether a run still wants its jobs: its manifest's status, and a cancel asked for since its
last resume. Read by the controller every tick and by a worker before it pays for a job."""

from __future__ import annotations

from typing import Any

from distillq import paths
from distillq.plans import JsonStore

TERMINAL = ("done", "failed", "cancelled")


def cancel_pending(store: JsonStore, run_id: str, manifest: dict[str, Any]) -> bool:
    """Whether ``orchestrator cancel`` asked the run to stop (after its last resume)."""
    cancel = store.read_json(run_id, "cancel.json")
    return cancel is not None and cancel.get("at", 0) > manifest.get("resumed_at", 0)


def run_ended(store: JsonStore, run_id: str) -> str:
    """Why the run no longer wants its jobs (done, failed, cancelled, or a cancel asked for),
    else ""."""
    manifest = store.read_json(run_id, paths.MANIFEST) or {}
    if manifest.get("status") in TERMINAL:
        return f"the run is {manifest['status']}"
    return "the run is being cancelled" if cancel_pending(store, run_id, manifest) else ""
