"""De-duplication of examples by normalised text.

Two examples are the same when their texts are equal after NFKC normalisation, case folding,
collapsing every run of whitespace to one space and stripping the ends (``normalise_text``).
The first one, in the order the table is given, is kept. A null text counts as ``""``.

DESIGN: ``normalise_text`` is the definition. ``normalised`` computes the same keys for a whole
column: a text that is ASCII and already has single spaces only (nearly every one) needs only
lower-casing — for ASCII, NFKC is the identity and case folding is lower-casing — which an Arrow
kernel does; the rest go through ``normalise_text``. The first row of each key comes from a
dictionary encoding. That makes de-duplicating 1M rows 2-3x faster than a Python loop; a
test checks that the two agree on awkward Unicode and whitespace.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_SPACE = re.compile(r"\s+")
# Python's \s among ASCII is [\t\n\v\f\r\x1c-\x1f ]; a text matching this needs more than lower()
_NOT_SIMPLE = r"[\t\n\x0b\x0c\r\x1c-\x1f]|  |^ | $"


def normalise_text(text: str) -> str:
    """The key texts are de-duplicated by: NFKC, case-folded, whitespace collapsed, stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def normalised(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``normalise_text`` of every value (nulls as ``""``), as one string array."""
    arr = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    arr = pc.fill_null(arr.cast(pa.string()), "")
    keys = pc.ascii_lower(arr)
    other = pc.or_(pc.invert(pc.string_is_ascii(arr)), pc.match_substring_regex(arr, _NOT_SIMPLE))
    if not pc.any(other).as_py():
        return keys
    slow = [normalise_text(t) for t in pc.filter(arr, other).to_pylist()]
    return pc.replace_with_mask(keys, other, pa.array(slow, pa.string()))


def first_mask(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean mask: True on the first row of each normalised text."""
    codes = pc.dictionary_encode(normalised(texts)).indices.to_numpy(zero_copy_only=False)
    _, first = np.unique(codes, return_index=True)
    mask = np.zeros(len(codes), dtype=bool)
    mask[first] = True
    return mask


def dedup_by_text(table: pa.Table, column: str = "text") -> pa.Table:
    """``table`` without the rows whose normalised ``column`` repeats an earlier row's."""
    if table.num_rows == 0:
        return table
    keep = first_mask(table.column(column))
    return table if keep.all() else table.filter(pa.array(keep))
