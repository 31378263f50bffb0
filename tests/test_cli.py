"""The `shopguide` command as users run it: exit codes and messages on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shopguide.registry import champion, versions
from tests.conftest import PipelineRun, write_params

STEPS = (
    "ingest",
    "validate",
    "features",
    "train",
    "finetune",
    "evaluate",
    "gate",
    "promote",
    "serve",
)


def shopguide(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shopguide.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_help_lists_every_step() -> None:
    out = shopguide("--help")
    assert out.returncode == 0
    for name in STEPS:
        assert name in out.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("1,2,3,pv\n" * 20, "Expected Number of Columns: 5 Found: 4"),
        ("1,2,3,pv,yesterday\n" * 20, "column 'ts'"),
        ("", "file is empty"),
    ],
    ids=["missing-column", "non-numeric-timestamp", "empty-file"],
)
def test_bad_csv_exits_with_clear_error_and_registry_untouched(
    pipeline_run: PipelineRun, tmp_path: Path, content: str, expected: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    params = write_params(tmp_path, bad)
    registry_before = [v.name for v in versions(pipeline_run.registry)]
    champ = champion(pipeline_run.registry).name
    out = shopguide(
        "ingest",
        "--params",
        str(params),
        "--events",
        str(tmp_path / "e.parquet"),
        "--exposures",
        str(tmp_path / "x.parquet"),
        "--queries",
        str(tmp_path / "q.parquet"),
        "--summary",
        str(tmp_path / "s.json"),
    )
    assert out.returncode == 2
    assert expected in out.stderr and str(bad) in out.stderr.replace("\n", "")
    assert "Traceback" not in out.stderr
    for written in ("e.parquet", "x.parquet", "q.parquet"):
        assert not (tmp_path / written).exists()
    assert [v.name for v in versions(pipeline_run.registry)] == registry_before
    assert champion(pipeline_run.registry).name == champ


@pytest.mark.parametrize("output", ["--events", "--summary"])
def test_ingest_refuses_an_output_path_that_is_a_directory(
    sample: Path, tmp_path: Path, output: str
) -> None:
    """Was an IsADirectoryError traceback, exit 1, for --events (issue 27)."""
    outputs = {
        "--events": tmp_path / "e.parquet",
        "--exposures": tmp_path / "x.parquet",
        "--summary": tmp_path / "s.json",
    }
    outputs[output].mkdir()
    (outputs[output] / "keep.txt").write_text("mine")
    params = write_params(tmp_path, sample)
    args = [a for option, path in outputs.items() for a in (option, str(path))]
    out = shopguide("ingest", "--params", str(params), *args)
    assert out.returncode == 2
    assert f"{outputs[output]}: is a directory" in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr
    assert (outputs[output] / "keep.txt").read_text() == "mine"


def test_unknown_param_key_is_named(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochz: 3\n")
    out = shopguide("train", "--params", str(params))
    assert out.returncode == 2
    assert "train.epochz" in out.stderr
    assert "Traceback" not in out.stderr


def test_validation_failure_stops_with_listed_expectations(
    pipeline_run: PipelineRun, tmp_path: Path
) -> None:
    import pandas as pd

    events = pd.read_parquet(pipeline_run.events)
    events.loc[events.index[:500], "behavior"] = "click"
    broken = tmp_path / "events.parquet"
    events.to_parquet(broken)
    out = shopguide(
        "validate",
        "--suite",
        "events",
        "--input",
        str(broken),
        "--report-dir",
        str(tmp_path / "reports"),
        "--params",
        str(pipeline_run.params_path),
    )
    assert out.returncode == 2
    text = " ".join(out.stderr.split())
    assert "behavior" in text and "click" in text
    assert (tmp_path / "reports/events.json").is_file()
    assert (tmp_path / "reports/data_docs/index.html").is_file()


def test_gate_refusal_has_its_own_exit_code(pipeline_run: PipelineRun, tmp_path: Path) -> None:
    strict = write_params(
        tmp_path,
        pipeline_run.params.data.raw_path,
        gate={"auc_floor": {"click": 0.99, "cart": 0.99, "fav": 0.99, "buy": 0.99}},
    )
    out = shopguide(
        "gate",
        "--params",
        str(strict),
        "--evaluation",
        str(pipeline_run.evaluation),
        "--training-set",
        str(pipeline_run.training_set),
        "--ranking-set",
        str(pipeline_run.ranking_set),
        "--registry",
        str(tmp_path / "empty-registry"),
        "--decision",
        str(tmp_path / "decision.json"),
    )
    assert out.returncode == 3
    assert "gate refused" in out.stderr
    assert (tmp_path / "decision.json").is_file()
    # promote after the refusal: an error as the README says, the champion unchanged
    registry = strict.parent / "registry"
    promote = shopguide(
        "promote",
        "--params",
        str(strict),
        "--model-dir",
        str(pipeline_run.candidate),
        "--decision",
        str(tmp_path / "decision.json"),
        "--evaluation",
        str(pipeline_run.evaluation),
        "--training-set",
        str(pipeline_run.training_set),
        "--parent",
        str(pipeline_run.pretrained),
        "--out",
        str(tmp_path / "promotion.json"),
    )
    assert promote.returncode == 3
    text = " ".join(promote.stderr.split())
    assert "the gate refused the candidate; not promoted, champion unchanged" in text
    assert "auc_floor" in text and "Traceback" not in text
    assert not registry.exists()
    assert '"promoted": false' in (tmp_path / "promotion.json").read_text()


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("taobao_mtl.py", ["--training-set", "missing.parquet"], "training set not found"),
        ("taobao_mtl.py", ["--params", "missing.yaml"], "parameters file not found"),
        ("transfer_curve.py", ["--params", "missing.yaml"], "parameters file not found"),
    ],
)
def test_benchmark_scripts_end_bad_input_with_a_message(
    tmp_path: Path, script: str, args: list[str], message: str
) -> None:
    """The benchmark scripts report a ShopguideError as the CLI does: its exit code and message,
    no traceback, nothing written."""
    root = Path(__file__).resolve().parents[1]
    params = ["--params", root / "params.yaml"]  # a later --params in `args` wins
    command = [sys.executable, root / "benchmarks" / script, *params, *args]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())
