"""``label_job`` (workers/teachers/labelling.py): the teacher labels a planned batch of
unlabelled texts, through the same request machinery as generation."""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis

from tests.teachers.conftest import LABELS, SimFactory, make_spec, sim_stats
from workers.teachers.labelling import label_job


def _job(pool: list[tuple[str, str]], n: int = 6) -> dict[str, Any]:
    chosen = pool[5::29][:n]
    return {"job_id": "c01-0007", "kind": "label", "mode": "label", "cycle": 1,
            "n_examples": len(chosen), "texts": [[f"u:{i}", t] for i, (t, _) in
                                                 enumerate(chosen)]}


def test_texts_are_labelled_as_examples_of_the_pool(sim: SimFactory, pool,
                                                    redis_client: redis.Redis) -> None:
    url = sim()
    spec = make_spec(labelling={"self_consistency": 3})
    job = _job(pool)
    got = label_job(spec, job, run_id="r1", cycle=1, taxonomy=LABELS, redis=redis_client,
                    base_url=url)
    rows = got.table.to_pylist()
    truth = {f"u:{i}": lab for i, (_, lab) in enumerate(pool[5::29][:6])}
    assert [r["id"] for r in rows] == [f"u:{i}" for i in range(6)], "the job's order"
    assert all(r["source"] == "pool" and r["label"] == truth[r["id"]] for r in rows)
    assert {r["prompt_id"] for r in rows} == {"c01-0007-r00"}
    stats = got.stats
    assert (stats["kind"], stats["requests"], stats["examples"], stats["agreement"]) == \
        ("label", 3, 6, 1.0)
    assert sum(r["input_tokens"] for r in rows) == stats["tokens_in"], "spend shared out"
    assert sim_stats(url).get("repeated", 0) == 0, "three answers, three different requests"


def test_an_answer_outside_the_taxonomy_is_rejected_and_not_stored(
        sim: SimFactory, pool, redis_client: redis.Redis) -> None:
    url = sim(fault_rate=1.0, faults=("off_taxonomy",))
    got = label_job(make_spec(), _job(pool), run_id="r1", cycle=1, taxonomy=LABELS,
                    redis=redis_client, base_url=url)
    assert got.table.num_rows == 5
    assert got.stats["rejects_by_reason"] == {"label_not_in_taxonomy": 1, "unlabelled": 1}
    assert got.stats["agreement"] is None, "one answer a text: nothing to agree with"


def test_an_answer_cut_short_is_asked_again_in_halves_keeping_the_keys(
        sim: SimFactory, pool, redis_client: redis.Redis) -> None:
    url = sim()
    spec = make_spec(teacher={"max_output_tokens": 40})
    got = label_job(spec, _job(pool, 4), run_id="r1", cycle=1, taxonomy=LABELS,
                    redis=redis_client, base_url=url)
    assert got.table.num_rows == 4 and got.stats["retries_by_reason"].get("truncated", 0) >= 1
    assert not Counter(got.stats["rejects_by_reason"])
