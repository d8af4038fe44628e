"""distillq's core: the contracts every layer shares, owned once each (the error tree, the run
spec). It imports nothing else of the project; the CLI, the orchestrator, the workers and
storage import it (docs/architecture.md)."""
