"""Prometheus metrics of the predictor, served at `GET /metrics` beside KServe's own
(`request_predict_seconds` and friends) from the default registry."""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

REQUESTS = Counter(
    "shopguide_requests",
    "Scoring requests by protocol and outcome (ok, invalid).",
    ["protocol", "outcome"],
)
RESPONSES = Counter(
    "shopguide_http_responses",
    "HTTP responses by status code, including requests refused before reaching the model.",
    ["code"],
)
CANDIDATES = Counter("shopguide_candidates", "Candidates scored.", ["protocol"])
UNKNOWN_USERS = Counter(
    "shopguide_unknown_user_rows", "Scored rows whose user the online store does not know."
)
UNKNOWN_ITEMS = Counter(
    "shopguide_unknown_item_rows", "Scored rows whose item the online store does not know."
)
FEATURE_SECONDS = Histogram(
    "shopguide_feature_lookup_seconds",
    "Online feature lookup per batch (all reads from the Feast online store).",
    buckets=_LATENCY_BUCKETS,
)
MODEL_SECONDS = Histogram(
    "shopguide_model_forward_seconds",
    "Model forward pass per batch.",
    buckets=_LATENCY_BUCKETS,
)
BATCH_ROWS = Histogram(
    "shopguide_batch_rows",
    "Rows per scored batch (requests queued together are scored in one forward pass).",
    buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 5000),
)
MODEL_INFO = Gauge("shopguide_model_info", "1 for the model version being served.", ["version"])
LOG_RECORDS_DROPPED = Counter(
    "shopguide_log_records_dropped",
    "Log records dropped because the log queue was full (shopguide.logs.background_logging).",
)
RELOADS = Counter(
    "shopguide_model_reloads", "Champion reloads by outcome (success, failure).", ["outcome"]
)


# Per-request counters with their labels resolved once (`labels()` takes a lock and builds a
# key every call).
@cache
def ok_requests(protocol: str) -> Counter:
    return REQUESTS.labels(protocol=protocol, outcome="ok")


@cache
def candidates(protocol: str) -> Counter:
    return CANDIDATES.labels(protocol=protocol)
