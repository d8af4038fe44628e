"""Words, not word pieces: splitting, piece-to-word mapping, sums, rationale rules, on hand-checked
examples; then the same rules through a real tokenizer and a real teacher."""

from __future__ import annotations

import pytest

from distillq.words import split_words
from workers.attribution import Attributor, RationaleRule
from workers.attribution.methods import MethodOptions, input_x_gradient
from workers.attribution.quality import delete_words, label_overlap, label_words, words_match
from workers.attribution.words import piece_words, word_scores


def test_split_words_keeps_hyphens_and_apostrophes_and_drops_punctuation() -> None:
    text = "I can't top-up my card!! (£20, ‘now’?)"
    words = split_words(text)
    assert [w.text for w in words] == ["I", "can't", "top-up", "my", "card", "20", "now"]
    assert all(text[w.start : w.end] == w.text for w in words)


def test_pieces_map_to_the_word_they_overlap_most() -> None:
    words = split_words("top-up failed")  # "top-up" 0..6, "failed" 7..13
    offsets = [(0, 0), (0, 3), (3, 4), (4, 6), (6, 7), (6, 10), (10, 13), (0, 0)]
    #          [CLS]   top     -       up     " "     " fai" (space + 3)  led  [SEP]
    assert piece_words(offsets, words) == [-1, 0, 0, 0, -1, 1, 1, -1]


def test_word_scores_sum_pieces_and_leave_out_unseen_words() -> None:
    kept, scores = word_scores([9.0, 0.5, 0.25, 1.0, 7.0], [-1, 0, 0, 2, -1], n_words=3)
    assert kept == [0, 2]  # word 1 has no piece (truncated away)
    assert scores == [0.75, 1.0]


def test_rationale_is_top_k_positive_non_stopwords_in_text_order() -> None:
    words = ["my", "card", "has", "not", "arrived", "yet", "why"]
    scores = [5.0, 2.0, 4.0, 3.0, 1.0, -6.0, 0.5]
    assert RationaleRule(top_k=3).select(words, scores) == [1, 3, 4]  # card, not, arrived
    assert RationaleRule(top_k=3, drop_stopwords=False).select(words, scores) == [0, 2, 3]
    assert RationaleRule(top_k=10).select(words, scores) == [1, 3, 4]  # "yet" < 0, "why" a stop word


def test_rationale_by_score_mass_is_capped_by_top_k() -> None:
    words = ["card", "not", "arrived", "yet"]
    scores = [6.0, 2.0, 1.5, 0.5]  # mass 10
    assert RationaleRule(top_k=5, mass_fraction=0.6).select(words, scores) == [0]
    assert RationaleRule(top_k=5, mass_fraction=0.7).select(words, scores) == [0, 1]
    assert RationaleRule(top_k=5, mass_fraction=1.0).select(words, scores) == [0, 1, 2, 3]
    assert RationaleRule(top_k=2, mass_fraction=1.0).select(words, scores) == [0, 1]


def test_delete_words_and_label_words() -> None:
    text = "Why did my top-up fail, again?"
    words = split_words(text)
    assert delete_words(text, [(w.start, w.end) for w in words[3:5]]) == "Why did my , again?"
    assert label_words("top_up_failed") == {"top", "failed"}  # "up" is too short
    assert label_words("Refund_not_showing_up") == {"refund", "not", "showing"}
    assert words_match("arrived", "arrival") and words_match("pin", "PIN")
    assert not words_match("card", "cash") and not words_match("up", "up")  # "up": too short


def test_label_overlap_counts_only_texts_that_hold_a_label_word() -> None:
    from workers.attribution import Attribution

    def make(text: str, label: str, rationale: tuple[int, ...]) -> Attribution:
        ws = split_words(text)
        return Attribution(text, label, "saliency", tuple(w.text for w in ws),
                           tuple((w.start, w.end) for w in ws), (1.0,) * len(ws), rationale, 0.0)

    rows = [make("my card never arrived", "card_arrival", (3,)),  # hit: arrived ~ arrival
            make("my card never arrived", "card_arrival", (2,)),  # miss
            make("hello there", "card_arrival", (0,))]  # not eligible
    assert label_overlap(rows) == {"n": 3, "eligible": 2, "hit_rate": 0.5}


def test_word_scores_from_a_real_tokenizer_are_hand_checked_piece_sums(tiny) -> None:
    """MiniLM's WordPiece splits the words; each word's score is the sum of its own pieces."""
    teacher = tiny.teacher
    text = "I can't top-up my card!!"
    enc = teacher.encode([text], ["sci_crypt"], 64)[0]
    pieces = teacher.tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert pieces == ["[CLS]", "i", "can", "'", "t", "top", "-", "up", "my", "card", "!", "!",
                      "[SEP]"]
    token, _ = input_x_gradient(teacher, teacher.collate([enc]), MethodOptions())
    t = token[0].tolist()
    expected = {"I": t[1], "can't": t[2] + t[3] + t[4], "top-up": t[5] + t[6] + t[7],
                "my": t[8], "card": t[9]}
    result = Attributor(teacher, "input_x_gradient").attribute([text], ["sci_crypt"])[0]
    assert result.words == tuple(expected)
    assert result.scores == pytest.approx(list(expected.values()), abs=1e-6)
    assert result.spans == ((0, 1), (2, 7), (8, 14), (15, 17), (18, 22))
    assert t[0] == t[12] == 0.0  # special tokens are never scored; "!" is, but is in no word
    positive = [w for w, s in expected.items() if s > 0 and w not in ("I", "my")]
    best = sorted(positive, key=lambda w: -expected[w])[:5]
    assert result.rationale_words == [w for w in expected if w in best]
