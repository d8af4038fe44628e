"""The distillq orchestrator: run specs, the cycle controller, planning, CLI, reports."""
