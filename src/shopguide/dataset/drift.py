"""Drift of a declared dataset, column by column: the examples' distribution of every declared
feature and task against the last accepted run's, by the population stability index (PSI).
Numbers fall into the accepted run's decile bins (stored with its profile), categorical values
into its most frequent values plus one bucket for the rest; text is not profiled. The same PSI
between the train and test splits is reported beside, for information (a shift the model will
meet on its own test split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shopguide.dataset.schema import DatasetSchema
from shopguide.drift import OTHER, psi
from shopguide.io import read_json, write_json

MISSING = "__missing__"
BINS = 10
TOP_VALUES = 50


def profiled_columns(schema: DatasetSchema) -> dict[str, str]:
    """{column: numeric or categorical} of the features and tasks a profile covers."""
    out = {name: kind for kind in ("numeric", "categorical") for name in schema.features_of(kind)}
    return out | {t: "numeric" for t in schema.tasks}


def profile(examples: pd.DataFrame, schema: DatasetSchema, reference: dict | None = None) -> dict:
    """{column: {"shares": {bucket: share}, "edges": [...] for numbers}}; with `reference`, in
    its buckets (its bin edges, its top values)."""
    out = {}
    for column, kind in profiled_columns(schema).items():
        values = examples[column]
        known = reference.get(column) if reference else None
        if kind == "numeric":
            numbers = values.to_numpy(np.float64)
            edges = known["edges"] if known else _edges(numbers)
            out[column] = {"edges": edges, "shares": _binned(numbers, edges)}
        else:
            text = values.astype("string").fillna(MISSING)
            shares = text.value_counts(normalize=True)
            keep = list(known["shares"]) if known else list(shares.index[:TOP_VALUES])
            folded = {k: float(shares.get(k, 0.0)) for k in keep if k != OTHER}
            folded[OTHER] = round(max(0.0, 1.0 - sum(folded.values())), 12)
            out[column] = {"shares": folded}
    return out


def _edges(numbers: np.ndarray) -> list[float]:
    present = numbers[~np.isnan(numbers)]
    if not len(present):
        return []
    return sorted(set(np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1]).tolist()))


def _binned(numbers: np.ndarray, edges: list[float]) -> dict[str, float]:
    missing = np.isnan(numbers)
    bins = np.searchsorted(np.asarray(edges), numbers[~missing], side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype(float)
    total = max(len(numbers), 1)
    shares = {str(i): c / total for i, c in enumerate(counts)}
    shares[MISSING] = float(missing.sum()) / total
    return shares


def psi_row(reference: dict, current: dict) -> dict[str, float]:
    """{column_psi: PSI} of every column both profiles hold."""
    return {
        f"{c}_psi": psi(reference[c]["shares"], current[c]["shares"])
        for c in current
        if c in reference
    }


def split_drift(examples: pd.DataFrame, schema: DatasetSchema) -> dict[str, float]:
    """PSI of each column from the train split to the test split."""
    train = profile(examples[examples["split"] == "train"], schema)
    test = profile(examples[examples["split"] == "test"], schema, train)
    return psi_row(train, test)


def profile_path(report_dir: Path, schema: DatasetSchema) -> Path:
    return Path(report_dir) / f"{schema.name}_accepted_profile.json"


def drift_against_accepted(
    examples: pd.DataFrame, schema: DatasetSchema, report_dir: Path
) -> tuple[dict, pd.DataFrame | None]:
    """(this run's profile in the accepted run's buckets, or its own; one row of PSI per
    column against the accepted profile, None before any run was accepted)."""
    path = profile_path(report_dir, schema)
    accepted = read_json(path) if path.is_file() else None
    current = profile(examples, schema, accepted)
    if accepted is None:
        return profile(examples, schema), None
    return current, pd.DataFrame([psi_row(accepted, current)])


def accept(profile_: dict, schema: DatasetSchema, report_dir: Path) -> None:
    write_json(profile_path(report_dir, schema), profile_)
