"""Arrow schemas of the shard kinds, and validation that names the bad column.

``validate(kind, table)`` is what every commit goes through: it keeps the schema's columns in
the schema's order (extra columns are dropped), casts compatible types and raises
``StorageError`` naming the first missing or mistyped column. Compatible: integer to integer or
float, float to float, any string type to string (dictionary-encoded included), lists of
compatible items, an all-null column to anything. Nothing else is cast — a bool cost, numeric
text for a cycle, a number for a label are mistakes to report, not to paper over — and a value
that does not fit (an integer beyond ``int32``, a float beyond ``float32``) is refused too.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from distillq.errors import StorageError

EXAMPLES = pa.schema([
    ("id", pa.string()),              # seed-<row> | <job_id>-<i:04d>
    ("run_id", pa.string()),
    ("cycle", pa.int32()),
    ("source", pa.string()),          # seed | teacher | pool | val | test
    ("label", pa.string()),
    ("text", pa.string()),
    ("job_id", pa.string()),
    ("teacher_model", pa.string()),
    ("prompt_id", pa.string()),       # the teacher request that produced the example
    ("input_tokens", pa.int32()),     # the example's share of its request
    ("output_tokens", pa.int32()),
    ("latency_s", pa.float32()),
    ("cost", pa.float64()),           # money, in the spec's currency
])

ATTRIBUTIONS = pa.schema([
    ("example_id", pa.string()),
    ("run_id", pa.string()),
    ("cycle", pa.int32()),
    ("label", pa.string()),
    ("method", pa.string()),          # saliency | input_x_gradient | integrated_gradients | ...
    ("words", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
    ("rationale", pa.list_(pa.string())),  # the top words given to the student
])

PREDICTIONS = pa.schema([
    ("example_id", pa.string()),
    ("run_id", pa.string()),
    ("cycle", pa.int32()),
    ("split", pa.string()),           # val | test
    ("label", pa.string()),
    ("pred", pa.string()),
    ("confidence", pa.float32()),
])

UNLABELLED = pa.schema([          # dataset.unlabelled, as stored (cycle 0)
    ("id", pa.string()),
    ("text", pa.string()),
])

SCORES = pa.schema([              # the student's view of unlabelled texts (one cycle)
    ("id", pa.string()),
    ("pred", pa.string()),
    ("margin", pa.float32()),         # top-1 minus top-2 probability
    ("entropy", pa.float32()),
    ("embedding", pa.list_(pa.float32())),  # the most uncertain texts' only (else null)
])

KINDS: dict[str, pa.Schema] = {
    "generated": EXAMPLES,
    "attributed": ATTRIBUTIONS,
    "predictions": PREDICTIONS,
    "unlabelled": UNLABELLED,
    "scores": SCORES,
}

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def empty(schema: pa.Schema) -> pa.Table:
    """A table with the schema's columns and no rows."""
    return schema.empty_table()


def schema_of(kind: str) -> pa.Schema:
    """The schema of a shard kind; StorageError for an unknown kind."""
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise StorageError(f"unknown shard kind {kind!r}; known: {sorted(KINDS)}") from None


def _family(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _family(t.value_type)
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "str"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "list"
    return str(t)


def compatible(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether ``validate`` casts a ``src`` column to ``dst`` (values are still checked)."""
    a, b = _family(src), _family(dst)
    if pa.types.is_null(src) or (a, b) == ("int", "float"):
        return True
    if a == b == "list":
        return compatible(src.value_type, dst.value_type)
    return a == b


def _column(table: pa.Table, field: pa.Field, what: str) -> pa.ChunkedArray:
    col = table.column(field.name)
    if not col.type.equals(field.type):
        if not compatible(col.type, field.type):
            raise StorageError(f"{what} column {field.name!r} is {col.type}, expected {field.type}")
        try:
            cast = col.cast(field.type)
        except _CAST_ERRORS as exc:
            raise StorageError(
                f"{what} column {field.name!r} is {col.type}, expected {field.type}: {exc}"
            ) from None
        if _infinities(cast) > _infinities(col):  # float64 → float32 overflows silently
            raise StorageError(f"{what} column {field.name!r} has a value beyond the range of "
                               f"{field.type}")
        col = cast
    if not field.nullable and col.null_count:
        raise StorageError(f"{what} column {field.name!r} has {col.null_count} null(s)")
    return col


def _infinities(col: pa.ChunkedArray) -> int:
    """How many float values of ``col`` (or of its lists) are infinite."""
    while pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or \
            pa.types.is_fixed_size_list(col.type):
        col = pa.chunked_array([c.flatten() for c in col.chunks], col.type.value_type)
    if not pa.types.is_floating(col.type):
        return 0
    return int(pc.sum(pc.is_inf(col)).as_py() or 0)


def conform(table: pa.Table, schema: pa.Schema, what: str = "table") -> pa.Table:
    """The schema's columns of ``table``, cast; StorageError names a missing or mistyped one."""
    if not isinstance(table, pa.Table):
        raise StorageError(f"{what} must be a pyarrow.Table, not {type(table).__name__}")
    twice = [n for n in schema.names if table.column_names.count(n) > 1]
    if twice:
        raise StorageError(f"{what} has more than one column named {twice[0]!r}")
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise StorageError(f"{what} lacks column(s) {missing}; it has {table.column_names}")
    columns = [_column(table, field, what) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def validate(kind: str, table: pa.Table) -> pa.Table:
    """``table`` conformed to the schema of ``kind`` (generated | attributed | predictions)."""
    return conform(table, schema_of(kind), f"{kind} shard")
