"""Load benchmark of the serving endpoint, protocol serving-v1 (see docs/benchmarks.md).

One command runs the whole protocol against a fresh `shopguide serve` on a free loopback port:

    python benchmarks/serving_load.py                      # 1 and 8 clients, 10 s + 60 s each
    python benchmarks/serving_load.py --soak 300           # and a 5-minute soak at 8 clients
    python benchmarks/serving_load.py --clients --soak 300 # the soak alone

Protocol serving-v1 (../shared/benchmarks/README.md), as implemented here:

* server: `shopguide serve` on the registry's champion, features from the Feast online store,
  one process, torch on one thread; bound to 127.0.0.1; nothing else is targeted.
* requests: v1 predict, one instance per request, 100 candidates; users and items drawn
  uniformly (seeded) from the distinct ids of the training set, so every lookup hits the store.
* load: closed loop, N client processes (separate from the server), each sending its next
  request when the previous answer arrives, over one keep-alive connection.
* phases: 10 s warm-up (discarded), then 60 s measured; latency is client-side wall time
  from sending the request to reading the whole answer.
* targets: 1 client p99 <= 20 ms; 8 clients >= 200 requests/s with zero non-2xx answers.
* soak: 8 clients for the soak duration after the warm-up; the server's resident memory is
  sampled every 5 s and must stay within 10% of its first sample; zero errors.

Every phase has a deadline and the server is stopped at the end whatever happened, so the run
always ends by itself. Results go to a JSON file and a Markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PROTOCOL = "serving-v1"


# --- requests ---------------------------------------------------------------------------------


def request_pool(training_set: Path, size: int, candidates: int, seed: int) -> list[bytes]:
    """Pre-encoded v1 bodies: a seeded uniform draw of users and items of the training set."""
    import pandas as pd

    frame = pd.read_parquet(training_set, columns=["user_id", "item_id"])
    users = np.sort(frame["user_id"].unique())
    items = np.sort(frame["item_id"].unique())
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(size):
        user = int(rng.choice(users))
        chosen = rng.choice(items, size=candidates, replace=False).tolist()
        bodies.append(json.dumps({"instances": [{"user_id": user, "item_ids": chosen}]}).encode())
    return bodies


# --- the load generator (separate processes) --------------------------------------------------


def _client(
    worker: int,
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    start_at: float,
    stop_at: float,
    results: mp.Queue,
) -> None:
    """Closed loop until `stop_at` (time.time()); puts (send times, latencies, statuses)."""
    sends, latencies, statuses = [], [], []
    headers = {"content-type": "application/json"}
    connection = http.client.HTTPConnection(host, port, timeout=10)
    k = worker * 7919
    while time.time() < start_at:
        time.sleep(0.001)
    while True:
        now = time.time()
        if now >= stop_at:
            break
        body = bodies[k % len(bodies)]
        k += 1
        t0 = time.perf_counter()
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            status = response.status
            if status == 200 and b'"model_version"' not in payload:
                status = -2  # a 200 without a ranking counts as an error
        except (OSError, http.client.HTTPException):
            status = -1
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=10)
        latencies.append(time.perf_counter() - t0)
        sends.append(now)
        statuses.append(status)
    connection.close()
    results.put(
        (
            worker,
            np.array(sends, np.float64),
            np.array(latencies, np.float64),
            np.array(statuses, np.int32),
        )
    )


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (all its threads) so far."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))


def run_load(
    url: str,
    bodies: list[bytes],
    clients: int,
    warmup_s: float,
    duration_s: float,
    server_pid: int | None = None,
    candidates: int = 100,
) -> dict:
    """`clients` processes for warm-up + duration; statistics of the measured part only, and
    the server's CPU time over it when its pid is known."""
    parts = urlsplit(url)
    path = "/v1/models/shopguide:predict" if not parts.path.strip("/") else parts.path
    context = mp.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 2.0  # let every process start before the clock runs
    measure_from = start_at + warmup_s
    stop_at = measure_from + duration_s
    procs = [
        context.Process(
            target=_client,
            args=(w, parts.hostname, parts.port, path, bodies, start_at, stop_at, results),
            daemon=True,
        )
        for w in range(clients)
    ]
    for p in procs:
        p.start()
    _sleep_until(measure_from)
    cpu_start = cpu_seconds(server_pid)
    _sleep_until(stop_at)
    cpu_end = cpu_seconds(server_pid)
    collected = []
    deadline = stop_at + 30
    while len(collected) < clients and time.time() < deadline:
        with contextlib.suppress(Exception):
            collected.append(results.get(timeout=1))
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    if len(collected) < clients:
        raise RuntimeError(f"only {len(collected)} of {clients} clients reported back")
    sends = np.concatenate([c[1] for c in collected])
    latencies = np.concatenate([c[2] for c in collected])
    statuses = np.concatenate([c[3] for c in collected])
    measured = sends >= measure_from
    lat_ms = latencies[measured] * 1000
    ok = (statuses[measured] >= 200) & (statuses[measured] < 300)
    n = int(measured.sum())
    by_status: dict[str, int] = {}
    for s in statuses[measured]:
        by_status[str(int(s))] = by_status.get(str(int(s)), 0) + 1
    server_cpu = None if cpu_start is None or cpu_end is None else cpu_end - cpu_start
    return {
        "server_cpu_cores": round(server_cpu / duration_s, 2) if server_cpu is not None else None,
        "server_cpu_ms_per_request": (
            round(server_cpu / max(int(ok.sum()), 1) * 1000, 2) if server_cpu is not None else None
        ),
        "clients": clients,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "requests": n,
        "ok": int(ok.sum()),
        "non_2xx": n - int(ok.sum()),
        "by_status": by_status,
        "requests_per_s": round(int(ok.sum()) / duration_s, 1),
        "candidates_per_s": round(int(ok.sum()) / duration_s * candidates, 0),
        "latency_ms": {
            q: round(float(np.percentile(lat_ms, p)), 2) if n else None
            for q, p in (
                ("p50", 50),
                ("p90", 90),
                ("p95", 95),
                ("p99", 99),
                ("p99_9", 99.9),
                ("max", 100),
            )
        },
    }


# --- the server under test ----------------------------------------------------------------------


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and its anonymous / file-backed parts, KiB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def soak(
    url: str,
    pid: int,
    bodies: list[bytes],
    clients: int,
    warmup_s: float,
    seconds: float,
    candidates: int = 100,
):
    """Load for warm-up + `seconds` while sampling the server's memory every 5 s."""
    import threading

    outcome: dict = {}

    def load() -> None:
        try:
            outcome["result"] = run_load(url, bodies, clients, warmup_s, seconds, pid, candidates)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=load, daemon=True)
    started = time.time()
    worker.start()
    measure_from = started + 2.0 + warmup_s
    samples = []
    while worker.is_alive():
        if time.time() >= measure_from:
            samples.append({"t": round(time.time() - measure_from, 1), **rss_kib(pid)})
        worker.join(timeout=5)
        if time.time() > started + warmup_s + seconds + 120:
            raise RuntimeError("soak did not finish in time")
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    first = samples[0]["VmRSS"] if samples else None
    peak = max((s["VmRSS"] for s in samples), default=None)
    result["memory"] = {
        "samples": samples,
        "first_rss_mib": round(first / 1024, 1) if first else None,
        "peak_rss_mib": round(peak / 1024, 1) if peak else None,
        "last_rss_mib": round(samples[-1]["VmRSS"] / 1024, 1) if samples else None,
        "growth": round(peak / first - 1, 4) if first else None,
    }
    return result


# --- the protocol ---------------------------------------------------------------------------


def environment() -> dict:
    def git() -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10
            ).stdout.strip()
        return "unknown"

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "git_commit": git(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def markdown(report: dict) -> str:
    lines = [
        f"Protocol {report['protocol']}, {report['environment']['date']}, "
        f"{report['environment']['cpus']} CPUs ({report['environment']['cpu_model']}), "
        f"load average before {report['environment']['load_average'][0]:.2f}, "
        f"commit {report['environment']['git_commit'][:10]}",
        "",
        "| clients | requests/s | candidates/s | p50 ms | p95 ms | p99 ms | max ms | non-2xx "
        "| server CPU ms/request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["scenarios"]:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['clients']} | {r['requests_per_s']} | {r['candidates_per_s']:.0f} | "
            f"{lat['p50']} | {lat['p95']} | {lat['p99']} | {lat['max']} | {r['non_2xx']} | "
            f"{r['server_cpu_ms_per_request']} |"
        )
    if report.get("soak"):
        s = report["soak"]
        m = s["memory"]
        lines += [
            "",
            f"Soak: {s['clients']} clients for {s['duration_s']:.0f} s, {s['requests']} requests, "
            f"{s['non_2xx']} non-2xx, p99 {s['latency_ms']['p99']} ms; server RSS "
            f"{m['first_rss_mib']} MiB first, {m['peak_rss_mib']} MiB peak, "
            f"{m['last_rss_mib']} MiB last (growth {m['growth']:.1%}).",
        ]
    for name, ok in report["targets"].items():
        lines.append(f"- {name}: {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--registry", type=Path, help="default: registry.path of --params")
    parser.add_argument("--repo", type=Path, help="Feast repo; default features.repo")
    parser.add_argument(
        "--training-set", type=Path, default=ROOT / "artifacts/data/training_set.parquet"
    )
    parser.add_argument("--url", help="an already running server (loopback only)")
    parser.add_argument(
        "--clients", type=int, nargs="*", default=[1, 8], help="scenarios; none: soak only"
    )
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--soak", type=float, default=0.0, help="soak seconds at 8 clients")
    parser.add_argument("--pool", type=int, default=2000, help="distinct request bodies")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, help="results JSON; default benchmarks/results/")
    args = parser.parse_args(argv)

    if args.url and urlsplit(args.url).hostname not in LOOPBACK:
        parser.error(f"--url must be a loopback address ({sorted(LOOPBACK)}), not {args.url}")
    total = sum(args.warmup + args.duration + 5 for _ in args.clients) + args.soak
    print(f"serving-v1: about {total / 60:.1f} minutes", file=sys.stderr)
    random.seed(args.seed)
    bodies = request_pool(args.training_set, args.pool, args.candidates, args.seed)
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or out_dir / f"{PROTOCOL}-{stamp}.json"
    report: dict = {"protocol": PROTOCOL, "environment": environment(), "scenarios": []}

    with contextlib.ExitStack() as stack:
        if args.url:
            import httpx

            url, pid = args.url.rstrip("/"), None
            try:
                ready = httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                ready = False
            if not ready:
                parser.error(f"{url} is not a ready server (GET /v2/health/ready)")
        else:
            from shopguide.config import load_params
            from shopguide.serving.process import running_server

            params = load_params(args.params)
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sg-bench-")))
            url, proc, _ = stack.enter_context(
                running_server(
                    params,
                    args.repo or params.features.repo,
                    registry=args.registry or params.registry.path,
                    workdir=workdir,
                    timeout_s=180,
                )
            )
            pid = proc.pid
        for clients in args.clients:
            print(
                f"{clients} client(s): {args.warmup:.0f} s warm-up + {args.duration:.0f} s",
                file=sys.stderr,
            )
            report["scenarios"].append(
                run_load(url, bodies, clients, args.warmup, args.duration, pid, args.candidates)
            )
        if args.soak:
            if pid is None:
                parser.error("--soak needs the benchmark to start the server (no --url)")
            print(f"soak: 8 clients for {args.soak:.0f} s", file=sys.stderr)
            report["soak"] = soak(url, pid, bodies, 8, args.warmup, args.soak, args.candidates)
    report["environment"]["load_average_after"] = os.getloadavg()
    by_clients = {r["clients"]: r for r in report["scenarios"]}
    targets = {}
    if 1 in by_clients:
        targets["1 client: p99 <= 20 ms"] = by_clients[1]["latency_ms"]["p99"] <= 20
    if 8 in by_clients:
        r = by_clients[8]
        targets["8 clients: >= 200 requests/s, zero non-2xx"] = (
            r["requests_per_s"] >= 200 and r["non_2xx"] == 0
        )
    if report.get("soak"):
        s = report["soak"]
        targets["soak: zero errors, RSS within 10%"] = (
            s["non_2xx"] == 0 and s["memory"]["growth"] is not None and s["memory"]["growth"] <= 0.1
        )
    report["targets"] = targets
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nresults: {out}", file=sys.stderr)
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
