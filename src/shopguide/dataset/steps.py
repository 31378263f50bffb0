"""The steps of a declared dataset, called by the `shopguide dataset` commands: `check`
validates the schema, its tables and the example table it builds (Great Expectations reports
beside), `train` trains the model of the params on the examples and reports every task on the
test split. The model directory holds the schema it was trained on (`dataset.json`), so the
inputs can be rebuilt wherever the model goes, and its model card (`MODEL_CARD.md`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from shopguide.config import Params
from shopguide.dataset.card import render_dataset_card
from shopguide.dataset.checks import validate_dataset
from shopguide.dataset.drift import split_drift
from shopguide.dataset.examples import EXAMPLES_DIGEST, Tables, write_examples
from shopguide.dataset.learn import predictions, task_report, train_declared
from shopguide.dataset.schema import SCHEMA_FILE, DatasetSchema, load_schema
from shopguide.train import write_outputs
from shopguide.validation import raise_on_failure

log = logging.getLogger(__name__)
CARD_FILE = "MODEL_CARD.md"


def checked_examples(
    schema_path: Path,
    params: Params,
    report_dir: Path,
    root: Path | None = None,
    tables: Tables | None = None,
) -> tuple[DatasetSchema, pd.DataFrame]:
    """(schema, examples) once every suite passed; else the failures, each named. `tables`
    gets the tables as parsed, for a caller that reads them again."""
    schema = load_schema(schema_path)
    report, examples = validate_dataset(
        schema, schema_path, report_dir, root, params.validation.max_drift_psi, tables
    )
    raise_on_failure(report, schema_path)
    return schema, examples


def check_step(
    schema_path: Path, params: Params, report_dir: Path, root: Path | None = None
) -> dict:
    """Validate; the summary holds each declared column's drift from train to test."""
    schema, examples = checked_examples(schema_path, params, report_dir, root)
    split = examples["split"].value_counts()
    summary = {
        "dataset": schema.name,
        "examples": len(examples),
        "train": int(split.get("train", 0)),
        "test": int(split.get("test", 0)),
        "features": {k: schema.features_of(k) for k in ("numeric", "categorical", "bag", "text")},
        "tasks": {t: s.type for t, s in schema.tasks.items()},
        "train_to_test_psi": {
            k: round(float(v), 4) for k, v in split_drift(examples, schema).items()
        },
    }
    log.info("%s", json.dumps(summary))
    return summary


def train_step(
    schema_path: Path,
    params: Params,
    model_dir: Path,
    metrics_path: Path,
    history_path: Path,
    report_dir: Path,
    examples_path: Path,
    root: Path | None = None,
) -> dict:
    """Validate, build the examples, train, report each task on the test split (bootstrap
    intervals), and write the examples (for the gate), then the model (with its schema and
    the examples' digest), metrics and history atomically."""
    schema, examples = checked_examples(schema_path, params, report_dir, root)
    model, result = train_declared(examples, schema, params)
    test = examples[examples["split"] == "test"]
    evaluation = params.evaluation
    metrics = {
        "dataset": schema.name,
        "model": params.model.name,
        "best_epoch": result.best_epoch,
        "train_examples": int((examples["split"] == "train").sum()),
        "test": task_report(
            test,
            predictions(model, test, schema),
            schema,
            evaluation.bootstrap_samples,
            evaluation.confidence,
            evaluation.seed,
        ),
    }

    schema_text = schema.model_dump_json(by_alias=True, indent=2)
    digest = write_examples(examples, examples_path)
    write_outputs(
        model,
        model_dir,
        metrics,
        metrics_path,
        result.history,
        history_path,
        {
            SCHEMA_FILE: schema_text,
            CARD_FILE: render_dataset_card(schema, metrics),
            EXAMPLES_DIGEST: digest,
        },
    )
    log.info("%s: model in %s, test metrics %s", schema.name, model_dir, metrics["test"])
    return metrics


def features_step(
    schema_path: Path, params: Params, repo: Path, report_dir: Path, root: Path | None = None
) -> dict:
    """Validate, then generate the dataset's Feast repo at `repo`, `feast apply` it and write
    the lookups and history as of the data's end into its online store."""
    tables: Tables = {}
    schema, _ = checked_examples(schema_path, params, report_dir, root, tables)
    from shopguide.dataset.online import write_repo  # Feast: only this step needs it

    return write_repo(schema, repo, root, tables)
