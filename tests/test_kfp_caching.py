"""KFP caching, run for real: kfp 2.17's local runner caches like the backend (component,
image, parameter values, input artifacts), so two runs of the training pipeline show which
steps an unchanged re-run takes from the cache, and that changed data is read again.

Its own module, so pytest-xdist (--dist loadfile) runs it beside tests/test_kfp_pipeline.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kfp import local

from pipelines.training_pipeline import training_pipeline
from shopguide.config import Params, load_params
from shopguide.io import read_json
from tests.conftest import copy_feature_repo, write_params

pytestmark = [
    pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Task .* settings \\[.*\\]:UserWarning"),
]


def _cached_run(root: Path, cache: Path, params: Params, raw: Path, feature_repo: Path):
    """One training-pipeline run under the local runner with KFP's caching on (kfp 2.17 keys it
    like the backend: component, image, parameter values, input artifacts); returns the run's
    directory, where only the tasks that executed have a subdirectory."""
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=True,
        cache_root=str(cache),
    )
    training_pipeline(
        raw_path=str(raw),
        feature_repo=str(feature_repo),
        registry=str(feature_repo.parent / "registry"),
        validation_dir=str(feature_repo.parent / "validation"),
        params_json=params.model_dump_json(),
        deploy=False,
    )
    (run_dir,) = root.iterdir()
    return run_dir


@pytest.mark.slow
def test_an_unchanged_rerun_hits_the_cache_and_new_data_does_not(
    half_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caching is correct and useful: a re-run on the same data takes ingest, features, the
    checks, train, finetune and evaluate from the cache and runs only the steps that read
    state outside their inputs; it still puts the Feast repo right when another run rewrote
    it; and a raw file replaced at the same path is read again."""
    from shopguide.caching import REPO_MARK, mark_feature_repo

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw.csv"
    raw.write_bytes(half_sample.read_bytes())
    feature_repo = copy_feature_repo(tmp_path / "feature_repo")
    # Cheap settings: what is tested is which steps run, not the model.
    floors = dict.fromkeys(("click", "cart", "fav", "buy"), 0.0)
    params = load_params(
        write_params(
            tmp_path,
            raw,
            train={"max_epochs": 2},
            finetune={"max_epochs": 1},
            evaluation={"bootstrap_samples": 50},
            gate={
                "infra": {"enabled": False},
                "auc_floor": floors,
                "gauc_floor": {},
                "ranking_auc_floor": None,
                "bootstrap_samples": 50,
            },
        )
    )
    cache = tmp_path / "kfp_cache"

    first = _cached_run(tmp_path / "run1", cache, params, raw, feature_repo)
    ran_first = {p.name for p in first.iterdir()}
    assert {"ingest", "features", "train", "finetune", "evaluate"} <= ran_first
    training_set = first / "features" / "training_set"
    assert (feature_repo / REPO_MARK).read_text() == str(training_set)
    # ROC and confusion matrix of every task as KFP ClassificationMetrics, which the UI plots.
    evaluation = read_json(first / "evaluate" / "evaluation")
    plotted = {}
    for output in first.glob("for-loop-*/task-plots/executor_output.json"):
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

    # Another run rewrote the shared Feast repo in between.
    mark_feature_repo(feature_repo, "another run's training set")
    second = _cached_run(tmp_path / "run2", cache, params, raw, feature_repo)
    ran = {p.name for p in second.iterdir()}
    assert ran == {"fingerprint-inputs", "validate", "sync-feature-repo", "gate", "promote"}, ran
    # The cached training set is the first run's, and the repo holds it again.
    assert (feature_repo / REPO_MARK).read_text() == str(training_set)
    assert (feature_repo / "data" / "online_store.db").is_file()

    # The raw file replaced at the same path: ingest reads it again (and its validation fails
    # on the few events left, which ends the run early).
    raw.write_text("".join(half_sample.read_text().splitlines(keepends=True)[:500]))
    with pytest.raises(RuntimeError, match=r"Inner task failed: .*validate"):
        _cached_run(tmp_path / "run3", cache, params, raw, feature_repo)
    (third,) = (tmp_path / "run3").iterdir()
    assert {"fingerprint-inputs", "ingest", "validate"} <= {p.name for p in third.iterdir()}
