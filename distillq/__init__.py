"""distillq's core: the contracts every layer shares, owned once each — the error tree and exit
codes, the run spec, the run manifest (its one writer), job ids and their renderings, the
validation/steer split, plan I/O, a run's ended state, Redis keys, task names and queues, run
paths, the words of a text. It imports nothing else of the project; the CLI, the
orchestrator, the workers and storage import it (docs/architecture.md).
"""
