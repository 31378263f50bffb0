"""The gate's rules one by one, each shown refusing: the paired-bootstrap comparison with the
champion (overall and per slice, on synthetic scores where the truth is known), the ranking
rules (GAUC floor; MRR and within-query AUC against the champion, on synthetic queries and on a
real candidate whose ranking is broken) and the serving check (a real `shopguide serve` of the
pipeline's candidate: parity, latency, start-up).
The AUC floor and the whole-model regression are refused in tests/test_model_steps.py and
through the CLI's exit code in tests/test_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shopguide.config import GateParams, Params
from shopguide.errors import ShopguideError
from shopguide.evaluate import Scored
from shopguide.gate import (
    collapse_checks,
    gate_step,
    gauc_floor_checks,
    infra_requests,
    ranking_floor_checks,
    ranking_regression_checks,
    regression_checks,
)
from shopguide.io import read_json
from shopguide.ranking.metrics import query_scores
from shopguide.registry import register
from tests.conftest import PipelineRun, copy_feature_repo

N = 20_000


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Labels, an informative champion, users, and slices: 5% "new" rows, 50 "tiny" rows."""
    rng = np.random.default_rng(0)
    labels = (rng.random((N, 1)) < 0.05).astype(float)
    champ = np.clip(0.05 + 0.08 * labels + 0.05 * rng.standard_normal((N, 1)), 0.001, 0.999)
    new = np.zeros(N, bool)
    new[: N // 20] = True
    slices = {"new_categories": new, "old_categories": ~new, "tiny": np.arange(N) < 50}
    return labels, champ, rng.integers(0, 1000, N), slices


def everywhere(tasks: tuple[str, ...], rows: int) -> dict[str, np.ndarray]:
    return {t: np.ones(rows, bool) for t in tasks}


def _scored(labels, probs, users, slices) -> Scored:
    rows = len(labels)
    return Scored(
        ("buy",), labels, probs, users, slices, everywhere(("buy",), rows), all_rows(rows)
    )


def all_rows(rows: int) -> np.ndarray:
    return np.ones(rows, bool)


def test_regression_in_one_slice_is_refused_alone(synthetic) -> None:
    """The candidate equals the champion except on new categories, where its scores are
    shuffled: only that slice fails; the overall drop stays within the tolerance."""
    labels, champ, users, slices = synthetic
    candidate = champ.copy()
    new = slices["new_categories"]
    candidate[new, 0] = np.random.default_rng(1).permutation(candidate[new, 0])
    gate = GateParams(max_auc_regression=0.05, bootstrap_samples=300)
    checks = {
        c["slice"]: c
        for c in regression_checks(
            _scored(labels, candidate, users, slices), _scored(labels, champ, users, slices), gate
        )
    }
    assert not checks["new_categories"]["passed"]
    assert checks["new_categories"]["p_worse_than_tolerance"] == 1.0
    assert checks["new_categories"]["delta"] < -0.3
    assert checks["overall"]["passed"] and -0.05 < checks["overall"]["delta"] < 0
    assert checks["old_categories"]["passed"] and checks["old_categories"]["delta"] == 0
    tiny = checks["tiny"]  # 50 rows, a handful of positives: reported, not judged
    assert tiny["passed"] and not tiny["judged"] and tiny["positives"] < 20
    assert "not judged" in tiny["reason"]


def test_regression_needs_confidence_not_just_a_lower_point_estimate(synthetic) -> None:
    """A little noise on the candidate: a point estimate slightly below the champion is not
    a confident regression beyond the tolerance, so it passes; with no tolerance and a lax
    confidence the same candidate is refused."""
    labels, champ, users, slices = synthetic
    noisy = np.clip(champ + 0.01 * np.random.default_rng(2).standard_normal(champ.shape), 0, 1)
    cand, base = _scored(labels, noisy, users, slices), _scored(labels, champ, users, slices)
    overall = regression_checks(cand, base, GateParams(bootstrap_samples=300))[0]
    assert overall["slice"] == "overall" and overall["delta"] < 0 and overall["passed"]
    strict = GateParams(max_auc_regression=0.0, regression_confidence=0.5, bootstrap_samples=300)
    assert not regression_checks(cand, base, strict)[0]["passed"]


def test_a_task_the_candidate_drops_is_refused(synthetic) -> None:
    """The champion predicts buy and fav, the candidate only buy: fav would be lost."""
    labels, champ, users, slices = synthetic
    both = Scored(
        ("buy", "fav"),
        np.hstack([labels, labels]),
        np.hstack([champ, champ]),
        users,
        slices,
        everywhere(("buy", "fav"), len(labels)),
        all_rows(len(labels)),
    )
    checks = regression_checks(_scored(labels, champ, users, slices), both, GateParams())
    lost = [c for c in checks if not c["passed"]]
    assert [c["task"] for c in lost] == ["fav"] and "the candidate does not" in lost[0]["reason"]


def test_decision_without_a_candidate_model_judges_the_floors_only(tmp_path: Path) -> None:
    """An evaluation that names no model (as older runs wrote) can only be judged on its
    floors, and the decision says what was not checked."""
    evaluation = tmp_path / "evaluate.json"
    evaluation.write_text(
        json.dumps({"overall": {t: {"auc": 0.7} for t in ("cart", "fav", "buy")}})
    )
    decision = gate_step(
        evaluation,
        tmp_path / "unused.parquet",
        tmp_path / "unused-ranking.parquet",
        tmp_path / "registry",
        tmp_path / "d.json",
        Params(gate={"gauc_floor": {}}),
    )
    assert decision["passed"] and len(decision["checks"]) == 3
    assert "serving check" in decision["not_checked"][0]
    evaluation.write_text(
        json.dumps({"model_dir": str(tmp_path / "gone"), "overall": {"cart": {"auc": 0.7}}})
    )
    with pytest.raises(ShopguideError, match="the candidate model is not there"):
        gate_step(
            evaluation,
            tmp_path / "unused.parquet",
            tmp_path / "unused-ranking.parquet",
            tmp_path / "registry",
            tmp_path / "d.json",
            Params(),
        )


def test_infra_requests_come_from_test_exposures(pipeline_run: PipelineRun) -> None:
    import pandas as pd

    test = pd.read_parquet(pipeline_run.training_set).query("split == 'test' and not sampled")
    requests = infra_requests(test, 5, 100)
    assert len(requests) == 5 and all(len(r["item_ids"]) == 100 for r in requests)
    assert {r["timestamp"] for r in requests} == {int(test["t0"].max()) + 1}
    busiest = int(test["user_id"].value_counts().index[0])
    assert requests[0]["user_id"] == busiest
    own = set(test.loc[test["user_id"] == busiest, "item_id"])
    first = requests[0]["item_ids"][: len(own)]  # the user's own items first, as many as fit
    assert set(first) <= own and len(first) == min(len(own), 100)
    assert all(len(set(r["item_ids"])) == 100 for r in requests)


def _infra_params(run: PipelineRun, **infra) -> Params:
    gate = run.params.gate.model_copy(
        update={"infra": run.params.gate.infra.model_copy(update={"requests": 10, **infra})}
    )
    return run.params.model_copy(update={"gate": gate})


def test_serving_check_refuses_on_parity_and_latency(
    pipeline_run: PipelineRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server of the candidate, judged against offline scores that are off by 1e-3
    and a latency budget no server meets: both serving rules refuse, and the decision says by
    how much. (With the true offline scores and budget, the pipeline's own gate passes: see
    test_first_run_promoted_a_champion.)"""
    import shopguide.serving.reference as reference

    exact = reference.reference_probabilities
    monkeypatch.setattr(reference, "reference_probabilities", lambda *a, **k: exact(*a, **k) + 1e-3)
    decision = gate_step(
        pipeline_run.evaluation,
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        tmp_path / "empty-registry",  # no champion: floors and the serving check only
        tmp_path / "decision.json",
        _infra_params(pipeline_run, p99_latency_ms=0.001),
    )
    assert not decision["passed"]
    checks = {c["rule"]: c for c in decision["checks"]}
    assert all(checks[r]["passed"] for r in checks if r == "auc_floor")
    parity, latency = checks["serving_parity"], checks["serving_p99_latency"]
    assert not parity["passed"] and parity["value"] == pytest.approx(1e-3, rel=0.01)
    assert not latency["passed"] and latency["value"] > 0.001
    reasons = " ".join(read_json(tmp_path / "decision.json")["reasons"])
    assert "serving_parity: max |served - offline| = 1.00e-03 > 1e-05" in reasons
    assert "serving_p99_latency: p99" in reasons and "> 0.001 ms" in reasons
    assert decision["infra"]["model_version_served"] == "candidate"


def test_serving_check_refuses_a_server_that_cannot_start(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """A Feast repo that was never materialized: the server exits at start-up, and the gate
    refuses with its log instead of crashing."""
    bare = copy_feature_repo(tmp_path / "bare_repo")
    decision = gate_step(
        pipeline_run.evaluation,
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        tmp_path / "empty-registry",
        tmp_path / "decision.json",
        _infra_params(pipeline_run),
        feature_repo=bare,
    )
    assert not decision["passed"]
    (check,) = [c for c in decision["checks"] if c["rule"].startswith("serving")]
    assert check["rule"] == "serving_starts_and_answers" and not check["passed"]
    assert "exited with code" in decision["infra"]["error"]


def test_champion_columns_are_matched_by_task_name(synthetic) -> None:
    """A champion that lists its tasks in another order is compared task by task."""
    labels, champ, users, slices = synthetic
    two = np.hstack([labels, labels])
    rows = everywhere(("cart", "buy"), len(labels))
    every = all_rows(len(labels))
    candidate = Scored(
        ("cart", "buy"), two, np.hstack([champ, 1 - champ]), users, slices, rows, every
    )
    reordered = Scored(
        ("buy", "cart"), two, np.hstack([1 - champ, champ]), users, slices, rows, every
    )
    checks = regression_checks(candidate, reordered, GateParams(bootstrap_samples=50))
    assert all(c["passed"] and c.get("delta", 0) == 0 for c in checks)


def test_infra_candidates_must_fit_the_server_limit() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"gate.infra.candidates \(100\) is over"):
        Params.model_validate({"serving": {"max_candidates": 50}})


def test_gauc_floor_judges_the_interval_not_the_point(tmp_path: Path) -> None:
    """A GAUC above 0.5 whose interval reaches below the floor is refused; the same point
    with the interval above it passes; a task the floor does not name is not judged."""
    report = {
        "overall": {
            "cart": {"auc": 0.7, "gauc": 0.53, "gauc_ci": {"low": 0.49, "high": 0.57}},
            "buy": {"auc": 0.7, "gauc": 0.58, "gauc_ci": {"low": 0.52, "high": 0.64}},
            "fav": {"auc": 0.7, "gauc": 0.45, "gauc_ci": {"low": 0.40, "high": 0.50}},
        }
    }
    floors = GateParams(gauc_floor={"cart": 0.5, "buy": 0.5})
    checks = {c["task"]: c for c in gauc_floor_checks(report, floors)}
    assert set(checks) == {"cart", "buy"}
    assert not checks["cart"]["passed"] and checks["cart"]["value"] == 0.49
    assert "interval low 0.4900 <= 0.5000" in checks["cart"]["reason"]
    assert checks["buy"]["passed"]


def test_a_collapsed_expert_gate_is_refused_only_when_asked() -> None:
    """`gate.min_gate_entropy`: a gate that gives one expert nearly everything is refused;
    off (None, the default) or for a model without experts, nothing is judged."""
    health = {
        "gates": {
            "cart": {"share": [0.3, 0.3, 0.4], "entropy": 0.99},
            "buy": {"share": [0.98, 0.01, 0.01], "entropy": 0.08},
        }
    }
    report = {"overall": {}, "expert_health": health}
    assert collapse_checks(report, GateParams()) == []
    assert collapse_checks({"overall": {}}, GateParams(min_gate_entropy=0.2)) == []
    checks = {c["gate"]: c for c in collapse_checks(report, GateParams(min_gate_entropy=0.2))}
    assert checks["cart"]["passed"] and not checks["buy"]["passed"]
    assert (
        "gate buy: entropy 0.080 < 0.200 (expert shares 0.98, 0.01, 0.01)"
        in (checks["buy"]["reason"])
    )


def test_ranking_floor_judges_the_served_scores_interval() -> None:
    """A served within-query AUC whose interval reaches down to 0.5 is refused, one above it
    passes, and a task with too few queries is reported, not judged; None turns it off."""

    def served(auc: float, low: float, queries: int) -> dict:
        return {"served": {"auc": auc, "auc_ci": {"low": low, "high": 0.9}, "queries": queries}}

    report = {
        "ranking": {
            "overall": {
                "cart": served(0.56, 0.48, 139),
                "buy": served(0.77, 0.72, 188),
                "fav": served(0.40, 0.30, 5),
            }
        }
    }
    checks = {c["task"]: c for c in ranking_floor_checks(report, GateParams())}
    assert (
        not checks["cart"]["passed"] and "interval low 0.4800 <= 0.5000" in checks["cart"]["reason"]
    )
    assert checks["buy"]["passed"] and "interval low 0.7200 > 0.5000" in checks["buy"]["reason"]
    assert checks["fav"]["passed"] and checks["fav"]["reason"].endswith("5 queries, not judged")
    assert ranking_floor_checks(report, GateParams(ranking_auc_floor=None)) == []


def _queries(rng: np.random.Generator, n: int = 400, size: int = 10):
    """`n` queries of `size` candidates, the first of each positive, of 150 users."""
    query = np.repeat(np.arange(n), size)
    positive = (np.arange(n * size) % size == 0).astype(int)
    users = np.repeat(rng.integers(0, 150, n), size)
    informative = positive + 0.8 * rng.standard_normal(n * size)
    return query, users, positive, informative


def test_ranking_regression_is_refused_over_users() -> None:
    """A candidate that ranks half its queries at random is refused on MRR and AUC in the
    query, with an interval from users resampled; one equal to the champion passes; too few
    queries are reported, not judged."""
    rng = np.random.default_rng(3)
    query, users, positive, informative = _queries(rng)
    worse = informative.copy()
    half = query < 200
    worse[half] = rng.permutation(worse[half])
    champion = {"cart": {"cart": query_scores(query, users, positive, informative)}}
    gate = GateParams(bootstrap_samples=300)
    refused = ranking_regression_checks(
        {"cart": {"cart": query_scores(query, users, positive, worse)}}, champion, gate
    )
    assert {c["metric"] for c in refused} == {"mrr", "auc"}
    for check in refused:
        assert not check["passed"] and check["delta"] < -0.05
        assert check["delta_ci95"]["high"] < 0 and "over users" in check["reason"]
    same = ranking_regression_checks(champion, champion, gate)
    assert all(c["passed"] and c["delta"] == 0 for c in same)
    few = query < 10
    tiny = {"cart": {"cart": query_scores(query[few], users[few], positive[few], worse[few])}}
    base = {"cart": {"cart": query_scores(query[few], users[few], positive[few], informative[few])}}
    assert all(c["passed"] and not c["judged"] for c in ranking_regression_checks(tiny, base, gate))


def test_gate_refuses_a_candidate_whose_ranking_is_worse(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    """The champion with its weights scrambled (a corrupted checkpoint that still loads) is a
    candidate that ranks worse; against the real champion, on the real test queries, the
    ranking rule refuses it."""
    import torch

    from shopguide.evaluate import evaluate_step
    from shopguide.model.store import load_model, save_model
    from shopguide.registry import champion

    current = champion(pipeline_run.registry)
    broken = tmp_path / "broken"
    model = load_model(current.path)
    torch.manual_seed(0)
    with torch.no_grad():
        for weights in model.parameters():
            weights.copy_(torch.randn_like(weights) * 0.5)
    save_model(model, broken)
    registry = tmp_path / "registry"
    register(registry, current.path, {})
    params = pipeline_run.params.model_copy(
        update={
            "gate": pipeline_run.params.gate.model_copy(
                update={
                    "infra": pipeline_run.params.gate.infra.model_copy(update={"enabled": False})
                }
            )
        }
    )
    evaluation = tmp_path / "evaluate.json"
    evaluate_step(
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        broken,
        evaluation,
        tmp_path / "roc.csv",
        tmp_path / "report.html",
        params,
    )
    decision = gate_step(
        evaluation,
        pipeline_run.training_set,
        pipeline_run.ranking_set,
        registry,
        tmp_path / "decision.json",
        params,
    )
    assert not decision["passed"]
    ranking = [c for c in decision["checks"] if c["rule"] == "no_ranking_regression_vs_champion"]
    refused = [c for c in ranking if not c["passed"]]
    assert refused, [c["value"] for c in ranking]
    assert all(c["delta"] < 0 for c in refused)
