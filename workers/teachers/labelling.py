"""``label_job``: one planned labelling job → the teacher's labels for a batch of the user's own
texts, as examples like any other (``source: pool``, the text's pool id as the row id).

The job (planned from the cycle's ``selection.json``: ``{"kind": "label", "texts": [[id,
text], ...]}``) is one labelling request (``labelprompts``), asked ``self_consistency``
times — each asking says which answer it is, so no two requests are alike — sent like a
generation job's requests (``generate.ask_job``: re-asks with a repair message, an answer cut
short asked again as two halves keeping their keys, the deadline, the spend counter, the
budget). Each answer is read by key; what it gets wrong is rejected and counted by reason
(``label_not_in_taxonomy``, ``unknown_id``, ``duplicate_id``, ``unlabelled``, ...). With
several answers a text keeps its majority label, and the job records the mean agreement.
A text no answer labelled is not stored (and may be selected again in a later cycle).

Tokens and cost of all the job's requests are shared out over its labelled rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import redis as redis_lib

from distillq.spec import RunSpec
from storage.schemas import EXAMPLES
from workers.teachers.accounting import Tally
from workers.teachers.asking import Answer
from workers.teachers.generate import GenerationResult, JobCall, answer_model, ask_job, shares
from workers.teachers.labelprompts import (
    ANSWER_KEY,
    LabelPrompt,
    build_label_prompt,
    halves,
    majority,
    read_labels,
)
from workers.teachers.runtime import Runtime

log = logging.getLogger(__name__)


def label_prompts(spec: RunSpec, job: dict[str, Any], taxonomy: list[str]) -> list[LabelPrompt]:
    """The job's requests: its texts, once per answer asked for."""
    texts = [(str(i), str(t)) for i, t in job.get("texts", [])]
    k = spec.labelling.self_consistency
    return [build_label_prompt(texts, taxonomy, descriptions=spec.dataset.label_descriptions,
                               text_chars=spec.labelling.text_chars, answer=(a, k))
            for a in range(k)]


def label_job(spec: RunSpec, job: dict[str, Any], *, run_id: str, cycle: int,
              taxonomy: list[str], redis: redis_lib.Redis, pool: Runtime | None = None,
              base_url: str | None = None, deadline_s: float | None = None,
              beat: Callable[[], None] | None = None) -> GenerationResult:
    """Ask the teacher to label ``job``'s texts (module docstring); the arguments are
    ``generate_job``'s."""
    t0 = time.perf_counter()
    job_id = str(job["job_id"])
    prompts = label_prompts(spec, job, taxonomy)
    tally = Tally()

    def split(prompt: LabelPrompt) -> tuple[LabelPrompt, LabelPrompt]:
        return halves(prompt, taxonomy, descriptions=spec.dataset.label_descriptions,
                      text_chars=spec.labelling.text_chars)

    call = JobCall(run_id, cycle, redis, pool, base_url, deadline_s, beat)
    answers = ask_job(spec, job_id, call, prompts, split, tally, ANSWER_KEY)
    got = [_read(a, prompts[0], taxonomy, tally) for a in answers if isinstance(a, Answer)]
    voted = majority(got) if got else {}
    rows = _rows(job, voted, answers, tally, {"run_id": run_id, "cycle": cycle,
                                              "job_id": job_id})
    # the share of a text's answers that gave its kept label; one answer a text agrees with
    # itself, which says nothing, so no agreement is recorded then
    agreement = [share for _, share in voted.values()] if len(prompts) > 1 else []
    stats = {**tally.stats(len(rows)), "job_id": job_id, "cycle": cycle, "kind": "label",
             "requested": len(job.get("texts", [])), "teacher_model": answer_model(answers),
             "self_consistency": len(prompts),
             "agreement": round(sum(agreement) / len(agreement), 4) if agreement else None,
             "wall_s": round(time.perf_counter() - t0, 4)}
    log.info("%6.2fs → label(run=%s cycle=%d job=%s) labelled=%d of %d requests=%d "
             "tokens=%d+%d cost=%.4f rejects=%s", stats["wall_s"], run_id, cycle, job_id,
             len(rows), stats["requested"], stats["requests"], stats["tokens_in"],
             stats["tokens_out"], stats["cost"], stats["rejects_by_reason"])
    return GenerationResult(pa.Table.from_pylist(rows, schema=EXAMPLES), stats)


def _read(answer: Answer, prompt: LabelPrompt, taxonomy: list[str],
          tally: Tally) -> dict[str, str]:
    got = read_labels(answer.items, prompt, taxonomy)
    tally.reject(got.rejects)
    answer.record.kept = len(got.labels)
    return got.labels


def _rows(job: dict[str, Any], voted: dict[str, tuple[str, float]],
          answers: Sequence[Answer | BaseException], tally: Tally,
          ids: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per labelled text, in the job's order, the job's spend shared out."""
    texts = [(str(i), str(t)) for i, t in job.get("texts", []) if str(i) in voted]
    k = len(texts)
    records = tally.requests
    tin = shares(sum(r.input_tokens for r in records), k)
    tout = shares(sum(r.output_tokens for r in records), k)
    cost = sum(r.cost for r in records)
    latency = sum(r.latency_s for r in records)
    model = answer_model(list(answers))
    first = records[0].request_id if records else ""
    return [{**ids, "id": pool_id, "source": "pool", "label": voted[pool_id][0], "text": text,
             "teacher_model": model, "prompt_id": first, "input_tokens": tin[j],
             "output_tokens": tout[j], "latency_s": latency / k, "cost": cost / k}
            for j, (pool_id, text) in enumerate(texts)]
