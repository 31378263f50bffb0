"""The training and fine-tuning pipelines run whole under KFP's local subprocess runner, on
half the real sample (every other user): what is tested is the orchestration, each step's
artifacts handed to the next, the gate's branch, the registry and KFP's caching (kfp 2.17's
local runner caches like the backend: component, image, parameter values, input artifacts),
not the model's quality (asserted on the full sample by the step tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from kfp import local

from pipelines.finetune_pipeline import finetune_pipeline
from pipelines.training_pipeline import training_pipeline
from shopguide.config import Params, load_params
from shopguide.io import fingerprint, read_json
from shopguide.registry import champion, versions
from tests.conftest import NO_MODEL_FLOORS, copy_feature_repo, write_params

# The local runner warns that the image names no Python (its tasks run in this venv instead)
# and that display names do nothing locally; both are expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Task .* settings \\[.*\\]:UserWarning"),
]


def _run(
    root: Path,
    params: Params,
    raw: Path,
    feature_repo: Path,
    registry: Path,
    cache: Path | None = None,
):
    """Run the whole pipeline under the local subprocess runner, with KFP's caching when given
    a `cache` root; return its outcome and run dir.

    Each run gets its own pipeline root, so the run's one directory holds one subdirectory per
    task that executed (named after its component; a task taken from the cache has none).
    """
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=cache is not None,
        cache_root=str(cache) if cache else None,
    )
    task = training_pipeline(
        raw_path=str(raw),
        feature_repo=str(feature_repo),
        registry=str(registry),
        validation_dir=str(registry.parent / "validation"),
        params_json=params.model_dump_json(),
        deploy=False,
    )
    (run_dir,) = root.iterdir()
    return task.output, run_dir


@pytest.mark.slow
def test_failed_validation_stops_the_run(
    half_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    feature_repo = copy_feature_repo(tmp_path / "feature_repo")
    params = load_params(write_params(tmp_path, half_sample, validation={"min_events": 10**9}))
    root = tmp_path / "kfp_root"
    with pytest.raises(RuntimeError, match=r"Inner task failed: .*validate"):
        _run(root, params, half_sample, feature_repo, tmp_path / "registry")
    (run_dir,) = root.iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["fingerprint-inputs", "ingest", "validate"]
    assert not (feature_repo / "data").exists()


@pytest.mark.slow
def test_local_runs_promote_cache_and_refuse_a_finetune(
    half_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training pipeline promotes; the fine-tuning pipeline, held to floors no model can
    reach, takes the refusal branch and leaves that champion in place. Caching is correct and
    useful: a re-run on the same data takes ingest, features, the checks, train, finetune and
    evaluate from the cache and runs only the steps that read state outside their inputs; it
    still puts the Feast repo right when another run rewrote it; and a raw file replaced at the
    same path is read again."""
    from shopguide.caching import REPO_MARK, mark_feature_repo

    # Tasks inherit the working directory; keep anything they might drop there out of the repo.
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw.csv"
    raw.write_bytes(half_sample.read_bytes())
    feature_repo = copy_feature_repo(tmp_path / "feature_repo")
    registry = tmp_path / "registry"
    # Two epochs and the train step's fine-tune to the new categories in one. On half the
    # sample the model's floors are not what is tested (test_gate holds the rules): the first
    # run is held to none but the serving check, so it takes the promotion branch.
    fewer = {"train": {"max_epochs": 2}, "finetune": {"max_epochs": 1}}
    params = load_params(write_params(tmp_path, raw, gate=NO_MODEL_FLOORS, **fewer))
    kfp_root, cache = tmp_path / "kfp_root", tmp_path / "kfp_cache"

    outcome, run_dir = _run(kfp_root / "pass", params, raw, feature_repo, registry, cache)
    first = champion(registry)
    assert first is not None
    assert outcome == f"promoted {first.name}"
    record = read_json(run_dir / "promote" / "promotion")
    assert record["promoted"] is True
    assert record["version"] == first.name
    assert (run_dir / "promote" / "inference_service").is_file()
    assert first.metadata["parent"] == fingerprint(run_dir / "train" / "model")
    assert not (run_dir / "deploy-champion").exists()  # deploy=False: no cluster here
    assert not (run_dir / "report-refusal").exists()
    # The accepted event profile outlives the run's own artifacts: the next run checks drift.
    assert (tmp_path / "validation" / "accepted_profile.json").is_file()
    # The gate scored the candidate artifact it was handed, not a path from another task.
    decision = read_json(run_dir / "gate" / "decision")
    assert decision["candidate"].startswith(str(run_dir / "finetune"))
    assert any(c["rule"].startswith("serving") and c["passed"] for c in decision["checks"])
    training_set = run_dir / "features" / "training_set"
    assert (feature_repo / REPO_MARK).read_text() == str(training_set)
    # ROC and confusion matrix of every task as KFP ClassificationMetrics, which the UI plots.
    evaluation = read_json(run_dir / "evaluate" / "evaluation")
    plotted = {}
    for output in run_dir.glob("for-loop-*/task-plots/executor_output.json"):
        (plots,) = read_json(output)["artifacts"]["plots"]["artifacts"]
        plotted[plots["metadata"]["task"]] = plots["metadata"]
    assert set(plotted) == set(params.protocol.tasks)
    for task, metadata in plotted.items():
        curve = metadata["confidenceMetrics"]
        assert len(curve) > 10 and {"recall", "falsePositiveRate"} <= set(curve[0])
        matrix = metadata["confusionMatrix"]
        assert [c["displayName"] for c in matrix["annotationSpecs"]] == ["negative", "positive"]
        counts = [row["row"] for row in matrix["rows"]]
        assert sum(counts[1]) == evaluation["overall"][task]["positives"]
        assert sum(map(sum, counts)) == evaluation["overall"][task]["rows"]

    # Fine-tune the champion on the five busiest categories under unreachable floors.
    frame = pd.read_parquet(training_set)
    new_ids = [int(c) for c in frame["category_id"].value_counts().index[:5]]
    strict = params.model_copy(
        update={
            "gate": params.gate.model_copy(
                update={"auc_floor": dict.fromkeys(params.protocol.tasks, 0.99)}
            ),
            # Refused whatever it learns: one epoch is enough to reach the gate.
            "finetune": params.finetune.model_copy(update={"max_epochs": 1}),
        }
    )
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(kfp_root / "ft"))
    tuned = finetune_pipeline(
        new_category_ids=new_ids,
        raw_path=str(raw),
        feature_repo=str(feature_repo),
        registry=str(registry),
        validation_dir=str(tmp_path / "validation"),
        params_json=strict.model_dump_json(),
        deploy=False,
    )
    (ft_dir,) = (kfp_root / "ft").iterdir()
    # Its events were checked for drift against the first run's accepted profile.
    reports = [json.loads(f.read_text()) for f in ft_dir.rglob("*.json") if f.stat().st_size]
    drift = [
        r
        for rep in reports
        if isinstance(rep, dict)
        for r in rep.get("results") or []
        if r.get("suite") == "drift"
    ]
    assert drift and all(r["success"] for r in drift), drift
    assert read_json(ft_dir / "finetune" / "metrics")["finetune_rows"] > 0
    assert tuned.output.startswith("refused: auc_floor")
    decision = read_json(ft_dir / "gate" / "decision")
    assert decision["champion"] == first.name
    assert decision["candidate"].startswith(str(ft_dir / "finetune"))
    refusal = read_json(ft_dir / "report-refusal" / "refusal")
    assert refusal["promoted"] is False
    assert refusal["champion"] == first.name
    assert refusal["reasons"]
    assert not (ft_dir / "promote").exists()
    assert champion(registry) == first
    assert [v.name for v in versions(registry)][-1] == first.name

    # The training pipeline again on the same data, after another run rewrote the shared Feast
    # repo: only the steps that read state outside their inputs execute.
    mark_feature_repo(feature_repo, "another run's training set")
    _, second = _run(kfp_root / "cached", params, raw, feature_repo, registry, cache)
    ran = {p.name for p in second.iterdir()}
    assert ran == {"fingerprint-inputs", "validate", "sync-feature-repo", "gate", "promote"}, ran
    # The cached training set is the first run's, and the repo holds it again.
    assert (feature_repo / REPO_MARK).read_text() == str(training_set)
    assert (feature_repo / "data" / "online_store.db").is_file()

    # The raw file replaced at the same path: ingest reads it again (and its validation fails
    # on the few events left, which ends the run early).
    raw.write_text("".join(half_sample.read_text().splitlines(keepends=True)[:500]))
    with pytest.raises(RuntimeError, match=r"Inner task failed: .*validate"):
        _run(kfp_root / "changed", params, raw, feature_repo, registry, cache)
    (third,) = (kfp_root / "changed").iterdir()
    assert {"fingerprint-inputs", "ingest", "validate"} <= {p.name for p in third.iterdir()}
