"""The `gate` step: decide whether a candidate may replace the champion.

Rules (from `params.yaml`): every task's test AUC clears its floor, and none is worse than the
champion's AUC on the same test exposures by more than `gate.max_auc_regression`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shopguide.config import Params
from shopguide.errors import ShopguideError
from shopguide.evaluate import score, test_split
from shopguide.io import read_json, write_json
from shopguide.model.store import load_model
from shopguide.registry import champion

log = logging.getLogger(__name__)


def gate_step(
    evaluation: Path, training_set: Path, registry: Path, decision_path: Path, params: Params
) -> dict:
    if not Path(evaluation).is_file():
        raise ShopguideError(f"{evaluation}: evaluation metrics not found (run evaluate first)")
    candidate = read_json(evaluation)["overall"]
    checks = []
    for task, floor in params.gate.auc_floor.items():
        auc = candidate[task]["auc"]
        checks.append(
            {
                "rule": "auc_floor",
                "task": task,
                "value": auc,
                "threshold": floor,
                "passed": auc is not None and auc >= floor,
            }
        )
    current = champion(registry)
    champion_auc = None
    if current is not None:
        champ = score(load_model(current.path), test_split(training_set), params)["overall"]
        champion_auc = {t: m["auc"] for t, m in champ.items()}
        for task in params.protocol.tasks:
            base, auc = champion_auc.get(task), candidate[task]["auc"]
            if base is None:
                continue
            limit = base - params.gate.max_auc_regression
            checks.append(
                {
                    "rule": "no_regression_vs_champion",
                    "task": task,
                    "value": auc,
                    "threshold": limit,
                    "champion_auc": base,
                    "passed": auc is not None and auc >= limit,
                }
            )
    passed = all(c["passed"] for c in checks)
    reasons = [
        f"{c['rule']} {c['task']}: AUC {c['value'] if c['value'] is None else round(c['value'], 4)}"
        f" {'>=' if c['passed'] else '<'} {c['threshold']:.4f}"
        for c in checks
    ]
    decision = {
        "passed": passed,
        "reasons": reasons,
        "checks": checks,
        "champion": current.name if current else None,
        "champion_auc": champion_auc,
        "candidate_auc": {t: m["auc"] for t, m in candidate.items()},
    }
    write_json(decision_path, decision)
    (log.info if passed else log.warning)(
        "gate %s: %s", "PASSED" if passed else "REFUSED", "; ".join(reasons)
    )
    return decision
