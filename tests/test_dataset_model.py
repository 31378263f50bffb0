"""Models on declared datasets: every model of the zoo reads categorical fields, token bags
and declared numerics; a regression, a binary and a text task learn on the real Olist sample;
the trained model reloads with its schema and scores the same; a table that breaks its
schema's expectations stops `shopguide dataset` with the line named and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from shopguide.config import Params
from shopguide.dataset.examples import build_examples
from shopguide.dataset.gate import gate_step
from shopguide.dataset.inputs import model_config, to_tensors
from shopguide.dataset.learn import predictions, task_report, train_declared
from shopguide.dataset.schema import load_schema, saved_schema
from shopguide.dataset.steps import check_step, train_step
from shopguide.errors import ShopguideError
from shopguide.model.fit import FitSettings, fit
from shopguide.model.store import load_model
from shopguide.model.zoo import MODELS, build
from tests.test_dataset_schema import tiny_schema

ROOT = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def olist_schema(tmp_path: Path, olist: Path, name: str = "olist.yaml") -> Path:
    raw = yaml.safe_load((ROOT / "datasets/olist.yaml").read_text())
    raw["root"] = str(olist)
    path = write_yaml(tmp_path / "olist.yaml", raw)
    if name == "olist.yaml":
        return path
    return write_yaml(tmp_path / name, yaml.safe_load((ROOT / "datasets" / name).read_text()))


def write_shop_files(folder: Path, rows: int = 400) -> None:
    """Orders of shops with a rating that arrives later: `rated` (any rating) and `good`
    (4 or 5 stars, a sub-event of rated: an ESMM/AITM funnel), `stars` a regression; the
    signal is in the shop, the amount, the tags and the note's text."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shop = rng.integers(0, 8, rows)
    good = rng.random(rows) < np.where(shop < 4, 0.8, 0.2)
    rated = good | (rng.random(rows) < 0.4)
    stars = np.where(good, 5, 2)
    notes = np.where(good, "otimo produto", "ruim demais")
    lines = ["order_id,user,shop,ts,amount,tags,note"]
    for i in range(rows):
        lines.append(
            f"o{i},u{i % 50},s{shop[i]},{1_700_000_000 + 3600 * i},{shop[i] * 3 + 1},"
            f"t{shop[i]}|x,{notes[i]}"
        )
    (folder / "orders.csv").write_text("\n".join(lines) + "\n")
    ratings = ["order_id,stars,rated_at"] + [
        f"o{i},{stars[i]},{1_700_000_000 + 3600 * i + 7200}" for i in range(rows) if rated[i]
    ]
    (folder / "ratings.csv").write_text("\n".join(ratings) + "\n")
    (folder / "shops.csv").write_text(
        "shop,region\n" + "".join(f"s{i},r{i % 3}\n" for i in range(8))
    )


def shop_schema(tmp_path: Path, rows: int = 400) -> Path:
    """The shops dataset (`write_shop_files`) and its schema: test_dataset_schema's tiny
    schema with a note (text), three tasks and the shops' split."""
    write_shop_files(tmp_path, rows)
    schema = tiny_schema(tmp_path) | {
        "name": "shops",
        "history": [{"by": "orders.shop", "of": "stars", "fn": "mean"}],
        "tasks": {
            "rated": {
                "type": "binary",
                "column": "ratings.rated_at",
                "op": "gt",
                "value": 0,
                "fill": 0,
            },
            "good": {
                "type": "binary",
                "column": "ratings.stars",
                "op": "ge",
                "value": 4,
                "fill": 0,
            },
            "stars": {"type": "regression", "column": "ratings.stars"},
        },
        "split": {"test_start": "2023-11-27"},
        "text": {"buckets": 4096, "max_tokens": 32},
        "categorical_buckets": 101,
    }
    schema["tables"]["orders"]["columns"]["note"] = "text"
    schema["tables"]["ratings"]["columns"]["stars"] = {"type": "numeric", "min": 1, "max": 5}
    schema["features"]["note"] = "orders.note"
    return write_yaml(tmp_path / "shops.yaml", schema)


def dataset_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`shopguide dataset ARGS` as its own process in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "shopguide.cli", "dataset", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_reads_declared_fields(tmp_path: Path, name: str) -> None:
    schema = load_schema(shop_schema(tmp_path))
    examples = build_examples(schema)
    # an unrated order has no stars (a NaN label: it takes no part in the loss)
    assert examples["stars"].isna().sum() == (examples["rated"] == 0).sum() > 0
    params = Params().model.model_copy(update={"name": name, "chain": {"good": "rated"}})
    config = model_config(examples, schema, params)
    assert config.categorical_features == ("shop",) and config.bag_features == ("tags", "note")
    torch.manual_seed(0)
    model = build(config)
    data = to_tensors(examples, schema, config)
    assert data.codes.shape == (len(examples), 1) and data.bags.shape == (len(examples), 2, 32)
    settings = FitSettings(0.01, 0.0, 0.0, 64, 3, 3, 0, selection="loss")
    fit(model, data, data, settings, description=name)
    out = predictions(model, examples, schema)
    report = task_report(examples, out, schema, samples=10)
    assert report["good"]["auc"] > 0.7, report  # the shop, tags and text carry the signal
    assert np.isfinite(out["stars"]).all()


def test_olist_tasks_of_three_kinds_learn(olist: Path, tmp_path: Path) -> None:
    schema = load_schema(olist_schema(tmp_path, olist))
    examples = build_examples(schema)
    params = Params.model_validate(
        {"train": {"batch_size": 128, "learning_rate": 0.005, "max_epochs": 4}}
    )
    model, _ = train_declared(examples, schema, params)
    test = examples[examples.split == "test"]
    report = task_report(test, predictions(model, test, schema), schema, samples=20)
    assert report["bad_review"]["auc"] > 0.55
    # the protocol's train-mean predictions: RMSE 1.286 (score) and 0.652 (delivery days);
    # the score is barely predictable at purchase time (the protocol's anchor: 1.275)
    assert report["review_score"]["rmse"] < 1.286 * 1.05
    assert report["delivery_days_log1p"]["rmse"] < 0.6


def test_dataset_train_writes_a_model_that_reloads_with_its_schema(
    olist: Path, tmp_path: Path
) -> None:
    schema_path = olist_schema(tmp_path, olist, "olist_review.yaml")
    params = write_yaml(
        tmp_path / "params.yaml",
        {
            "train": {"batch_size": 64, "learning_rate": 0.01, "max_epochs": 1},
            "evaluation": {"bootstrap_samples": 20},
        },
    )
    done = dataset_cli(tmp_path, "train", str(schema_path), "--params", str(params))
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics/dataset_train.json").read_text())
    assert metrics["test"]["bad_review"]["auc"] > 0.85  # a review's text says it is bad
    assert (tmp_path / "reports/datasets/olist_review_examples.json").is_file()
    model_dir = tmp_path / "artifacts/datasets/model"
    model, schema = load_model(model_dir), saved_schema(model_dir)
    card = (model_dir / "MODEL_CARD.md").read_text()
    assert "`message`" in card and "| bad_review | binary | served |" in card
    assert "| review_score | regression | served |" in card
    examples = build_examples(schema)
    test = examples[examples.split == "test"]
    again = task_report(test, predictions(model, test, schema), schema, samples=20)
    assert again["bad_review"]["auc"] == pytest.approx(metrics["test"]["bad_review"]["auc"])
    assert again["review_score"]["rmse"] == pytest.approx(metrics["test"]["review_score"]["rmse"])


def test_a_table_that_breaks_its_expectations_stops_the_step(tmp_path: Path) -> None:
    schema_path = shop_schema(tmp_path)
    orders = (tmp_path / "orders.csv").read_text().splitlines()
    fields = orders[2].split(",")  # line 3 of the file
    fields[4] = "-4"
    orders[2] = ",".join(fields)
    (tmp_path / "orders.csv").write_text("\n".join(orders) + "\n")
    params = write_yaml(tmp_path / "params.yaml", {"train": {"max_epochs": 1}})
    done = dataset_cli(tmp_path, "train", str(schema_path), "--params", str(params))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "expect_column_values_to_be_between on column 'amount'" in done.stderr
    assert "'__line': 3" in done.stderr  # the offending row, by its line in orders.csv
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize(
    ("name", "chain"),
    [("aliexpress", {"conversion": "click"}), ("aliccp", {"purchase": "click"})],
)
def test_impression_logs_train_on_their_own_fields(tmp_path: Path, name: str, chain: dict) -> None:
    """AliExpress and Ali-CCP (real 100-row fixtures): their files split them, every
    categorical and numerical field reaches the model, ESMM chains conversion on click, and
    the conversion is reported over every impression (CTCVR) and among the clicked (CVR)."""
    fixtures = ROOT.parent / "shared/data/fixtures"
    if not (fixtures / f"{name}_train_sample.csv").is_file():
        pytest.skip(f"fixtures not found at {fixtures}")
    schema = load_schema(ROOT / "datasets" / f"{name}.yaml")
    raw = {
        "model": {"name": "esmm", "chain": chain},
        "train": {"max_epochs": 2, "batch_size": 32},
        "evaluation": {"bootstrap_samples": 10},
    }
    params = Params.model_validate(raw)
    metrics = train_step(
        ROOT / "datasets" / f"{name}.yaml",
        params,
        tmp_path / "model",
        tmp_path / "metrics.json",
        tmp_path / "history.csv",
        tmp_path / "reports",
        tmp_path / "examples.parquet",
        root=fixtures,
    )
    (conversion,) = chain
    assert set(metrics["test"]) == {"click", conversion, f"{conversion}_given_click"}
    assert metrics["test"]["click"]["auc"] is not None
    config = load_model(tmp_path / "model").config
    assert len(config.categorical_features) == len(schema.features_of("categorical")) > 10
    assert config.dense_features == tuple(schema.features_of("numeric"))
    assert json.loads((tmp_path / "metrics.json").read_text())["dataset"] == name
    # The gate judges the examples the training wrote, and refuses any other table.
    examples = pd.read_parquet(tmp_path / "examples.parquet")
    judged = gate_step(
        tmp_path / "model",
        tmp_path / "examples.parquet",
        tmp_path / "registry",
        tmp_path / "decision.json",
        params,
    )
    assert {c["task"] for c in judged["checks"]} == {"click", conversion}
    examples.iloc[:-1].to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ShopguideError, match="not the example table the model"):
        gate_step(
            tmp_path / "model",
            tmp_path / "other.parquet",
            tmp_path / "registry",
            tmp_path / "decision.json",
            params,
        )


def readme_block(marker: str) -> str:
    """The fenced block between `<!-- marker -->` and `<!-- /marker -->` in the README."""
    text = (ROOT / "README.md").read_text()
    inner = text.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]
    return inner.strip().split("\n", 1)[1].rsplit("```", 1)[0]


def test_drift_of_a_declared_column_fails_the_check_and_keeps_the_accepted_profile(
    tmp_path: Path,
) -> None:
    schema_path = shop_schema(tmp_path)
    schema, params = load_schema(schema_path), Params()
    reports = tmp_path / "reports"
    summary = check_step(schema_path, params, reports)  # the first run is accepted
    assert set(summary["train_to_test_psi"]) >= {"amount_psi", "shop_psi", "good_psi"}
    check_step(schema_path, params, reports)  # the same data: no drift, accepted again
    accepted = (reports / "shops_accepted_profile.json").read_text()
    report = json.loads((reports / "shops_examples.json").read_text())
    drift = [r for r in report["results"] if r["suite"] == "shops_drift"]
    assert report["success"] and {r["column"] for r in drift} >= {"amount_psi", "good_psi"}
    orders = pd.read_csv(tmp_path / "orders.csv")
    orders["amount"] = orders["amount"] * 10 + 100  # every amount above the old range
    orders.to_csv(tmp_path / "orders.csv", index=False)
    with pytest.raises(ShopguideError, match="amount_psi"):
        check_step(schema_path, params, reports)
    assert (reports / "shops_accepted_profile.json").read_text() == accepted
    assert schema.name == "shops"


def test_idf_weighs_rare_tokens_up_and_empty_slots_out(tmp_path: Path) -> None:
    schema = load_schema(shop_schema(tmp_path))
    examples = build_examples(schema)
    config = model_config(examples, schema, Params().model)
    assert config.bag_idf
    encoder = build(config).encoders[0]
    bags = torch.tensor([[[5, 7, 0]], [[5, 0, 0]], [[5, 9, 0]]])  # 3 bags; 5 in all of them
    encoder.set_idf(bags)
    assert encoder.idf[5] == pytest.approx(1.0)  # log(4 / 4) + 1
    assert encoder.idf[7] == pytest.approx(np.log(4 / 2) + 1)
    weights = encoder.token_weights(bags.flatten(0, 1))
    assert weights[:, 2].eq(0).all() and weights[1, 1] == 0  # empty slots weigh nothing
    assert torch.allclose(weights.norm(dim=1), torch.ones(3))
    assert weights[0, 1] > weights[0, 0]  # the rarer token weighs more
