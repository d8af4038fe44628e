"""A causal-LM teacher (SmolLM2-135M-Instruct, GGUF, offline): target = log p(label | prompt)."""

from __future__ import annotations

import pytest
import torch

from distillq.words import split_words
from workers.attribution import CausalLMTeacher, attribute

TEXTS = ["Why is my PIN blocked?", "My new card has not arrived yet.",
         "The exchange rate you used was wrong!"]
LABELS = ["pin_blocked", "card_arrival", "exchange_rate"]

pytestmark = pytest.mark.slow  # loading SmolLM2 takes ~25 s: not in the quick tier


def test_target_is_the_log_probability_of_the_label_after_the_prompt(smollm2) -> None:
    teacher: CausalLMTeacher = smollm2
    encs = teacher.encode(TEXTS, LABELS, 64)
    scores = teacher.score(TEXTS, LABELS)
    for text, label, enc, score in zip(TEXTS, LABELS, encs, scores, strict=True):
        a, b = enc.answer
        assert teacher.tokenizer.decode(enc.input_ids[a:b]) == label
        shown = [i for i, m in zip(enc.input_ids, enc.text_mask, strict=True) if m]
        assert teacher.tokenizer.decode(shown).strip() == text  # only the text is attributed
        prompt = teacher.tokenizer.decode(enc.input_ids[:a])
        assert "card_arrival, exchange_rate, pin_blocked, top_up_failed" in prompt and prompt.endswith("assistant\n")
        with torch.no_grad():  # a plain forward on token ids, no embeddings trickery
            logits = teacher.model(torch.tensor([enc.input_ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        expected = sum(float(logp[i - 1, enc.input_ids[i]]) for i in range(a, b))
        assert score == pytest.approx(expected, abs=1e-3)
        assert score < 0


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "attention"])
def test_causal_lm_attribution_batched_and_alone_agree(smollm2, method) -> None:
    batched = attribute(smollm2, TEXTS, LABELS, method=method, batch_size=3)
    for text, label, b in zip(TEXTS, LABELS, batched, strict=True):
        alone = attribute(smollm2, [text], [label], method=method, batch_size=1)[0]
        assert list(b.words) == [w.text for w in split_words(text)]
        assert b.words == alone.words and b.label == label and b.method == method
        scale = max(abs(s) for s in b.scores)
        assert scale > 0
        # agreement relative to the largest word score (padding changes float rounding)
        assert alone.scores == pytest.approx(b.scores, abs=1e-4 * scale)
        assert alone.target_score == pytest.approx(b.target_score, abs=1e-4)


def test_causal_lm_integrated_gradients_and_truncation(smollm2) -> None:
    long = " ".join(["my card has not arrived"] * 20)
    out = attribute(smollm2, [TEXTS[0], long], ["pin_blocked", "card_arrival"],
                    method="integrated_gradients", ig_steps=4, max_length=16)
    assert out[0].words == ("Why", "is", "my", "PIN", "blocked") and not out[0].truncated
    assert any(s != 0 for s in out[0].scores)
    assert out[1].truncated and 10 <= len(out[1].words) <= 16
