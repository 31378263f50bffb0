"""Feast offline stores compared on the point-in-time training set (protocol synth-scale).

Takes a directory left by benchmarks/synth_scale.py (exposures + feature tables under
feature_repo/data) and builds the training set with each offline store in its own child
process, measuring wall time and peak resident memory (os.wait4). Each child's address space is
capped at --limit-gb (RLIMIT_AS) so a runaway store fails on its own instead of the machine.
Usage: nice python benchmarks/offline_store.py --run /tmp/synth1m --stores duckdb file
The duckdb store needs `pip install 'ibis-framework[duckdb]>=10'` (feast[duckdb]; torch untouched).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

CHILD = """
import sys
from pathlib import Path
from shopguide.features import apply_repo, feast_training_set
repo, exposures, out = map(Path, sys.argv[1:4])
store = apply_repo(repo)
print(feast_training_set(store, exposures, out))
"""


def prepare(run: Path, store: str) -> Path:
    repo = run / f"repo_{store}"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(
        run / "feature_repo", repo, ignore=shutil.ignore_patterns("*.db", "__pycache__")
    )
    config = yaml.safe_load((repo / "feature_store.yaml").read_text())
    config["offline_store"] = {"type": store}
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return repo


def measure(run: Path, store: str, limit_gb: float) -> dict:
    repo = prepare(run, store)
    out = run / f"training_set_{store}.parquet"
    limit = int(limit_gb * 1024**3)

    def cap() -> None:  # address-space cap so a runaway store fails here, not the machine
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(repo), str(run / "exposures.parquet"), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=cap,
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    rows = child.stdout.read().decode().strip().splitlines()
    return {
        "store": store,
        "ok": code == 0,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),
        "training_rows": int(rows[-1]) if code == 0 and rows else None,
        "address_space_cap_gb": limit_gb,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--stores", nargs="+", default=["duckdb", "file"])
    parser.add_argument("--limit-gb", type=float, default=16.0)
    a = parser.parse_args()
    results = []
    for store in a.stores:
        results.append(measure(a.run.resolve(), store, a.limit_gb))
        print(json.dumps(results[-1]), flush=True)
    (a.run / "offline_store.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
