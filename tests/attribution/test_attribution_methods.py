"""Every method on a real tiny classifier teacher (2-layer MiniLM trained on 4 topics of the tests' corpus):
rationales that pass the deletion test, batching that changes nothing, one result type."""

from __future__ import annotations

import copy

import pytest
import torch

from distillq.errors import InvalidInputError
from distillq.words import split_words
from workers.attribution import (
    METHODS,
    Attribution,
    Attributor,
    ClassifierTeacher,
    RationaleRule,
    attribute,
    load_teacher,
)
from workers.attribution.methods import MethodOptions, get_method
from workers.attribution.quality import deletion_test, rationale_quality

TOL = 1e-4
TOP_K = 2
IG_STEPS = 8


@pytest.fixture(scope="module")
def results(tiny) -> dict[str, list[Attribution]]:
    """Each method once over all held-out texts, 16 per batch (so batches hold padding)."""
    return {m: attribute(tiny.teacher, tiny.texts, tiny.labels, method=m, top_k=TOP_K,  # type: ignore[arg-type]
                         ig_steps=IG_STEPS, batch_size=16) for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_top_k_words_lower_the_target_more_than_random_k_words(tiny, results, method) -> None:
    report = deletion_test(tiny.teacher, results[method], rule=RationaleRule(TOP_K), draws=10)
    assert report["n"] >= 0.5 * len(tiny.texts)  # most texts have a rationale at all
    assert report["topk_drop"] > report["random_drop"], report


@pytest.mark.parametrize("method", METHODS)
def test_batched_and_one_at_a_time_agree(tiny, results, method) -> None:
    picks = range(0, len(tiny.texts), 4)  # 8 texts of different lengths, all classes
    for i in picks:
        alone = attribute(tiny.teacher, [tiny.texts[i]], [tiny.labels[i]], method=method,
                          top_k=TOP_K, ig_steps=IG_STEPS, batch_size=1)[0]
        batched = results[method][i]
        assert alone.words == batched.words and alone.spans == batched.spans
        assert alone.scores == pytest.approx(batched.scores, abs=TOL)
        assert alone.target_score == pytest.approx(batched.target_score, abs=TOL)
        assert alone.rationale == batched.rationale


@pytest.mark.parametrize("method", METHODS)
def test_one_result_type_for_every_method(tiny, results, method) -> None:
    targets = tiny.teacher.score(tiny.texts, tiny.labels)
    for text, label, target, r in zip(tiny.texts, tiny.labels, targets, results[method],
                                      strict=True):
        assert isinstance(r, Attribution) and r.method == method and r.label == label
        assert r.text == text and not r.truncated
        assert list(r.words) == [w.text for w in split_words(text)]
        assert len(r.scores) == len(r.words) == len(r.spans)
        assert list(r.rationale) == sorted(r.rationale) and len(r.rationale) <= TOP_K
        assert all(r.scores[i] > 0 for i in r.rationale)
        assert r.target_score == pytest.approx(target, abs=TOL)
        assert r.as_row()["rationale"] == r.rationale_words


def test_saliency_is_non_negative_and_signed_methods_are_not(results) -> None:
    assert all(s >= 0 for r in results["saliency"] for s in r.scores)
    assert any(s < 0 for r in results["input_x_gradient"] for s in r.scores)
    assert any(s < 0 for r in results["integrated_gradients"] for s in r.scores)


def _baseline_score(teacher: ClassifierTeacher, text: str, label: str) -> float:
    """The target score with the text's token embeddings set to zero (IG's baseline)."""
    batch = teacher.collate(teacher.encode([text], [label], 128))
    embeds = teacher.embed(batch) * ~batch.text_mask.unsqueeze(-1)
    with torch.no_grad():
        return float(teacher.forward(batch, embeds).scores[0])


def test_integrated_gradients_is_complete(tiny) -> None:
    """Token scores add up to f(text) - f(baseline), up to the quadrature error, on the first
    held-out text of each class whose score stands clear of the baseline's (on a text scored
    as its baseline the check says nothing; the teacher leaves one class's texts near it).
    Many steps: a score can jump by ~9 between α = 0.1 and 0.2, which 24 steps miss."""
    teacher = tiny.teacher
    checked: set[str] = set()
    for text, label in zip(tiny.texts, tiny.labels, strict=True):
        gap = float(teacher.score([text], [label])[0]) - _baseline_score(teacher, text, label)
        if label in checked or abs(gap) <= 0.1:
            continue
        batch = teacher.collate(teacher.encode([text], [label], 128))
        token, target = get_method("integrated_gradients")(teacher, batch,
                                                           MethodOptions(ig_steps=128))
        assert float(target[0]) - _baseline_score(teacher, text, label) == pytest.approx(gap)
        assert float(token.sum()) == pytest.approx(gap, rel=0.01, abs=0.01)
        checked.add(label)
    assert len(checked) >= 3, f"only {sorted(checked)} have a text clear of the baseline"


def test_integrated_gradient_steps_in_small_passes_change_nothing(tiny, results) -> None:
    small = Attributor(tiny.teacher, "integrated_gradients", ig_steps=IG_STEPS, batch_size=16,
                       internal_batch_size=5, rule=RationaleRule(TOP_K))
    for a, b in zip(small.attribute(tiny.texts, tiny.labels), results["integrated_gradients"],
                    strict=True):
        assert a.scores == pytest.approx(b.scores, abs=TOL)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_gradient_methods_match_captum(tiny, results, method) -> None:
    import captum.attr as captum  # a test extra that scripts/setup installs: never skipped
    teacher = tiny.teacher
    for i in (0, 9, 18, 27):
        batch = teacher.collate(teacher.encode([tiny.texts[i]], [tiny.labels[i]], 128))
        embeds = teacher.embed(batch)

        def forward(e: torch.Tensor, batch=batch) -> torch.Tensor:
            n = e.shape[0]
            return teacher.forward(batch.repeat(n), e).scores

        if method == "saliency":
            tok = captum.Saliency(forward).attribute(embeds, abs=False).norm(dim=-1)
        elif method == "input_x_gradient":
            tok = captum.InputXGradient(forward).attribute(embeds).sum(-1)
        else:
            tok = captum.IntegratedGradients(forward).attribute(
                embeds, baselines=embeds * ~batch.text_mask.unsqueeze(-1), n_steps=IG_STEPS,
                method="gausslegendre").sum(-1)
        tok = (tok[0] * batch.text_mask[0]).tolist()
        ours, _ = get_method(method)(teacher, batch, MethodOptions(ig_steps=IG_STEPS))
        assert ours[0].tolist() == pytest.approx(tok, abs=TOL)
        assert results[method][i].scores  # and the same text went through the full path


def test_attention_reads_the_cls_row_and_restores_the_attention_implementation(tiny) -> None:
    teacher = tiny.teacher
    before = teacher.model.config._attn_implementation
    text = "the shuttle launch to the space station was delayed"  # no punctuation: whole words
    last = attribute(teacher, [text], ["sci_space"], method="attention")[0]
    rollout = attribute(teacher, [text], ["sci_space"], method="attention",
                        attention="rollout")[0]
    assert teacher.model.config._attn_implementation == before
    enc = teacher.tokenizer(text, return_tensors="pt")
    teacher.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            maps = teacher.model(**enc, output_attentions=True).attentions
    finally:
        teacher.model.set_attn_implementation(before)
    row = maps[-1][0].mean(0)[0]  # attention from [CLS] in the last layer, mean over heads
    assert sum(last.scores) == pytest.approx(float(row[1:-1].sum()), abs=1e-4)
    assert all(s >= 0 for s in last.scores + rollout.scores)
    assert last.scores != pytest.approx(rollout.scores, abs=1e-3)


def test_rationale_quality_report(tiny, results) -> None:
    q = rationale_quality(tiny.teacher, results["integrated_gradients"], draws=2)
    assert q["method"] == "integrated_gradients" and q["teacher"] == "classifier"
    assert q["examples"] == len(tiny.texts)
    assert 0 < q["rationale_words_mean"] <= 5
    assert q["label_overlap"]["eligible"] > 0
    assert 0.0 <= q["label_overlap"]["hit_rate"] <= 1.0


def test_long_texts_are_truncated_to_max_length(tiny) -> None:
    text = " ".join([tiny.texts[0]] * 30)
    r = attribute(tiny.teacher, [text], [tiny.labels[0]], max_length=24)[0]
    all_words = [w.text for w in split_words(text)]
    assert r.truncated and 10 <= len(r.words) < 24
    assert list(r.words) == all_words[: len(r.words)]


def test_bfloat16_teacher_gives_nearly_the_same_words(tiny) -> None:
    half = ClassifierTeacher(copy.deepcopy(tiny.teacher.model), tiny.teacher.tokenizer,
                             device="cpu", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    texts, labels = tiny.texts[:8], tiny.labels[:8]
    a = attribute(half, texts, labels, method="saliency")
    b = attribute(tiny.teacher, texts, labels, method="saliency")
    for x, y in zip(a, b, strict=True):
        assert x.words == y.words
        assert x.target_score == pytest.approx(y.target_score, rel=0.1, abs=0.1)


def test_load_teacher_from_a_saved_folder(tiny) -> None:
    teacher = load_teacher(str(tiny.folder), "classifier", labels=["sci_space"], device="cpu")
    assert teacher.labels == tuple(tiny.teacher.labels)
    assert teacher.score(tiny.texts[:4], tiny.labels[:4]) == pytest.approx(
        tiny.teacher.score(tiny.texts[:4], tiny.labels[:4]), abs=TOL)
    with pytest.raises(InvalidInputError, match="no output"):
        load_teacher(str(tiny.folder), "classifier", labels=["not_a_label"], device="cpu")


def test_bad_calls_are_refused(tiny) -> None:
    with pytest.raises(InvalidInputError, match="method"):
        Attributor(tiny.teacher, "occlusion")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="not one of"):
        attribute(tiny.teacher, ["hi"], ["no_such_label"])
    with pytest.raises(ValueError, match="targets"):
        attribute(tiny.teacher, ["hi", "there"], ["sci_space"])
    assert attribute(tiny.teacher, [], []) == []
    r = attribute(tiny.teacher, ["?!", "doctor"], [0, 2])  # a label index works too
    assert r[0].words == () and r[0].rationale == () and r[1].label == "sci_med"
