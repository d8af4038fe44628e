"""Schema validation: casts what is compatible, names the column that is not."""

from __future__ import annotations

import pyarrow as pa
import pytest
from shard_tables import MakeExamples

from distillq.errors import StorageError
from storage import (
    ATTRIBUTIONS,
    EXAMPLES,
    KINDS,
    PREDICTIONS,
    SCORES,
    UNLABELLED,
    empty,
    validate,
)


def test_the_kinds_have_the_documented_columns() -> None:
    assert EXAMPLES.names == [
        "id", "run_id", "cycle", "source", "label", "text", "job_id", "teacher_model",
        "prompt_id", "input_tokens", "output_tokens", "latency_s", "cost"]
    assert ATTRIBUTIONS.names == [
        "example_id", "run_id", "cycle", "label", "method", "words", "scores", "rationale"]
    assert PREDICTIONS.names == [
        "example_id", "run_id", "cycle", "split", "label", "pred", "confidence"]
    assert UNLABELLED.names == ["id", "text"]
    assert SCORES.names == ["id", "pred", "margin", "entropy", "embedding"]
    assert KINDS == {"generated": EXAMPLES, "attributed": ATTRIBUTIONS, "predictions": PREDICTIONS,
                     "unlabelled": UNLABELLED, "scores": SCORES}
    assert empty(ATTRIBUTIONS).schema == ATTRIBUTIONS and empty(ATTRIBUTIONS).num_rows == 0


def test_compatible_types_are_cast_and_extra_columns_dropped(make_examples: MakeExamples) -> None:
    table = make_examples("j", 2)  # cycle/tokens are int64, latency float64
    table = table.set_column(5, "text", table.column("text").cast(pa.large_string()))
    table = table.set_column(4, "label", table.column("label").dictionary_encode())
    table = table.append_column("extra", pa.array([1, 2]))
    got = validate("generated", table)
    assert got.schema == EXAMPLES
    assert got.column("cycle").to_pylist() == [1, 1]
    assert got.column("text").to_pylist() == table.column("text").to_pylist()


def test_a_missing_column_is_named(make_examples: MakeExamples) -> None:
    with pytest.raises(StorageError, match=r"generated shard lacks column\(s\) \['text'\]"):
        validate("generated", make_examples("j", 2).drop_columns(["text"]))


@pytest.mark.parametrize(("column", "values", "message"), [
    ("cycle", ["a", "b"], "column 'cycle' is string, expected int32"),
    ("input_tokens", [2**40, 1], "column 'input_tokens' is int64, expected int32"),
    ("text", [[1], [2]], "column 'text' is list<item: int64>, expected string"),
    ("cost", [True, False], "column 'cost' is bool, expected double"),
    ("label", [1, 2], "column 'label' is int64, expected string"),
])
def test_a_mistyped_column_is_named(make_examples: MakeExamples, column: str,
                                    values: list[object], message: str) -> None:
    table = make_examples("j", 2)
    bad = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
    with pytest.raises(StorageError, match=message):
        validate("generated", bad)


def test_attributions_lists_are_checked() -> None:
    row = {"example_id": ["e"], "run_id": ["r"], "cycle": [0], "label": ["a"],
           "method": ["saliency"], "words": [["a", "b"]], "scores": [[0.5, 0.25]],
           "rationale": [["a"]]}
    assert validate("attributed", pa.table(row)).schema == ATTRIBUTIONS
    with pytest.raises(StorageError, match="column 'words'"):
        validate("attributed", pa.table({**row, "words": ["a b"]}))


def test_a_float_beyond_float32_is_refused_not_stored_as_infinity() -> None:
    row = {"example_id": ["e"], "run_id": ["r"], "cycle": [0], "label": ["a"],
           "method": ["saliency"], "words": [["a", "b"]], "scores": [[0.5, 1e300]],
           "rationale": [["a"]]}
    with pytest.raises(StorageError, match="column 'scores' has a value beyond the range"):
        validate("attributed", pa.table(row))
    inf = validate("attributed", pa.table({**row, "scores": [[0.5, float("inf")]]}))
    assert inf.column("scores").to_pylist() == [[0.5, float("inf")]], "already infinite: kept"


def test_a_column_given_twice_is_named(make_examples: MakeExamples) -> None:
    table = make_examples("j", 2)
    twice = table.append_column("label", table.column("label"))
    with pytest.raises(StorageError, match="more than one column named 'label'"):
        validate("generated", twice)


def test_unknown_kind_and_non_tables_are_refused(make_examples: MakeExamples) -> None:
    with pytest.raises(StorageError, match="unknown shard kind 'examples'"):
        validate("examples", make_examples("j", 1))
    with pytest.raises(StorageError, match="must be a pyarrow.Table, not dict"):
        validate("generated", {"id": ["x"]})  # type: ignore[arg-type]
