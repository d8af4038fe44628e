"""generate_job end to end over real HTTP against the simulated teacher, with real Redis."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from distillq.errors import BudgetExceededError
from distillq.keys import SPEND_KEY
from storage.schemas import EXAMPLES
from tests.teachers.conftest import LABELS, SimFactory, make_job, make_spec, sim_stats
from workers.teachers.accounting import read_spend, record_spend
from workers.teachers.errors import TeacherTransientError
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
    assert stats["requests"] == 3 == sim_stats(url)["ok"] == stats["requests_simulated"]
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


def test_a_malformed_answer_is_asked_again_differently_and_paid_for(
        sim: SimFactory, seen, redis_client) -> None:
    """The re-ask has another seed and a repair message: a server that answers a request the
    same way every time (greedy decoding) is not sent the request it just got wrong."""
    clean = _run(sim(seed=5), redis_client, make_job(seen, n=8))
    url = sim(seed=5, faults=("malformed",), fault_first=1)
    faulty = _run(url, redis_client, make_job(seen, n=8))
    assert faulty.stats["retries_by_reason"] == {"malformed": 1}
    assert faulty.table.num_rows == clean.table.num_rows == 8
    assert faulty.stats["tokens_out"] > clean.stats["tokens_out"]  # the bad answer is paid for
    stats = sim_stats(url)
    assert stats["ok"] == 2 and stats.get("repeated", 0) == 0


def test_an_answer_cut_at_max_tokens_is_asked_again_in_halves(
        sim: SimFactory, seen, redis_client) -> None:
    """finish_reason "length": not malformed, too long: the same request for fewer examples."""
    job = make_job(seen, n=8)
    whole = _run(sim(seed=5), redis_client, job)
    per_example = whole.stats["tokens_out"] / 8
    url = sim(seed=5)  # the same teacher, not yet asked anything
    cut = _run(url, redis_client, job, teacher={"max_output_tokens": int(per_example * 6)})
    assert cut.stats["retries_by_reason"] == {"truncated": 1}
    assert cut.stats["requests"] == 1, "one request, re-asked"
    # the halves are asked apart: one may repeat a text of the other (rejected, counted)
    assert cut.table.num_rows + sum(cut.stats["rejects_by_reason"].values()) == 8
    assert sim_stats(url).get("repeated", 0) == 0
    with pytest.raises(TeacherTransientError, match=r"^truncated: the answer was cut at 16 "):
        _run(url, redis_client, make_job(seen, n=1), teacher={"max_output_tokens": 16})
    assert sim_stats(url).get("repeated", 0) == 0, "one example: re-asked with a repair message"


def test_re_asks_differ_in_their_text_when_no_seed_is_sent(
        sim: SimFactory, seen, redis_client) -> None:
    """A server that ignores the seed (or a spec that sends none) must not get the same
    request twice either: halves of a split and re-asks carry a line naming themselves."""
    job = make_job(seen, n=8)
    whole = _run(sim(seed=5), redis_client, job, teacher={"send_seed": False})
    url = sim(seed=5)
    cut = _run(url, redis_client, job, teacher={
        "send_seed": False, "max_output_tokens": int(whole.stats["tokens_out"] / 8 * 6)})
    assert cut.stats["retries_by_reason"].get("truncated") == 1
    assert sim_stats(url).get("repeated", 0) == 0


def test_one_failed_half_cancels_the_other() -> None:
    import asyncio

    from workers.teachers.asking import _all_or_none

    finished: list[str] = []

    async def slow() -> str:
        await asyncio.sleep(5)
        finished.append("slow")
        return "slow"

    async def failing() -> str:
        await asyncio.sleep(0.01)
        raise TeacherTransientError("malformed", "no JSON")

    async def both() -> None:
        with pytest.raises(TeacherTransientError):
            await _all_or_none([slow(), failing()])
        await asyncio.sleep(0.05)

    t0 = time.monotonic()
    asyncio.run(both())
    assert finished == [] and time.monotonic() - t0 < 2, "the slow half was cancelled"


def test_a_job_retried_after_bad_answers_sends_none_of_their_requests_again(
        sim: SimFactory, seen, redis_client) -> None:
    """Its first attempt got three malformed answers (the request and its two re-asks); the
    retry varies every seed, so a server answering the same request the same way does not
    fail it again."""
    url = sim(seed=5, faults=("malformed",), fault_first=3)
    job = make_job(seen, n=8)
    with pytest.raises(TeacherTransientError, match="^malformed"):
        _run(url, redis_client, job)
    again = _run(url, redis_client, job)
    assert again.table.num_rows == 8 and again.stats["retries_by_reason"] == {}
    assert sim_stats(url).get("repeated", 0) == 0


def test_a_job_retried_for_another_reason_asks_the_same_requests(
        sim: SimFactory, seen, redis_client) -> None:
    """A Redis blip or a killed worker: the retry gets the answers an undisturbed run gets."""
    job = make_job(seen, n=8)
    calm = _run(sim(seed=5), redis_client, job)
    url = sim(seed=5)
    _run(url, redis_client, job)  # the attempt that "failed" after its answers came back
    again = _run(url, redis_client, job)
    assert again.table.column("text").to_pylist() == calm.table.column("text").to_pylist()
    assert sim_stats(url)["repeated"] == 1


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


def test_each_answer_is_on_the_spend_counter_before_the_job_ends(sim: SimFactory, seen,
                                                                 redis_client) -> None:
    """Two requests, one after the other (concurrency 1): the first one's spend is in Redis,
    for check_budget and other jobs, while the second is still in flight."""
    import threading

    url = sim(seed=4, latency_ms=500)
    job = make_job(seen, n=10)
    results: list[object] = []
    runner = threading.Thread(target=lambda: results.append(_run(
        url, redis_client, job, teacher={"concurrency": 1},
        generation={"examples_per_request": 5})))
    runner.start()
    seen_while_running: list[float] = []
    while runner.is_alive():
        seen_while_running.append(read_spend(redis_client, "r1").get("requests", 0.0))
        time.sleep(0.02)
    runner.join()
    assert len(results) == 1 and sim_stats(url)["ok"] == 2
    assert 1.0 in seen_while_running                 # the first request, before the second
    stats = results[0].stats  # type: ignore[attr-defined]
    spend = read_spend(redis_client, "r1")
    assert spend["requests"] == 2 and spend["tokens"] == stats["tokens_in"] + stats["tokens_out"]
    assert spend["cost"] == pytest.approx(stats["cost"])


def test_a_redis_blip_while_counting_spend_loses_nothing(sim: SimFactory, seen, redis_client,
                                                          monkeypatch) -> None:
    """What could not be added is added with a later answer or at the end of the job."""
    import workers.teachers.asking as asking

    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise redis.exceptions.ConnectionError("blip")
        record_spend(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asking, "record_spend", flaky)
    result = _run(sim(seed=6), redis_client, make_job(seen, n=15),
                  generation={"examples_per_request": 5})
    assert result.table.num_rows == 15 and calls["n"] >= 3
    spend = read_spend(redis_client, "r1")
    assert spend["requests"] == 3
    assert spend["tokens"] == result.stats["tokens_in"] + result.stats["tokens_out"]
    assert spend["cost"] == pytest.approx(result.stats["cost"])


def test_redis_down_while_counting_spend_keeps_the_paid_answers(sim: SimFactory, seen,
                                                                redis_client, monkeypatch,
                                                                caplog) -> None:
    import workers.teachers.asking as asking

    def down(*args: object, **kwargs: object) -> None:
        raise redis.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(asking, "record_spend", down)
    with caplog.at_level(logging.WARNING, logger="workers.teachers.asking"):
        result = _run(sim(seed=7), redis_client, make_job(seen, n=6))
    assert result.table.num_rows == 6 and result.stats["requests"] == 1
    assert "not added to the run's counter" in caplog.text and "Redis is down" in caplog.text


def test_a_job_past_its_deadline_is_cancelled_and_transient(sim: SimFactory, seen,
                                                            redis_client) -> None:
    """The server holds the request 5 s, then answers 504 (one attempt, a 60 s client
    timeout): only the job's 0.4 s deadline can end the job with the reason ``job_deadline``,
    so the reason shows the deadline cut it, whatever the machine's speed (no stopwatch)."""
    url = sim(faults=("timeout",), fault_rate=1.0, hang_s=5)
    spec = make_spec(teacher={"price": PRICE, "timeout_s": 60, "max_attempts": 1})
    with pytest.raises(TeacherTransientError, match="job_deadline") as info:
        generate_job(spec, make_job(seen, n=3), run_id="r1", cycle=1, taxonomy=LABELS,
                     redis=redis_client, base_url=url, deadline_s=0.4)
    assert info.value.reason == "job_deadline"
    assert not sim_stats(url).get("status_504"), "ended while the server still held it"


def test_the_limiter_gets_the_jobs_token_corrections_when_it_ends(
        sim: SimFactory, seen, redis_client) -> None:
    """Each answer's real token count corrects the limiter's estimate; a process that goes
    idle after its job must not keep those corrections to itself."""
    from workers.teachers.openai import client_for
    from workers.teachers.runtime import get_runtime

    url = sim(seed=4)
    spec = make_spec(teacher={"price": PRICE})
    generate_job(spec, make_job(seen, n=12), run_id="r1", cycle=1, taxonomy=LABELS,
                 redis=redis_client, base_url=url)
    limiter = client_for(spec.teacher, get_runtime(), redis_client, url).limiter
    assert limiter is not None
    assert (limiter._pending, limiter._pending_requests) == (0, 0)


def test_the_same_prompt_in_another_request_gets_other_examples(
        sim: SimFactory, seen, redis_client) -> None:
    """An unguided cycle sends the same prompts as the cycle before; an LLM sampling at a
    temperature answers differently, and so does the simulated teacher: each request sends
    its own seed (from its id, which names the cycle), the same on its retries."""
    from workers.teachers.openai import request_seed

    url = sim(seed=6)
    first = _run(url, redis_client, make_job(seen, job_id="c01-0000", n=10))
    again = _run(url, redis_client, make_job(seen, job_id="c01-0000", n=10))
    later = _run(url, redis_client, make_job(seen, job_id="c02-0000", n=10))
    texts = [set(r.table.column("text").to_pylist()) for r in (first, again, later)]
    assert texts[0] == texts[1], "the same request (a redelivery): the same answer"
    # another request: another draw from the texts nearest the prompt's mined examples
    assert texts[0] != texts[2] and len(texts[0] & texts[2]) < len(texts[0])
    assert request_seed("c01-0000-r00") != request_seed("c02-0000-r00")
    unseeded = _run(url, redis_client, make_job(seen, job_id="c02-0000", n=10),
                    teacher={"send_seed": False})
    assert set(unseeded.table.column("text").to_pylist()) != texts[2]


def test_output_tokens_per_example_starts_at_the_prior_and_learns_from_answers() -> None:
    from workers.teachers.accounting import output_tokens_per_example

    assert output_tokens_per_example({}) == 80.0
    assert output_tokens_per_example({"asked_examples": 40, "asked_tokens_out": 40 * 240}) \
        == pytest.approx(160.0)  # equal weight: 40 examples seen, the prior's 40
    learnt = output_tokens_per_example({"asked_examples": 4000, "asked_tokens_out": 4000 * 240})
    assert 238 < learnt < 240
    # a counter restored from storage without these fields (Redis lost them): the prior
    assert output_tokens_per_example({"tokens_out": 99_999.0, "requests": 10}) == 80.0


def test_the_limiter_books_output_at_the_runs_learnt_size_per_example(
        sim: SimFactory, seen, redis_client, monkeypatch) -> None:
    """Each answer adds the examples asked and their output tokens to the run's counter; the
    next job's requests book their expected output from it, not from a fixed guess."""
    from workers.teachers.openai import ChatClient

    booked: list[int] = []
    real = ChatClient.complete

    async def spy(self, messages, tally, **kwargs):  # type: ignore[no-untyped-def]
        booked.append(kwargs["expected_output_tokens"])
        return await real(self, messages, tally, **kwargs)

    monkeypatch.setattr(ChatClient, "complete", spy)
    url = sim(seed=8)
    first = _run(url, redis_client, make_job(seen, n=20), generation={"examples_per_request": 10})
    assert booked == [10 * 80 + 16] * 2  # nothing learnt yet: the prior
    spend = read_spend(redis_client, "r1")
    assert spend["asked_examples"] == 20
    assert spend["asked_tokens_out"] == first.stats["tokens_out"] == spend["tokens_out"]
    per_example = (first.stats["tokens_out"] + 80 * 40) / (20 + 40)
    booked.clear()
    _run(url, redis_client, make_job(seen, n=10, job_id="c01-0001"),
         generation={"examples_per_request": 10})
    assert booked == [round(10 * per_example) + 16]
    assert booked[0] != 10 * 80 + 16  # the simulated teacher's examples are not 80 tokens


def test_a_job_beats_while_its_requests_wait_for_a_slot(
        sim: SimFactory, seen, redis_client) -> None:
    """Three requests through one slot (teacher.concurrency 1) of a slow teacher: the job
    beats every beat_interval (1 s here) while it runs, and stops when it is done."""
    from workers.teachers.generate import beat_interval

    url = sim(latency_ms=700)
    beats: list[float] = []
    spec = make_spec(teacher={"price": PRICE, "concurrency": 1},
                     generation={"examples_per_request": 3}, loop={"generate_deadline_s": 4})
    assert beat_interval(spec) == 1.0
    t0 = time.monotonic()
    result = generate_job(spec, make_job(seen, n=9), run_id="r1", cycle=1, taxonomy=LABELS,
                          redis=redis_client, base_url=url,
                          beat=lambda: beats.append(time.monotonic() - t0))
    took = time.monotonic() - t0
    assert result.stats["requests"] == 3 and took >= 2.1
    assert len(beats) >= 2 and all(b <= took for b in beats)
    time.sleep(1.2)
    assert all(b <= took for b in beats), "no beat after the job"


def test_the_simulation_reached_as_a_real_server_marks_its_answers(
        sim: SimFactory, seen, redis_client) -> None:
    """teacher.kind openai at the simulated teacher's URL: its system_fingerprint marks every
    answer, so the run's report can say the teacher was simulated (tests/orchestrator)."""
    url = sim(seed=3)
    result = _run(url, redis_client, make_job(seen, n=8),
                  teacher={"kind": "openai", "base_url": f"{url}/v1", "model": "distillq-sim"})
    assert result.stats["requests"] == 1 == result.stats["requests_simulated"]
    assert result.stats["requests_real"] == 0
