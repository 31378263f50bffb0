"""The `gate` step: decide whether a candidate may replace the champion.

Rules, from `params.yaml` (`gate:`), each a check in the decision file:

* `auc_floor`: every task's test AUC clears its floor.
* `no_regression_vs_champion`: for every task, overall and in every slice (old / new and head /
  torso / tail categories), the candidate is not worse than the champion by more than
  `max_auc_regression` AUC points, judged by a paired bootstrap: both models are scored on the
  same resamples of the same test exposures, and the check fails when the share of resamples in
  which the candidate trails by more than the tolerance reaches `regression_confidence`. A
  slice with fewer than `min_slice_positives` positives for a task is reported, not judged.
* `no_old_category_forgetting`: a candidate fine-tuned for new categories must not forget the
  old ones: on the old categories' test exposures, no task's AUC may be below the champion's
  by more than `max_old_category_drop`.
* `gauc_floor`: for each task named, the lower end of the candidate's GAUC interval on the
  test exposures (evaluate's) is above the floor: it ranks one user's items better than chance.
* `ranking_auc_floor`: for every task with test queries of protocol taobao-rank-v1, the lower
  end of the served score's within-query AUC interval is above the floor: at the moment a user
  acts, what is served ranks the acted item above the others better than chance. Fewer than
  `min_slice_positives` queries: reported, not judged.
* `no_ranking_regression_vs_champion`: on the test queries of protocol taobao-rank-v1, for
  every task with queries and for its probability and the served score, neither MRR nor the
  within-query AUC is below the champion's by more than `max_ranking_regression`, judged by a
  paired bootstrap over users (refused when P(worse by more than that) reaches
  `regression_confidence`). Fewer than `min_slice_positives` queries: reported, not judged.
* `serving_*` (`gate.infra`): the candidate is served by a real `shopguide serve` on a free
  loopback port; it must start, answer v1 and v2 requests for test exposures with the
  probabilities the model gives offline for the same exposures and features (within
  `max_abs_diff`), and keep its p99 latency under `p99_latency_ms`.

A refusal writes the decision with one reason per check and leaves the registry untouched; the
CLI exits with code 3.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from shopguide.config import GateParams, InfraCheckParams, Params
from shopguide.errors import ShopguideError
from shopguide.evaluate import (
    Scored,
    checked_probabilities,
    query_scores_of,
    read_ranking_test,
    score_model,
)
from shopguide.held_out import HeldOut
from shopguide.io import read_json, write_json
from shopguide.metrics import bootstrap_weights, interval, weighted_auc
from shopguide.model.store import load_model
from shopguide.model.tensors import exposures_of
from shopguide.ranking.metrics import QueryScores, paired_deltas
from shopguide.registry import champion, model_fingerprint
from shopguide.serving.process import log_tail, running_server

log = logging.getLogger(__name__)


def _floor_check(
    rule: str, task: str, value: float | None, floor: float, passed: bool, reason: str, **extra
) -> dict:
    """One floor rule's verdict on one task, in the shape every check of the decision has."""
    return {
        "rule": rule,
        "task": task,
        "slice": "overall",
        "value": value,
        "threshold": floor,
        **extra,
        "passed": passed,
        "reason": f"{rule} {task}: {reason}",
    }


def _floor_checks(candidate_auc: dict, gate: GateParams) -> list[dict]:
    checks = []
    for task, floor in gate.auc_floor.items():
        auc = candidate_auc.get(task)
        passed = auc is not None and auc >= floor
        reason = f"AUC {_fmt(auc)} {'>=' if passed else '<'} {floor:.4f}"
        checks.append(_floor_check("auc_floor", task, auc, floor, passed, reason))
    return checks


def gauc_floor_checks(report: dict, gate: GateParams) -> list[dict]:
    """The lower end of each named task's GAUC interval must be above its floor."""
    checks = []
    for task, floor in gate.gauc_floor.items():
        m = report["overall"].get(task) or {}
        low = (m.get("gauc_ci") or {}).get("low")
        passed = low is not None and low > floor
        reason = (
            f"GAUC {_fmt(m.get('gauc'))}, interval low {_fmt(low)} "
            f"{'>' if passed else '<='} {floor:.4f}"
        )
        checks.append(
            _floor_check("gauc_floor", task, low, floor, passed, reason, gauc=m.get("gauc"))
        )
    return checks


def ranking_floor_checks(report: dict, gate: GateParams) -> list[dict]:
    """The lower end of the served score's within-query AUC interval, per task with queries,
    must be above `ranking_auc_floor`."""
    floor = gate.ranking_auc_floor
    if floor is None:
        return []
    checks = []
    for task, scores in sorted(((report.get("ranking") or {}).get("overall") or {}).items()):
        served = scores.get("served") or {}
        low, queries = (served.get("auc_ci") or {}).get("low"), served.get("queries", 0)
        judged = queries >= gate.min_slice_positives and low is not None
        passed = not judged or low > floor
        reason = (
            f"served within-query AUC {_fmt(served.get('auc'))}, interval low {_fmt(low)} "
            f"{'>' if passed else '<='} {floor:.4f}"
            if judged
            else f"{queries} queries, not judged"
        )
        checks.append(
            _floor_check("ranking_auc_floor", task, low, floor, passed, reason, queries=queries)
        )
    return checks


def ranking_regression_checks(
    candidate: dict[str, dict[str, QueryScores]],
    champion: dict[str, dict[str, QueryScores]],
    gate: GateParams,
) -> list[dict]:
    """Paired bootstrap over users of the ranking metrics, per task and score."""
    checks = []
    tol = gate.max_ranking_regression
    for task, by_score in candidate.items():
        for score, cand in by_score.items():
            champ = (champion.get(task) or {}).get(score)
            if champ is None:
                continue
            judged = len(cand.users) >= gate.min_slice_positives
            deltas = paired_deltas(cand, champ, gate.bootstrap_samples, gate.seed) if judged else {}
            for metric in ("mrr", "auc"):
                value, base = float(cand.values[metric].mean()), float(champ.values[metric].mean())
                check = {
                    "rule": "no_ranking_regression_vs_champion",
                    "task": task,
                    "slice": score,
                    "metric": metric,
                    "value": value,
                    "champion_value": base,
                    "threshold": -tol,
                    "queries": len(cand.users),
                }
                name = f"no_ranking_regression_vs_champion {task} [{score} {metric}]"
                if not judged:
                    check |= {
                        "passed": True,
                        "judged": False,
                        "reason": f"{name}: not judged, {len(cand.users)} queries < "
                        f"{gate.min_slice_positives}",
                    }
                    checks.append(check)
                    continue
                draws = deltas[metric]
                p_worse = float((draws < -tol).mean()) if len(draws) else 0.0
                low, high = interval(draws, 0.95)
                passed = p_worse < gate.regression_confidence
                check |= {
                    "delta": value - base,
                    "delta_ci95": {"low": low, "high": high},
                    "p_worse_than_tolerance": p_worse,
                    "passed": passed,
                    "judged": True,
                    "reason": f"{name}: {value:.4f} vs champion {base:.4f} (delta "
                    f"{value - base:+.4f}, 95% CI [{_fmt(low)}, {_fmt(high)}] over users); "
                    f"P(worse by > {tol}) = {p_worse:.3f} "
                    f"{'<' if passed else '>='} {gate.regression_confidence}",
                }
                checks.append(check)
    return checks


def gate_verdict(decision: dict, summary: Path) -> str:
    """ "passed" or "refused", for a pipeline to branch on; writes the decision's checks as a
    Markdown table to `summary` (what the KFP UI shows with a run)."""
    verdict = "passed" if decision["passed"] else "refused"
    scope = f"dataset {decision['dataset']}, " if decision.get("dataset") else ""
    heading = f"Gate {verdict} ({scope}champion: {decision['champion'] or 'none'})"
    rows = [
        f"| {'pass' if c['passed'] else '**fail**'} | {reason} |"
        for reason, c in zip(decision["reasons"], decision["checks"], strict=True)
    ]
    summary.write_text(f"## {heading}\n\n| result | check |\n|---|---|\n" + "\n".join(rows) + "\n")
    return verdict


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def regression_checks(candidate: Scored, champ: Scored, gate: GateParams) -> list[dict]:
    """Paired-bootstrap AUC comparison per task, overall and per slice."""
    # Champion columns by task name (the two models may list their tasks in another order);
    # a task the champion does not predict has nothing to regress against.
    column = {t: champ.tasks.index(t) for t in candidate.tasks if t in champ.tasks}
    deltas: dict[tuple[str, int], list[np.ndarray]] = {}
    n = len(candidate.labels)
    for weights in bootstrap_weights(n, gate.bootstrap_samples, gate.seed):
        for j, task in enumerate(candidate.tasks):
            if task not in column:
                continue
            for name in candidate.parts(task):
                mask = candidate.mask(name, task)
                w = weights[:, mask]
                y = candidate.labels[mask, j]
                delta = weighted_auc(y, candidate.probs[mask, j], w) - weighted_auc(
                    y, champ.probs[mask, column[task]], w
                )
                deltas.setdefault((name, j), []).append(delta)
    # A task the champion predicts and the candidate does not would be lost: refused.
    checks = [
        {
            "rule": "no_regression_vs_champion",
            "task": task,
            "slice": "overall",
            "value": None,
            "threshold": -gate.max_auc_regression,
            "passed": False,
            "judged": True,
            "reason": f"no_regression_vs_champion {task}: the champion predicts it, "
            f"the candidate does not (tasks {list(candidate.tasks)})",
        }
        for task in champ.tasks
        if task not in candidate.tasks
    ]
    tol = gate.max_auc_regression
    for (name, j), chunks in deltas.items():
        task = candidate.tasks[j]
        mask = candidate.mask(name, task)
        y = candidate.labels[mask, j]
        ones = np.ones((1, len(y)))
        cand_auc = weighted_auc(y, candidate.probs[mask, j], ones)[0]
        champ_auc = weighted_auc(y, champ.probs[mask, column[task]], ones)[0]
        check = {
            "rule": "no_regression_vs_champion",
            "task": task,
            "slice": name,
            "value": None if np.isnan(cand_auc) else float(cand_auc),
            "champion_auc": None if np.isnan(champ_auc) else float(champ_auc),
            "threshold": -tol,
            "positives": int(y.sum()),
        }
        if int(y.sum()) < gate.min_slice_positives or np.isnan(cand_auc) or np.isnan(champ_auc):
            check |= {
                "passed": True,
                "judged": False,
                "reason": f"no_regression_vs_champion {task} [{name}]: not judged, "
                f"{int(y.sum())} positives < {gate.min_slice_positives}",
            }
            checks.append(check)
            continue
        draws = np.concatenate(chunks)
        draws = draws[~np.isnan(draws)]
        p_worse = float((draws < -tol).mean()) if len(draws) else 0.0
        low, high = interval(draws, 0.95)
        passed = p_worse < gate.regression_confidence
        check |= {
            "delta": float(cand_auc - champ_auc),
            "delta_ci95": {"low": low, "high": high},
            "p_worse_than_tolerance": p_worse,
            "confidence": gate.regression_confidence,
            "passed": passed,
            "judged": True,
            "reason": f"no_regression_vs_champion {task} [{name}]: AUC {cand_auc:.4f} vs "
            f"champion {champ_auc:.4f} (delta {cand_auc - champ_auc:+.4f}, 95% CI "
            f"[{_fmt(low)}, {_fmt(high)}]); P(worse by > {tol}) = {p_worse:.3f} "
            f"{'<' if passed else '>='} {gate.regression_confidence}",
        }
        checks.append(check)
    return checks


def forgetting_checks(candidate: Scored, champ: Scored, gate: GateParams) -> list[dict]:
    """No forgetting: on the old categories' test exposures, every task's AUC may fall below the
    champion's (what serves those categories now) by at most `max_old_category_drop`. A point
    comparison on the same exposures: what changed is the model, not the sample."""
    checks = []
    for j, task in enumerate(candidate.tasks):
        if task not in champ.tasks:
            continue
        mask = candidate.mask("old_categories", task)
        y = candidate.labels[mask, j]
        ones = np.ones((1, len(y)))
        cand = weighted_auc(y, candidate.probs[mask, j], ones)[0]
        old = weighted_auc(y, champ.probs[mask, champ.tasks.index(task)], ones)[0]
        drop = None if np.isnan(cand) or np.isnan(old) else float(old - cand)
        passed = drop is None or drop <= gate.max_old_category_drop
        checks.append(
            {
                "rule": "no_old_category_forgetting",
                "task": task,
                "slice": "old_categories",
                "value": None if np.isnan(cand) else float(cand),
                "champion_auc": None if np.isnan(old) else float(old),
                "drop": drop,
                "threshold": gate.max_old_category_drop,
                "passed": passed,
                "reason": f"no_old_category_forgetting {task}: old-category AUC {_fmt(cand)} vs "
                f"champion {_fmt(old)} on the same {int(mask.sum())} test exposures (drop "
                f"{_fmt(drop)} {'<=' if passed else '>'} {gate.max_old_category_drop})"
                + ("" if drop is not None else ": a single class, not judged"),
            }
        )
    return checks


# --- The serving check ---------------------------------------------------------------------


def infra_requests(test: pd.DataFrame, requests: int, candidates: int) -> list[dict]:
    """v1 instances built from test exposures: the busiest test users, each with their own
    exposed items first, padded with the split's most exposed items to `candidates`, ranked at
    the moment after the split's last exposure."""
    test = test[exposures_of(test)]
    moment = int(test["t0"].max()) + 1
    busiest_items = test["item_id"].value_counts().index.to_numpy(np.int64)
    by_user = test.groupby("user_id")["item_id"].agg(lambda s: list(dict.fromkeys(s)))
    users = test["user_id"].value_counts().index.to_numpy(np.int64)
    out = []
    for k in range(requests):
        user = int(users[k % len(users)])
        items = [int(i) for i in by_user[user]][:candidates]
        seen = set(items)
        for extra in busiest_items:
            if len(items) >= candidates:
                break
            if int(extra) not in seen:
                items.append(int(extra))
                seen.add(int(extra))
        out.append({"user_id": user, "item_ids": items, "timestamp": moment})
    return out


def serving_refusal(exc: Exception, details: dict) -> tuple[list[dict], dict]:
    """Not started, crashed, hung or answered nonsense: a refusal, never a gate crash."""
    details["error"] = f"{type(exc).__name__}: {exc}"
    return [
        {
            "rule": "serving_starts_and_answers",
            "task": None,
            "slice": None,
            "value": None,
            "threshold": None,
            "passed": False,
            "reason": f"serving_starts_and_answers: {exc}".splitlines()[0][:300]
            + " (see infra.error in the decision)",
        }
    ], details


def infra_checks(
    model_dir: Path, feature_repo: Path, test: pd.DataFrame, params: Params
) -> tuple[list[dict], dict]:
    """(checks, details) of the serving check, with requests built from the `test`
    exposures (`infra_requests`); never raises for a failing server."""
    from shopguide.features import open_store
    from shopguide.serving.reference import reference_probabilities

    infra = params.gate.infra
    instances = infra_requests(test, infra.requests, infra.candidates)
    details: dict = {"requests": len(instances), "candidates_per_request": infra.candidates}
    started = time.monotonic()
    try:
        with running_server(params, feature_repo, model_dir, timeout_s=infra.startup_timeout_s) as (
            url,
            _,
            log_path,
        ):
            details["startup_s"] = round(time.monotonic() - started, 2)
            path = f"/v1/models/{params.serving.model_name}:predict"
            served, latencies = [], []
            with httpx.Client(base_url=url, timeout=30) as client:
                for instance in instances[:3]:  # warm-up, not timed
                    client.post(path, json={"instances": [instance]})
                for instance in instances:
                    t0 = time.perf_counter()
                    response = client.post(path, json={"instances": [instance]})
                    latencies.append((time.perf_counter() - t0) * 1000)
                    if response.status_code != 200:
                        raise ShopguideError(
                            f"the server answered {response.status_code} to a test request: "
                            f"{response.text[:500]}\n{log_tail(log_path)}"
                        )
                    served.append(response.json()["predictions"][0])
                v2 = client.post(
                    f"/v2/models/{params.serving.model_name}/infer",
                    json={
                        "inputs": [
                            {
                                "name": "user_id",
                                "datatype": "INT64",
                                "shape": [1],
                                "data": [instances[0]["user_id"]],
                            },
                            {
                                "name": "item_id",
                                "datatype": "INT64",
                                "shape": [len(instances[0]["item_ids"])],
                                "data": instances[0]["item_ids"],
                            },
                            {
                                "name": "timestamp",
                                "datatype": "INT64",
                                "shape": [1],
                                "data": [instances[0]["timestamp"]],
                            },
                        ]
                    },
                )
            if v2.status_code != 200:
                raise ShopguideError(f"v2 infer answered {v2.status_code}: {v2.text[:500]}")
    except (ShopguideError, httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        return serving_refusal(exc, details)
    model = load_model(model_dir)
    tasks = model.config.tasks
    users = np.concatenate([np.full(len(i["item_ids"]), i["user_id"]) for i in instances])
    items = np.concatenate([i["item_ids"] for i in instances]).astype(np.int64)
    moments = np.concatenate([np.full(len(i["item_ids"]), i["timestamp"]) for i in instances])
    offline = reference_probabilities(model, open_store(feature_repo), users, items, moments)
    n0 = len(instances[0]["item_ids"])
    try:
        got = np.array(
            [[item["scores"][t] for t in tasks] for p in served for item in p["items"]], float
        )
        v2_outputs = {o["name"]: np.asarray(o["data"], float) for o in v2.json()["outputs"]}
        v2_got = np.stack([v2_outputs[t] for t in tasks], axis=1)
        diff = float(
            max(np.abs(got - offline).max(initial=0), np.abs(v2_got - offline[:n0]).max(initial=0))
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:  # answers of the wrong shape
        return serving_refusal(exc, details)
    details |= {"max_abs_diff": diff, "latency_ms": latency_summary(latencies)}
    details["model_version_served"] = served[0].get("model_version")
    scope = f"{len(items)} exposures (v1) and {n0} (v2)"
    request = f"{infra.candidates} candidates"
    return serving_verdicts(diff, latencies, infra, scope, request), details


def latency_summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        "max": float(np.max(latencies)),
    }


def serving_verdicts(
    diff: float, latencies: list[float], infra: InfraCheckParams, scope: str, request: str
) -> list[dict]:
    """The serving check's two rules: served equals offline within `infra.max_abs_diff` over
    `scope`; p99 latency of requests of `request` within `infra.p99_latency_ms`."""
    p99 = float(np.percentile(latencies, 99))
    return [
        {
            "rule": "serving_parity",
            "task": None,
            "slice": None,
            "value": diff,
            "threshold": infra.max_abs_diff,
            "passed": diff <= infra.max_abs_diff,
            "reason": f"serving_parity: max |served - offline| = {diff:.2e} "
            f"{'<=' if diff <= infra.max_abs_diff else '>'} {infra.max_abs_diff:.0e} over {scope}",
        },
        {
            "rule": "serving_p99_latency",
            "task": None,
            "slice": None,
            "value": p99,
            "threshold": infra.p99_latency_ms,
            "passed": p99 <= infra.p99_latency_ms,
            "reason": f"serving_p99_latency: p99 {p99:.1f} ms "
            f"{'<=' if p99 <= infra.p99_latency_ms else '>'} {infra.p99_latency_ms:g} ms over "
            f"{len(latencies)} requests of {request}",
        },
    ]


def collapse_checks(report: dict, gate: GateParams) -> list[dict]:
    """With `gate.min_gate_entropy`, one check per gate of a model with experts: its entropy
    on the test rows (`expert_health` in the evaluation) is not below the floor."""
    health = report.get("expert_health")
    if gate.min_gate_entropy is None or not health:
        return []
    checks = []
    for name, g in health["gates"].items():
        passed = g["entropy"] >= gate.min_gate_entropy
        checks.append(
            {
                "rule": "no_expert_collapse",
                "gate": name,
                "entropy": g["entropy"],
                "share": g["share"],
                "passed": passed,
                "reason": f"gate {name}: entropy {g['entropy']:.3f} "
                f"{'>=' if passed else '<'} {gate.min_gate_entropy:.3f} (expert shares "
                f"{', '.join(f'{v:.2f}' for v in g['share'])})",
            }
        )
    return checks


def _candidate_model(evaluation: dict, model_dir: Path | None) -> Path | None:
    """The candidate's directory: given, or recorded by `evaluate`; None for an evaluation that
    names none (then only the floors can be judged)."""
    if model_dir is not None:
        path = Path(model_dir)
    elif evaluation.get("model_dir"):
        path = Path(evaluation["model_dir"])
    else:
        return None
    if not path.is_dir():
        raise ShopguideError(
            f"{path}: the candidate model is not there; pass it to the gate (--model-dir)"
        )
    return path


def _ranking_scores(model_dir: Path, frame, params: Params) -> dict:
    model = load_model(model_dir)
    probs = checked_probabilities(model, frame)
    return query_scores_of(frame, probs, model.config.tasks, params.serving.ranking_weights)


def gate_step(
    evaluation: Path,
    training_set: Path,
    ranking_set: Path,
    registry: Path,
    decision_path: Path,
    params: Params,
    model_dir: Path | None = None,
    feature_repo: Path | None = None,
) -> dict:
    if not Path(evaluation).is_file():
        raise ShopguideError(f"{evaluation}: evaluation metrics not found (run evaluate first)")
    report = read_json(evaluation)
    candidate_auc = {t: m.get("auc") for t, m in report["overall"].items()}
    checks = _floor_checks(candidate_auc, params.gate)
    checks += gauc_floor_checks(report, params.gate)
    checks += ranking_floor_checks(report, params.gate)
    checks += collapse_checks(report, params.gate)
    candidate_dir = _candidate_model(report, model_dir)
    candidate_fingerprint = model_fingerprint(candidate_dir) if candidate_dir else None
    evaluated = report.get("model_fingerprint")
    if candidate_fingerprint and evaluated and evaluated != candidate_fingerprint:
        raise ShopguideError(
            f"{evaluation} evaluates another model than {candidate_dir} (weights differ); "
            "evaluate the candidate first"
        )
    current = champion(registry)
    champion_auc, infra, skipped = None, None, []
    if candidate_dir is not None or current is not None:
        if candidate_dir is None:
            raise ShopguideError(
                f"{evaluation} names no candidate model; pass it to the gate (--model-dir) "
                "to compare it with the champion"
            )
        test = HeldOut.of(training_set)
        candidate = score_model(load_model(candidate_dir), test, params)
        if current is not None:
            champ = score_model(load_model(current.path), test, params)
            checks += regression_checks(candidate, champ, params.gate)
            checks += forgetting_checks(candidate, champ, params.gate)
            queries = read_ranking_test(ranking_set)
            if not queries.empty:
                checks += ranking_regression_checks(
                    _ranking_scores(candidate_dir, queries, params),
                    _ranking_scores(current.path, queries, params),
                    params.gate,
                )
            champion_auc = {
                c["task"]: c["champion_auc"]
                for c in checks
                if c["rule"] == "no_regression_vs_champion" and c["slice"] == "overall"
            }
        else:
            skipped.append("champion comparison and old-category forgetting (no champion yet)")
        if params.gate.infra.enabled:
            repo = Path(feature_repo or params.features.repo)
            requests = test.exposures(["user_id", "item_id", "t0"])
            infra_list, infra = infra_checks(candidate_dir, repo, requests, params)
            checks += infra_list
        else:
            skipped.append("serving check (gate.infra.enabled is false)")
    else:
        skipped.append("serving check and champion comparison (no candidate model named)")
    passed = all(c["passed"] for c in checks)
    decision = {
        "passed": passed,
        "reasons": [c.pop("reason") for c in checks],
        "checks": checks,
        "champion": current.name if current else None,
        "champion_auc": champion_auc,
        "candidate_auc": candidate_auc,
        "candidate": str(candidate_dir) if candidate_dir else None,
        "candidate_fingerprint": candidate_fingerprint,
        "registry": str(registry),
        "infra": infra,
        "not_checked": skipped,
        "decided_at": datetime.now(UTC).isoformat(),
    }
    write_json(decision_path, decision)
    failed = [r for r, c in zip(decision["reasons"], checks, strict=True) if not c["passed"]]
    if passed:
        log.info("gate PASSED: %d checks", len(checks))
    else:
        log.warning("gate REFUSED: %s", "; ".join(failed))
    return decision
