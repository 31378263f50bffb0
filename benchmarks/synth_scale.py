"""Protocol synth-scale: synth -> ingest -> validate -> features at a given event count.

Each step runs in its own child process so its wall time and peak resident memory are its own
(os.wait4); the 1-minute load average is recorded before and after each (shared machine).
Usage: nice python benchmarks/synth_scale.py --events 1000000 --out /tmp/synth1m
[--offline-join feast --offline-store file|duckdb] (the training-set join; default the params'
DuckDB ASOF JOIN. Feast's stores ran out of memory at 1M events: benchmarks/offline_store.py)
[--snapshot-interval-s user=3600,item=3600,category=3600] (feature grain per entity over the
params' 1 s; the hourly grain of the figures before exact features)
[--users 20000 --items 100000] (a denser world than the default events / 50 and events / 10;
benchmarks/synth_quality.py and synth_ceiling.py then name their results with -<users>u, or
-<users>u-<items>i where items are not five per user)
[--set data.duckdb_threads=16 ...] (any params key) [--no-validate] (no Great Expectations on
the machine, as on a GPU machine: benchmarks/gpu_throughput.sh)
Prints one JSON line per step and writes <out>/synth_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from sklearn.metrics import roc_auc_score

from shopguide.config import Params
from shopguide.features import fresh_repo
from shopguide.synth import TASKS

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "shopguide.cli"]


EVENTS_PER_USER, EVENTS_PER_ITEM = 50, 10  # the default world's id growth with events


def world_size(events: int, users: int | None, items: int | None) -> dict[str, int]:
    """`synth.events/users/items` of a run: ids grow with events (a user has about 38
    exposures at any size) unless a denser world is asked for."""
    return {
        "events": events,
        "users": users or max(20_000, events // EVENTS_PER_USER),
        "items": items or max(100_000, events // EVENTS_PER_ITEM),
    }


def density_suffix(synth: dict) -> str:
    """A results file name's mark of a run whose world is not the default for its events:
    `-<users>u` while it keeps the default items per user, else `-<users>u-<items>i`, so
    that no two worlds of the same size share a name."""
    events, users, items = synth["events"], synth["users"], synth["items"]
    if world_size(events, users, items) == world_size(events, None, None):
        return ""
    default_ratio = items * EVENTS_PER_ITEM == users * EVENTS_PER_USER
    return f"-{users}u" if default_ratio else f"-{users}u-{items}i"


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=YAML", help="params override"
    )


def apply_overrides(raw: dict, items: list[str]) -> None:
    """`--set SECTION.KEY=YAML` values into the raw params (validated when a step loads them)."""
    for item in items:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)


def run_step(name: str, args: list[str], rows: int) -> dict:
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"step {name} failed: {' '.join(args)}")
    result = {
        "step": name,
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),
        "rows": rows,
        "rows_per_s": round(rows / wall),
        "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    print(json.dumps(result), flush=True)
    return result


def aucs(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Test AUC per generator task, `labels` and `scores` with one column per task."""
    return {
        t: round(float(roc_auc_score(labels[:, j], scores[:, j])), 4) for j, t in enumerate(TASKS)
    }


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """The synthetic world of a script that builds its own data (synth_ceiling.py,
    synth_bound.py)."""
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--users", type=int, help="default: events / 50, at least 20,000")
    parser.add_argument("--items", type=int, help="default: events / 10, at least 100,000")
    add_overrides(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")


def world_run(a: argparse.Namespace) -> tuple[dict, Params, Path, Path, Path]:
    """`a.out` with the run's params.yaml (its world size, `--set` overrides) and the synthetic
    events' exposures, from `shopguide synth` and `ingest` unless a rerun finds them there:
    (raw and validated params, out dir, true probabilities, exposures)."""
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["synth"].update(world_size(a.events, a.users, a.items))
    apply_overrides(raw, a.set)
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    csv, truth, exposures = out / "events.csv", out / "truth.parquet", out / "exposures.parquet"
    cli = ["--params", str(params)]
    if not exposures.is_file():
        run_step("synth", [*CLI, "synth", "--out", str(csv), "--truth", str(truth), *cli], 0)
        ingest = [*CLI, "ingest", "--source", str(csv), "--events", str(out / "events.parquet")]
        ingest += ["--exposures", str(exposures), "--queries", str(out / "queries.parquet")]
        ingest += ["--summary", str(out / "ingest.json")]
        run_step("ingest", [*ingest, *cli], 0)
    return raw, Params.model_validate(raw), out, truth, exposures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--offline-join", choices=["duckdb_asof", "feast"], default="duckdb_asof")
    parser.add_argument("--offline-store", choices=["duckdb", "file"], default="file")
    parser.add_argument(
        "--snapshot-interval-s",
        default="",
        help="ENTITY=SECONDS[,...] over the params' features.snapshot_interval_s (default: as is)",
    )
    parser.add_argument("--users", type=int, help="default: events / 50, at least 20,000")
    parser.add_argument("--items", type=int, help="default: events / 10, at least 100,000")
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="skip the validation step (a machine without Great Expectations: GPU runs)",
    )
    add_overrides(parser)
    a = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for entry in filter(None, a.snapshot_interval_s.split(",")):
        entity, _, seconds = entry.partition("=")
        if entity not in raw["features"]["snapshot_interval_s"] or not seconds.isdigit():
            parser.error(f"--snapshot-interval-s: {entry!r} is not ENTITY=SECONDS")
        raw["features"]["snapshot_interval_s"][entity] = int(seconds)
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw["synth"].update(world_size(a.events, a.users, a.items))
    raw["validation"]["report_dir"] = str(out / "validation")
    raw["features"]["repo"] = str(out / "feature_repo")
    raw["features"]["offline_join"] = a.offline_join
    apply_overrides(raw, a.set)
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    repo = fresh_repo(ROOT / "feature_repo", out / "feature_repo")
    store = yaml.safe_load((ROOT / "feature_repo/feature_store.yaml").read_text())
    store["offline_store"] = {"type": a.offline_store}
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(store))
    csv, truth = out / "events.csv", out / "truth.parquet"
    events, exposures = out / "events.parquet", out / "exposures.parquet"
    p = ["--params", str(params)]
    steps = [
        run_step("synth", [*CLI, "synth", "--out", str(csv), "--truth", str(truth), *p], a.events),
        run_step(
            "ingest",
            [
                *CLI,
                "ingest",
                "--source",
                str(csv),
                "--events",
                str(events),
                "--exposures",
                str(exposures),
                "--queries",
                str(out / "queries.parquet"),
                "--summary",
                str(out / "ingest.json"),
                *p,
            ],
            a.events,
        ),
    ]
    if not a.no_validate:
        validate = [*CLI, "validate", "--suite", "events", "--input", str(events), *p]
        steps.append(run_step("validate", validate, a.events))
    steps.append(
        run_step(
            "features",
            [
                *CLI,
                "features",
                "--events",
                str(events),
                "--exposures",
                str(exposures),
                "--queries",
                str(out / "queries.parquet"),
                "--out",
                str(out / "training_set.parquet"),
                "--ranking-out",
                str(out / "ranking_set.parquet"),
                "--summary",
                str(out / "features.json"),
                *p,
            ],
            a.events,
        )
    )
    subprocess.run(
        [
            *CLI,
            "synth-bayes",
            "--truth",
            str(truth),
            "--exposures",
            str(exposures),
            "--queries",
            str(out / "queries.parquet"),
            "--out",
            str(out / "bayes.json"),
            *p,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    report = {
        "protocol": "synth-scale",
        "events": a.events,
        "users": raw["synth"]["users"],
        "items": raw["synth"]["items"],
        "offline_join": a.offline_join,
        "offline_store": a.offline_store if a.offline_join == "feast" else None,
        "validated": not a.no_validate,
        "steps": steps,
        "features": json.loads((out / "features.json").read_text()),
        "bayes_auc": json.loads((out / "bayes.json").read_text()),
    }
    (out / "synth_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"features": report["features"]["seconds"], "bayes": report["bayes_auc"]}))


if __name__ == "__main__":
    main()
