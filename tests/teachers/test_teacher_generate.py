"""generate_job end to end over real HTTP against the simulated teacher, with real Redis."""

from __future__ import annotations

import pytest
import redis

from storage.schemas import EXAMPLES
from tests.teachers.conftest import LABELS, SimFactory, make_job, make_spec, sim_stats
from workers.teachers.accounting import SPEND_KEY, read_spend
from workers.teachers.errors import BudgetExceededError, TeacherTransientError
from workers.teachers.generate import generate_job

PRICE = {"input_per_1k": 0.5, "output_per_1k": 2.0}


def _run(url: str, client: redis.Redis, job: dict, **sections: object):  # type: ignore[no-untyped-def]
    teacher = {"price": PRICE, **sections.pop("teacher", {})}  # type: ignore[dict-item]
    spec = make_spec(teacher=teacher, **sections)
    return generate_job(spec, job, run_id="r1", cycle=1, taxonomy=LABELS, redis=client,
                        base_url=url)


def test_job_is_split_into_requests_and_accounted(sim: SimFactory, seen, redis_client) -> None:
    url = sim(seed=3)
    job = make_job(seen, n=25)
    result = _run(url, redis_client, job, generation={"examples_per_request": 10})
    table, stats = result.table, result.stats
    assert table.schema.equals(EXAMPLES) and table.num_rows == 25
    assert table.column("id").to_pylist() == [f"c01-0000-{i:04d}" for i in range(25)]
    assert set(table.column("source").to_pylist()) == {"teacher"}
    assert set(table.column("label").to_pylist()) == {"refund"}
    assert set(table.column("teacher_model").to_pylist()) == {"distillq-sim"}
    assert set(table.column("prompt_id").to_pylist()) == {f"c01-0000-r0{i}" for i in range(3)}
    assert stats["requests"] == 3 == sim_stats(url)["ok"]
    expected = (stats["tokens_in"] * 0.5 + stats["tokens_out"] * 2.0) / 1000
    assert stats["cost"] == pytest.approx(expected)
    assert sum(table.column("cost").to_pylist()) == pytest.approx(stats["cost"])
    assert sum(table.column("input_tokens").to_pylist()) == stats["tokens_in"]
    assert sum(table.column("output_tokens").to_pylist()) == stats["tokens_out"]
    spend = read_spend(redis_client, "r1")
    assert spend["tokens"] == stats["tokens_in"] + stats["tokens_out"]
    assert spend["cost"] == pytest.approx(stats["cost"]) and spend["requests"] == 3
    shown = {x["text"] for k in ("fewshot", "correct", "misclassified", "hard_negatives")
             for x in job[k]}
    assert not shown & set(table.column("text").to_pylist())


def test_retried_malformed_answers_give_the_same_examples(sim: SimFactory, seen,
                                                          redis_client) -> None:
    clean = _run(sim(seed=5), redis_client, make_job(seen, n=8))
    url = sim(seed=5, faults=("malformed",), fault_first=1)
    faulty = _run(url, redis_client, make_job(seen, n=8))
    assert faulty.stats["retries_by_reason"] == {"malformed": 1}
    assert faulty.table.column("text").to_pylist() == clean.table.column("text").to_pylist()
    assert faulty.stats["tokens_out"] > clean.stats["tokens_out"]  # the bad answer is paid for


def test_bad_examples_are_rejected_counted_and_never_stored(sim: SimFactory, seen,
                                                           redis_client) -> None:
    url = sim(seed=1, faults=("off_taxonomy", "injection"), fault_rate=1.0)
    rejects: dict[str, int] = {}
    for i in range(8):  # eight different prompts
        job = make_job(seen, job_id=f"c01-{i:04d}", targets=(LABELS[i % 4],), n=5 + i // 4)
        result = _run(url, redis_client, job)
        assert result.table.num_rows == 4 + i // 4
        assert not any("instructions" in t for t in result.table.column("text").to_pylist())
        for k, v in result.stats["rejects_by_reason"].items():
            rejects[k] = rejects.get(k, 0) + v
    assert rejects.get("injection", 0) >= 1 and rejects.get("label_not_in_taxonomy", 0) >= 1
    assert sum(rejects.values()) == 8


def test_budget_cap_stops_before_any_request(sim: SimFactory, seen, redis_client) -> None:
    url = sim()
    redis_client.hset(SPEND_KEY.format(run_id="r1"), mapping={"tokens": 500, "cost": 0.1})
    with pytest.raises(BudgetExceededError, match="token budget"):
        _run(url, redis_client, make_job(seen), budget={"max_tokens": 500})
    with pytest.raises(BudgetExceededError, match="cost budget"):
        _run(url, redis_client, make_job(seen), budget={"max_cost": 0.1})
    assert sim_stats(url).get("requests", 0) == 0
    assert _run(url, redis_client, make_job(seen), budget={"max_tokens": 501}).table.num_rows


def test_a_job_whose_requests_fail_raises_transient(sim: SimFactory, seen, redis_client) -> None:
    url = sim(faults=("5xx",), fault_rate=1.0)
    with pytest.raises(TeacherTransientError):
        _run(url, redis_client, make_job(seen, n=3), teacher={"max_attempts": 2})
    assert read_spend(redis_client, "r1") == {}  # no answer came back: nothing paid


def test_single_and_unguided_modes(sim: SimFactory, seen, redis_client) -> None:
    url = sim(seed=2)
    single = _run(url, redis_client, make_job(seen, targets=(), n=12, mode="single"),
                  generation={"mode": "single", "examples_per_request": 20})
    assert single.table.num_rows == 12 and len(set(single.table.column("label").to_pylist())) > 1
    unguided = _run(url, redis_client, make_job(seen, targets=("card_lost",), n=4,
                                                mode="unguided"))
    assert set(unguided.table.column("label").to_pylist()) == {"card_lost"}
