"""Raw values to model inputs, the same way offline and online: string ids hashed to int64,
categorical values to a bucket of their field's embedding rows, text to hashed character
n-grams and multi-valued fields to hashed values (token bags, 0 the empty slot)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import HashingVectorizer

from shopguide.dataset.schema import TextSpec

_POSITIVE = np.uint64(0x7FFF_FFFF_FFFF_FFFF)


def hash_values(values: pd.Series) -> np.ndarray:
    """(rows,) non-negative int64: integers as they are, anything else by a stable hash of its
    text (pandas' SipHash with its fixed key: the same on every machine and version)."""
    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        return values.to_numpy(np.int64)
    text = values.astype("string").fillna("").to_numpy(object)
    return (pd.util.hash_array(text, categorize=True) & _POSITIVE).astype(np.int64)


def category_codes(values: pd.Series, buckets: int) -> np.ndarray:
    """(rows,) int64 in [0, buckets): the embedding row of each value (missing ones share one)."""
    return hash_values(values) % buckets


def text_tokens(values: pd.Series, spec: TextSpec) -> np.ndarray:
    """(rows, spec.max_tokens) int64: each text's distinct character n-grams (words padded by
    spaces, lower-cased) hashed into [1, buckets), 0-padded; a longer text keeps the n-grams
    of the lowest rows (a fixed choice)."""
    vectorizer = HashingVectorizer(
        analyzer="char_wb",
        ngram_range=(spec.ngram_min, max(spec.ngram_min, spec.ngram_max)),
        n_features=spec.buckets - 1,
        alternate_sign=False,
        norm=None,
    )
    matrix = vectorizer.transform(values.astype("string").fillna("").to_numpy(object)).tocsr()
    return _pad(matrix.indptr, matrix.indices + 1, spec.max_tokens)


def bag_tokens(values: pd.Series, separator: str, spec: TextSpec) -> np.ndarray:
    """(rows, spec.max_tokens) int64: a multi-valued field's values hashed into [1, buckets)."""
    lists = values.astype("string").fillna("").str.split(separator, regex=False)
    lengths = lists.map(lambda v: sum(1 for x in v if x)).to_numpy(np.int64)
    flat = pd.Series([x for v in lists for x in v if x], dtype="string")
    tokens = hash_values(flat) % (spec.buckets - 1) + 1
    return _pad(np.concatenate([[0], np.cumsum(lengths)]), tokens, spec.max_tokens)


def _pad(indptr: np.ndarray, tokens: np.ndarray, width: int) -> np.ndarray:
    rows = len(indptr) - 1
    counts = np.minimum(np.diff(indptr), width)
    out = np.zeros((rows, width), np.int64)
    row = np.repeat(np.arange(rows), counts)
    slot = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    out[row, slot] = tokens[np.repeat(indptr[:-1], counts) + slot]
    return out
