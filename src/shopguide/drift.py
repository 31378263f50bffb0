"""Drift against the last accepted run: behaviour mix, category mix and positive rates.

A profile is a few distributions computed in one DuckDB pass each; drift is the population
stability index (PSI) of each against the profile stored after the last passing validation.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from shopguide.config import Params
from shopguide.duck import connect
from shopguide.exposures import window_events_sql
from shopguide.io import read_json, write_json

PROFILE_FILE = "accepted_profile.json"
OTHER = "__other__"
EPSILON = 1e-6  # keeps PSI finite when a bucket is empty on one side


def event_profile(events: Path, params: Params) -> dict[str, dict[str, float]]:
    """Shares of behaviours and categories, and the exposure positive rate of every task."""
    con = connect(params.data)
    relation = window_events_sql(events, params.protocol)

    def shares(column: str) -> dict[str, float]:
        rows = con.execute(
            f"SELECT {column}::VARCHAR, count(*) / sum(count(*)) OVER () FROM {relation} GROUP BY 1"
        ).fetchall()
        return {str(k): float(v) for k, v in rows}

    tasks = params.protocol.tasks
    labelled = ", ".join(f"avg(coalesce(max_{t} >= first_pv, false)::DOUBLE) AS {t}" for t in tasks)
    per_pair = ", ".join(f"max(ts) FILTER (WHERE behavior = '{t}') AS max_{t}" for t in tasks)
    rates = con.execute(
        f"""SELECT {labelled} FROM (
                SELECT min(ts) FILTER (WHERE behavior = 'pv') AS first_pv, {per_pair}
                FROM {relation} GROUP BY user_id, item_id)
            WHERE first_pv IS NOT NULL"""
    ).fetchone()
    profile = {"behaviour_mix": shares("behavior"), "category_mix": shares("category_id")}
    for task, rate in zip(tasks, rates, strict=True):
        profile[f"{task}_rate"] = {"1": float(rate or 0.0), "0": 1.0 - float(rate or 0.0)}
    return profile


def psi(expected: dict[str, float], actual: dict[str, float]) -> float:
    keys = set(expected) | set(actual)
    total = 0.0
    for k in keys:
        e, a = expected.get(k, 0.0) + EPSILON, actual.get(k, 0.0) + EPSILON
        total += (a - e) * math.log(a / e)
    return total


def _top(shares: dict[str, float], keep: list[str]) -> dict[str, float]:
    """Fold every bucket outside `keep` into one, so rare categories do not dominate PSI."""
    folded = {k: shares.get(k, 0.0) for k in keep}
    folded[OTHER] = sum(v for k, v in shares.items() if k not in folded)
    return folded


def drift_frame(profile: dict, report_dir: Path, params: Params) -> pd.DataFrame | None:
    """One row with the PSI of each distribution against the accepted profile, if there is one."""
    path = Path(report_dir) / PROFILE_FILE
    if not path.is_file():
        return None
    accepted = read_json(path)
    row = {}
    for name, current in profile.items():
        if name not in accepted:
            continue
        reference = accepted[name]
        if name == "category_mix":
            top = sorted(reference, key=reference.get, reverse=True)
            keep = top[: params.validation.drift_top_categories]
            reference, current = _top(reference, keep), _top(current, keep)
        row[f"{name}_psi"] = psi(reference, current)
    return pd.DataFrame([row])


def accept_profile(profile: dict, report_dir: Path) -> None:
    write_json(Path(report_dir) / PROFILE_FILE, profile)
