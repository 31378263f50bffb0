"""The gate and promotion of a declared dataset's model (`shopguide dataset gate|promote`).

Rules, per served task, on the test split, with the bootstrap of `gate:` in params.yaml:

* `floor`: the candidate beats the trivial guess from the training examples, at the bootstrap
  interval's worse end: a binary task's AUC above its `gate.declared_auc_floor` (0.5 unless
  named), a regression's RMSE below the training mean's, a multiclass accuracy above the
  training majority class's share.
* `no_regression_vs_champion`: against the registry's champion of the same dataset, scored on
  the same test examples and the same resamples (a paired bootstrap), refused when the share
  of resamples where the candidate trails by more than the tolerance reaches
  `gate.regression_confidence`. Tolerance: `gate.max_auc_regression` for AUC and accuracy;
  that fraction of the champion's RMSE for a regression.
* `serving_*` (`gate.infra`, given the dataset's Feast repo): the candidate behind a real
  `shopguide dataset serve` answers v2 and v1 requests of test rows as the model does offline
  for the same rows and online features, within `max_abs_diff` and `p99_latency_ms`
  (`shopguide.dataset.serving_check`).

A refusal writes the decision with one reason per check and leaves the registry untouched.
`promote` registers only the model the decision approved, against the champion it judged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from shopguide.config import Params
from shopguide.dataset.examples import build_examples, read_examples
from shopguide.dataset.learn import metric_draws, predictions, resample_weights
from shopguide.dataset.schema import SCHEMA_FILE, DatasetSchema, saved_schema
from shopguide.errors import GateRefused, ShopguideError
from shopguide.io import read_json, write_json
from shopguide.metrics import interval
from shopguide.model.store import load_model
from shopguide.promote import _approved, _same_champion, git_commit
from shopguide.registry import MODEL_CARD, champion, model_fingerprint, register

log = logging.getLogger(__name__)
# Which way is better, per metric: +1 higher, -1 lower.
DIRECTION = {"auc": 1.0, "accuracy": 1.0, "rmse": -1.0}
# The metric each task type is judged by.
JUDGED = {"binary": "auc", "regression": "rmse", "multiclass": "accuracy"}
# Examples rows are the same for two schemas that agree on these.
ROWS_FROM = ("tables", "unit", "time", "joins", "filters", "split")


def trivial_guess(task: str, schema: DatasetSchema, train: pd.DataFrame, rows: int) -> np.ndarray:
    """What a model that learned nothing would predict: a constant from the training labels."""
    y = train[task].dropna().to_numpy(np.float64)
    spec = schema.tasks[task]
    if spec.type == "multiclass":
        share = np.bincount(
            np.clip(np.round(y), 0, spec.n_classes - 1).astype(int), None, spec.n_classes
        )
        return np.tile(share / max(share.sum(), 1), (rows, 1))
    return np.full(rows, y.mean() if len(y) else 0.0)


def _draws(kind: str, y: np.ndarray, guess: np.ndarray, weights: np.ndarray):
    return metric_draws(kind, y, np.asarray(guess), weights)[JUDGED[kind]]


def _judged(
    schema: DatasetSchema, test: pd.DataFrame, params: Params
) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
    """(task, type, labels, mask of the known ones, resample weights over those) of each
    served task: what both rules judge, on the same resamples."""
    gate = params.gate
    for task in schema.served_tasks():
        y = test[task].to_numpy(np.float64)
        known = ~np.isnan(y)
        weights = resample_weights(int(known.sum()), gate.bootstrap_samples, gate.seed)
        yield task, schema.tasks[task].type, y, known, weights


def floor_checks(
    schema: DatasetSchema, test: pd.DataFrame, train: pd.DataFrame, predicted: dict, params: Params
) -> list[dict]:
    gate, checks = params.gate, []
    for task, kind, y, known, weights in _judged(schema, test, params):
        metric = JUDGED[kind]
        draws = _draws(kind, y[known], np.asarray(predicted[task])[known], weights)
        low, high = interval(draws[1:], 1 - 2 * (1 - gate.regression_confidence))
        worse_end = low if DIRECTION[metric] > 0 else high
        if kind == "binary":
            floor = float(gate.declared_auc_floor.get(task, 0.5))
        else:
            baseline = trivial_guess(task, schema, train, len(y))[known]
            floor = float(_draws(kind, y[known], baseline, weights[:1])[0])
        passed = bool((worse_end - floor) * DIRECTION[metric] > 0)
        checks.append(
            {
                "rule": "floor",
                "task": task,
                "metric": metric,
                "value": float(draws[0]),
                "worse_end": float(worse_end),
                "floor": floor,
                "passed": passed,
                "reason": f"{task}: {metric} {draws[0]:.4f} (interval's worse end "
                f"{worse_end:.4f}) {'beats' if passed else 'does not beat'} {floor:.4f}",
            }
        )
    return checks


def regression_checks(
    schema: DatasetSchema, test: pd.DataFrame, candidate: dict, champ: dict, params: Params
) -> list[dict]:
    gate, checks = params.gate, []
    for task, kind, y, known, weights in _judged(schema, test, params):
        metric = JUDGED[kind]
        ours = _draws(kind, y[known], np.asarray(candidate[task])[known], weights)
        theirs = _draws(kind, y[known], np.asarray(champ[task])[known], weights)
        tolerance = float(gate.max_auc_regression) * (1.0 if metric != "rmse" else theirs[0])
        gain = (ours - theirs) * DIRECTION[metric]
        p_worse = float(np.mean(gain[1:] < -tolerance))
        passed = p_worse < gate.regression_confidence
        checks.append(
            {
                "rule": "no_regression_vs_champion",
                "task": task,
                "metric": metric,
                "candidate": float(ours[0]),
                "champion": float(theirs[0]),
                "p_worse": p_worse,
                "passed": passed,
                "reason": f"{task}: {metric} {ours[0]:.4f} against the champion's "
                f"{theirs[0]:.4f}; P(worse by more than {tolerance:.4f}) = {p_worse:.3f}",
            }
        )
    return checks


def gate_step(
    model_dir: Path,
    examples_path: Path,
    registry: Path,
    decision_path: Path,
    params: Params,
    root: Path | None = None,
    feature_repo: Path | None = None,
) -> dict:
    """Judge the candidate in `model_dir` on the test split of the examples its training
    wrote (`examples_path`) against the floors and the registry's champion of the same
    dataset, and, given the dataset's Feast repo, behind a real server (`gate.infra`); write
    the decision. `root`: the tables (the champion's features of the same rows, the served
    test rows' request fields)."""
    schema = saved_schema(model_dir)
    examples = read_examples(examples_path, model_dir)
    train, test = examples[examples["split"] == "train"], examples[examples["split"] == "test"]
    predicted = predictions(load_model(model_dir), test, schema)
    checks = floor_checks(schema, test, train, predicted, params)
    current, skipped = champion(registry), []
    if current is None:
        skipped.append("champion comparison (no champion yet)")
    else:
        theirs = saved_schema(current.path)
        if theirs.name != schema.name:
            raise ShopguideError(
                f"{registry}: its champion {current.name} serves dataset {theirs.name}, not "
                f"{schema.name}; give each dataset its own registry"
            )
        if any(getattr(theirs, f) != getattr(schema, f) for f in ROWS_FROM):
            skipped.append("champion comparison (its schema builds other examples)")
        else:
            rows = test if theirs == schema else build_examples(theirs, root).loc[test.index]
            champ = predictions(load_model(current.path), rows, theirs)
            checks += regression_checks(schema, test, predicted, champ, params)
    infra: dict = {}
    if not params.gate.infra.enabled:
        skipped.append("serving check (gate.infra.enabled is false)")
    elif feature_repo is None:
        skipped.append("serving check (no Feast repo given)")
    else:
        if not (Path(feature_repo) / SCHEMA_FILE).is_file():
            raise ShopguideError(
                f"{feature_repo}: no Feast repo of dataset {schema.name} for the serving check "
                "(run `shopguide dataset features` first, or set gate.infra.enabled: false)"
            )
        from shopguide.dataset.serving_check import serving_checks  # Feast, KServe

        served, infra = serving_checks(model_dir, Path(feature_repo), schema, params, root)
        checks += served
    passed = all(c["passed"] for c in checks)
    decision = {
        "dataset": schema.name,
        "passed": passed,
        "reasons": [c.pop("reason") for c in checks],
        "checks": checks,
        "champion": current.name if current else None,
        "candidate": str(model_dir),
        "candidate_fingerprint": model_fingerprint(model_dir),
        "registry": str(registry),
        "not_checked": skipped,
        "infra": infra,
        "decided_at": datetime.now(UTC).isoformat(),
    }
    write_json(decision_path, decision)
    log.log(
        logging.INFO if passed else logging.WARNING,
        "%s gate %s: %s",
        schema.name,
        "PASSED" if passed else "REFUSED",
        "; ".join(decision["reasons"]),
    )
    return decision


def promote_step(
    model_dir: Path, decision_path: Path, metrics: Path, registry: Path, out: Path
) -> dict:
    """Register the gate-approved `model_dir` in `registry` as its champion; the model card
    keeps the dataset's (features, tasks, test metrics) and gains the gate's decision."""
    if not Path(decision_path).is_file():
        raise ShopguideError(f"{decision_path}: no gate decision (run `dataset gate` first)")
    decision = read_json(decision_path)
    if not decision.get("passed"):
        write_json(out, {"promoted": False, "version": None, "reasons": decision.get("reasons")})
        raise GateRefused(
            f"{decision_path}: the gate refused the candidate; not promoted, champion unchanged"
        )
    _approved(decision, Path(decision_path), Path(model_dir), Path(registry))
    card = (Path(model_dir) / MODEL_CARD).read_text()
    card += "\n## Gate\n\n" + "".join(f"- {r}\n" for r in decision["reasons"])
    metadata = {
        "dataset": decision["dataset"],
        "metrics": read_json(metrics),
        "gate": decision,
        "git_commit": git_commit(),
    }
    version = register(
        registry,
        model_dir,
        metadata,
        guard=_same_champion(decision, Path(decision_path)),
        card=card,
    )
    record = {"promoted": True, "version": version.name, "path": str(version.path)}
    write_json(out, record)
    log.info(
        "promoted %s of dataset %s to champion in %s", version.name, decision["dataset"], registry
    )
    return record
