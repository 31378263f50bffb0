"""The gate's rules one by one, each shown refusing: the paired-bootstrap comparison with the
champion (overall and per slice, on synthetic scores where the truth is known) and the serving
check (a real `shopguide serve` of the pipeline's candidate: parity, latency, start-up).
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
from shopguide.gate import gate_step, infra_requests, regression_checks
from shopguide.io import read_json
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


def _scored(labels, probs, users, slices) -> Scored:
    return Scored(("buy",), labels, probs, users, slices)


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
        ("buy", "fav"), np.hstack([labels, labels]), np.hstack([champ, champ]), users, slices
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
        tmp_path / "registry",
        tmp_path / "d.json",
        Params(),
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
            tmp_path / "registry",
            tmp_path / "d.json",
            Params(),
        )


def test_infra_requests_come_from_test_exposures(pipeline_run: PipelineRun) -> None:
    import pandas as pd

    test = pd.read_parquet(pipeline_run.training_set).query("split == 'test'")
    requests = infra_requests(test, 5, 100)
    assert len(requests) == 5 and all(len(r["item_ids"]) == 100 for r in requests)
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
    candidate = Scored(("cart", "buy"), two, np.hstack([champ, 1 - champ]), users, slices)
    reordered = Scored(("buy", "cart"), two, np.hstack([1 - champ, champ]), users, slices)
    checks = regression_checks(candidate, reordered, GateParams(bootstrap_samples=50))
    assert all(c["passed"] and c.get("delta", 0) == 0 for c in checks)


def test_infra_candidates_must_fit_the_server_limit() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"gate.infra.candidates \(100\) is over"):
        Params.model_validate({"serving": {"max_candidates": 50}})
