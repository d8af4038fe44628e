"""Run manifests for tests that need a run without creating one from a dataset."""

from __future__ import annotations

from typing import Any

from distillq.manifest import Decision, Manifest, save_manifest
from distillq.plans import JsonStore


def decision(cycle: int, best_cycle: int, value: float = 0.5, action: str = "continue",
             reason: str = "") -> Decision:
    return Decision(cycle=cycle, value=value, metric="macro_f1", best_cycle=best_cycle,
                    best_value=value, action=action, reason=reason, at=0.0)


def write_manifest(store: JsonStore, run_id: str, spec: dict[str, Any] | None = None,
                   taxonomy: list[str] | None = None, **fields: Any) -> Manifest:
    """A manifest (its spec ``{}`` unless given: enough for what reads only the taxonomy)."""
    manifest = Manifest(run_id=run_id, spec=spec or {}, taxonomy=taxonomy or ["a", "b"],
                        created_at=0.0, **fields)
    save_manifest(store, manifest)
    return manifest
