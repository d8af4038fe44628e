"""Whether a run still wants its jobs: its manifest's status, and a cancel asked for since its
last resume. Read by the controller every tick and by a worker before it pays for a job."""

from __future__ import annotations

from distillq import paths
from distillq.manifest import Manifest
from distillq.plans import JsonStore


def cancel_pending(store: JsonStore, manifest: Manifest) -> bool:
    """Whether ``orchestrator cancel`` asked the run to stop (after its last resume)."""
    cancel = store.read_json(manifest.run_id, paths.CANCEL)
    return cancel is not None and cancel.get("at", 0) > (manifest.resumed_at or 0)


def request_cancel(store: JsonStore, run_id: str, at: float) -> None:
    store.write_json(run_id, paths.CANCEL, {"at": at})


def run_ended(store: JsonStore, manifest: Manifest) -> str:
    """Why the run no longer wants its jobs (done, failed, cancelled, or a cancel asked for),
    else ""."""
    if manifest.ended:
        return f"the run is {manifest.status}"
    return "the run is being cancelled" if cancel_pending(store, manifest) else ""
