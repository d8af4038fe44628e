"""The simulated teacher: determinism, closeness to hard negatives, noise, faults, CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.teachers.conftest import LABELS, SimFactory, make_job, make_spec, sim_stats
from workers.teachers.accounting import Tally
from workers.teachers.openai import client_for
from workers.teachers.parsing import extract_items, normalise
from workers.teachers.prompts import build_prompt
from workers.teachers.runtime import get_runtime
from workers.teachers.simpool import Pool, tokens


def _ask(url: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    chat = client_for(make_spec().teacher, get_runtime(), None, url)
    done = get_runtime().run(chat.complete(messages, Tally()))
    return extract_items(done.text)


def _messages(pool, **job) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return build_prompt(make_job(pool, **job), LABELS, make_spec().generation).messages


def test_answers_depend_only_on_seed_and_prompt(sim: SimFactory, pool) -> None:
    a, b, c = sim(seed=7), sim(seed=7), sim(seed=8)
    msgs = _messages(pool, n=10)
    assert _ask(a, msgs) == _ask(a, msgs) == _ask(b, msgs)
    assert _ask(c, msgs) != _ask(a, msgs)
    assert _ask(a, _messages(pool, n=10, job_id="c01-0001", targets=("card_lost",))) != _ask(a, msgs)


def test_answers_are_distinct_new_and_of_the_targets(sim: SimFactory, pool) -> None:
    url = sim()
    job = make_job(pool, targets=("refund", "card_lost"), n=30)  # shows texts of the sim's pool
    prompt = build_prompt(job, LABELS, make_spec().generation)
    items = _ask(url, prompt.messages)
    texts = [normalise(x["text"]) for x in items]
    assert len(items) == 30 and len(set(texts)) == 30
    assert sorted({x["label"] for x in items}) == ["card_lost", "refund"]
    shown = {normalise(t) for t in prompt.shown_texts}
    assert len(shown & {normalise(t) for t, _ in pool}) > 30 and not shown & set(texts)


def test_answers_prefer_pool_examples_close_to_hard_negatives(sim: SimFactory) -> None:
    rng = random.Random(1)
    refund = [f"refund {' '.join(rng.sample(['money', 'back', 'order', 'cancel', 'seller'], 3))}"
              f" {w} {rng.randint(0, 999)}" for w in ("alpha",) * 50 + ("omega",) * 50]
    pool_rows = [(t, "refund") for t in refund] + [("card is lost", "card_lost")]
    url = sim(pool=pool_rows)
    job = make_job([(t, "refund") for t in refund], n=10)
    job.update(misclassified=[], fewshot=[], correct=[], hard_negatives=[
        {"text": "omega omega refund issue", "label": "refund", "pred": "card_lost",
         "confidence": 0.9}])
    items = _ask(url, build_prompt(job, LABELS, make_spec().generation).messages)
    assert sum("omega" in tokens(x["text"]) for x in items) == 10


def test_the_same_prompt_sent_again_gets_mostly_new_texts() -> None:
    """Another cycle, another seed, the same prompt (unguided, the same few-shot examples):
    an LLM writes new texts; the sim draws from the closest quarter of the label's texts, not
    only the closest 3n, so eight draws of 5 are not confined to the same 15."""
    from workers.teachers.simpool import PromptFacts, compose

    rng = random.Random(3)
    words = ["refund", "money", "back", "order", "cancel", "seller", "late", "item"]
    texts = [f"{' '.join(rng.sample(words, 4))} {i}" for i in range(120)]
    pool = Pool(texts, ["refund"] * 120)
    facts = PromptFacts(targets=["refund"], n=5, taxonomy=["refund"],
                        fewshot=[{"text": "refund money back", "label": "refund"}])
    got = set()
    for seed in range(8):
        got |= {x["text"] for x in compose(pool, facts, random.Random(seed), 0.0)}
    assert len(got) > 15  # about 23 expected from the closest 30


def test_label_noise_flips_labels(sim: SimFactory, pool) -> None:
    items = _ask(sim(label_noise=1.0), _messages(pool, n=12))
    assert len(items) == 12 and all(x["label"] != "refund" and x["label"] in LABELS
                                    for x in items)


def test_rate_limit_answers_429_with_retry_after(sim: SimFactory) -> None:
    url = sim(rpm_limit=60)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    codes, headers = [], {}
    for _ in range(2):
        req = urllib.request.Request(f"{url}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                codes.append(resp.status)
        except urllib.error.HTTPError as err:
            codes.append(err.code)
            headers = dict(err.headers)
    assert codes == [200, 429] and int(headers["Retry-After"]) >= 1
    assert sim_stats(url)["status_429"] == 1


def test_it_says_it_is_a_simulation(sim: SimFactory) -> None:
    url = sim()
    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as resp:
        models = json.load(resp)
    assert models["data"][0]["id"] == "distillq-sim" and models["data"][0]["simulation"]
    assert sim_stats(url)["simulation"] is True


def test_cli_prints_its_url_first(tmp_path: Path, pool) -> None:
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"text": [t for t, _ in pool], "label": [lab for _, lab in pool]}),
                   path)
    proc = subprocess.Popen([sys.executable, "-m", "workers.teachers.sim", "--pool", str(path),
                             "--port", "0", "--seed", "3", "--fault-rate", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:")
        assert sim_stats(url)["simulation"] is True
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_pool_index_scores_by_cosine() -> None:
    p = Pool(["red apple pie", "green apple", "blue sky"], ["a", "a", "a"])
    scores = p.scores("a", p.centroid(["apple pie"]))
    assert scores[0] > scores[1] > scores.get(2, 0.0)


def test_the_prompt_states_the_length_bound_and_the_sim_keeps_to_it(pool) -> None:  # type: ignore[no-untyped-def]
    from workers.teachers.simpool import clip, compose, read_prompt

    gen = make_spec().generation.model_copy(update={"max_chars": 40})
    messages = build_prompt(make_job(pool, n=6), LABELS, gen).messages
    facts = read_prompt(messages)
    assert facts.max_chars == 40
    index = Pool([t for t, _ in pool], [lab for _, lab in pool])
    answer = compose(index, facts, random.Random(0), 0.0)
    assert answer and all(len(x["text"]) <= 40 for x in answer)
    assert clip("one two three four", 9) == "one two"
    assert clip("abcdefghijkl", 5) == "abcde"
    assert clip("short", 40) == "short"


def test_an_example_the_prompt_shows_cut_short_is_never_returned() -> None:
    from workers.teachers.simpool import PromptFacts, compose

    long = "please tell me why my card payment was declined at the shop yesterday evening"
    index = Pool([long, "card declined again", "why was my card declined"], ["a", "a", "a"])
    facts = PromptFacts(targets=["a"], n=3, taxonomy=["a"])
    facts.shown.add(normalise(long[:30]))
    facts.shown_cut.add(normalise(long[:30]))
    texts = [x["text"] for x in compose(index, facts, random.Random(0), 0.0)]
    assert long not in texts and len(texts) == 2


def test_the_report_steers_a_single_prompt_and_not_a_sharded_one(pool) -> None:  # type: ignore[no-untyped-def]
    """What the sim does not model (docs/teachers.md): a class-sharded prompt's report and
    confusions leave its draw as it is (only the request's key changes); a single prompt's
    report sets which labels it draws, weighted by weakness."""
    from collections import Counter

    from distillq.spec import GenerationSpec
    from workers.teachers.simpool import compose, read_prompt

    index = Pool([t for t, _ in pool], [lab for _, lab in pool])
    gen = make_spec().generation
    without = gen.model_copy(update={"use_report": False})

    def answer(job: dict[str, Any], g: GenerationSpec) -> list[dict[str, str]]:
        facts = read_prompt(build_prompt(job, LABELS, g).messages)
        return compose(index, facts, random.Random(0), 0.0)

    sharded = make_job(pool, n=6)
    assert read_prompt(build_prompt(sharded, LABELS, gen).messages).f1, "it reads the report"
    assert answer(sharded, gen) == answer(sharded, without)
    single = make_job(pool, targets=(), n=60, mode="single")
    weak, strong = LABELS[0], LABELS[-1]  # make_job: F1 rises with the label's place
    steered = Counter(x["label"] for x in answer(single, gen))
    assert steered[weak] > steered[strong]
    assert steered != Counter(x["label"] for x in answer(single, without))
