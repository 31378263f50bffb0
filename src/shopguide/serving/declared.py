"""KServe predictor for a model trained on a declared dataset (`shopguide dataset train`):
it scores rows that a request describes by their request-time fields, e.g. (customer, product,
seller) rows of an order being placed, with the looked-up attributes and history from the
dataset's generated Feast repo (`shopguide.dataset.online`).

* v2 `infer` (Open Inference Protocol): one input tensor per request-time field, named by its
  qualified column (`order_items.price`), all of one length (the rows); one output per task
  (a probability, a value, or class probabilities).
* v1 `predict`: {"instances": [{field: value, ...}, ...]} -> {"predictions": [{task: ...}]}.

Every problem with a request is a 400 naming the field and row; the model and the repo must
come from the same schema, checked at start-up and for every champion swapped in while serving
(`shopguide.serving.champion_swap`: a champion this repo cannot serve keeps the current one)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kserve
import numpy as np
import pandas as pd
import torch
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from shopguide.config import ServingParams
from shopguide.dataset.learn import predictions
from shopguide.dataset.online import OnlineFeatures, request_columns
from shopguide.dataset.schema import DatasetSchema, saved_schema
from shopguide.dataset.tables import parse_column
from shopguide.errors import ShopguideError
from shopguide.model.base import MultiTaskModel
from shopguide.model.store import load_model
from shopguide.serving import metrics
from shopguide.serving.champion_swap import ChampionSwap
from shopguide.serving.predictor import RejectedRequest, resolve_model_dir
from shopguide.serving.schema import MAX_V2_TENSORS, decoded

log = logging.getLogger(__name__)
NUMBER_TYPES = ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16")


def same_inputs(model: DatasetSchema, repo: DatasetSchema) -> None:
    """The repo must serve what the model reads: the same tables, features and history."""
    for part in ("tables", "joins", "ids", "features", "history", "serving"):
        if getattr(model, part) != getattr(repo, part):
            raise ShopguideError(
                f"the Feast repo was generated from another version of dataset {model.name} "
                f"({part} differ): rerun `shopguide dataset features` with the model's schema"
            )


def v2_inputs(schema: DatasetSchema, rows: pd.DataFrame) -> list[dict]:
    """The v2 request inputs of `rows` (request-time fields by qualified column): numbers as
    FP64, the rest as BYTES, missing values as null."""
    inputs = []
    for name in rows.columns:
        numeric = schema.column(name).type in ("numeric", "timestamp")
        data = [None if pd.isna(v) else (float(v) if numeric else str(v)) for v in rows[name]]
        datatype = "FP64" if numeric else "BYTES"
        inputs.append({"name": name, "shape": [len(rows)], "datatype": datatype, "data": data})
    return inputs


@dataclass(frozen=True)
class DeclaredModel:
    """One servable model version of the dataset."""

    version: str
    net: MultiTaskModel
    schema: DatasetSchema


class DeclaredPredictor(ChampionSwap, kserve.Model):
    def __init__(
        self,
        serving: ServingParams,
        feature_repo: Path,
        model_dir: Path | None = None,
        registry: Path | None = None,
    ) -> None:
        path, version = resolve_model_dir(model_dir, registry)
        self.schema = saved_schema(path)
        super().__init__(self.schema.name)
        self.serving, self.feature_repo = serving, Path(feature_repo)
        self.model_dir, self.registry = model_dir, registry
        self.first = (path, version)
        self.current: DeclaredModel | None = None
        self.fields = request_columns(self.schema)
        self.max_v2_tensors = len(self.fields) + MAX_V2_TENSORS  # room to name the unknown
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shopguide-score")

    def _load(self, path: Path, version: str) -> DeclaredModel:
        """A version this repo can serve: the same inputs, so the request fields stay."""
        schema = saved_schema(path)
        same_inputs(schema, saved_schema(self.feature_repo))
        loaded = DeclaredModel(version, load_model(path), schema)
        log.info("model %s of dataset %s loaded", version, schema.name)
        return loaded

    def load(self) -> bool:
        self.online = OnlineFeatures(self.feature_repo, self.schema)
        self.current = self._load(*self.first)
        self.ready = True
        self.watch_champion()
        return True

    # --- requests -----------------------------------------------------------------------------

    def _v2_rows(self, request: InferRequest) -> pd.DataFrame:
        names = [t.name for t in request.inputs]
        unknown = [n for n in names if n not in self.fields]
        missing = [n for n in self.fields if n not in names]
        if unknown or missing or len(set(names)) != len(names):
            raise ShopguideError(
                f"invalid request: inputs must be exactly {self.fields}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        raw, rows = {}, None
        for tensor in request.inputs:
            where = f"inputs.{tensor.name}"
            shape = list(tensor.shape or [])
            if len(shape) != 1 or shape[0] < 1 or len(tensor.data or []) != shape[0]:
                raise ShopguideError(
                    f"invalid request: {where}: shape {shape} must be [rows] and match its "
                    f"{len(tensor.data or [])} values"
                )
            if rows is not None and shape[0] != rows:
                raise ShopguideError(f"invalid request: {where} has {shape[0]} rows, not {rows}")
            rows = shape[0]
            numeric = self.schema.column(tensor.name).type == "numeric"
            if numeric and tensor.datatype not in NUMBER_TYPES:
                raise ShopguideError(
                    f"invalid request: {where}: datatype {tensor.datatype}; a number needs "
                    f"one of {list(NUMBER_TYPES)}"
                )
            raw[tensor.name] = [v.decode() if isinstance(v, bytes) else v for v in tensor.data]
        return self._rows(raw, rows or 0)

    def _v1_rows(self, payload: object) -> pd.DataFrame:
        payload = decoded(payload)
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list) or not instances:
            raise ShopguideError('invalid request: expected {"instances": [{field: value}, ...]}')
        raw: dict[str, list] = {f: [] for f in self.fields}
        for i, row in enumerate(instances):
            if not isinstance(row, dict) or set(row) != set(self.fields):
                given = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ShopguideError(
                    f"invalid request: instances.{i} must name exactly {self.fields} (got {given})"
                )
            for f in self.fields:
                raw[f].append(row[f])
        return self._rows(raw, len(instances))

    def _rows(self, raw: dict[str, list], rows: int) -> pd.DataFrame:
        if rows > self.serving.max_candidates:
            raise ShopguideError(
                f"invalid request: {rows} rows; at most {self.serving.max_candidates} "
                "(serving.max_candidates)"
            )
        frame = {}
        for name, values in raw.items():
            bad = [i for i, v in enumerate(values) if not isinstance(v, str | int | float | None)]
            if bad:
                raise ShopguideError(
                    f"invalid request: {name} row {bad[0]}: {type(values[bad[0]]).__name__} is "
                    "not a value"
                )
            series = pd.Series(values, dtype=object).map(lambda v: None if v is None else str(v))
            frame[name] = parse_column(
                lambda row, column: f"invalid request: {column} row {row}",
                name,
                series,
                self.schema.column(name),
            )
        return pd.DataFrame(frame)

    def _score(self, rows: pd.DataFrame) -> tuple[str, dict[str, np.ndarray]]:
        """(version, {task: predictions}): one model version scores the whole request."""
        model = self.current
        with torch.inference_mode():
            return model.version, predictions(
                model.net, self.online.served_frame(rows), model.schema
            )

    async def predict(
        self, payload: object, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        try:
            rows = self._v2_rows(payload) if protocol == "v2" else self._v1_rows(payload)
        except ShopguideError as exc:
            metrics.REQUESTS.labels(protocol=protocol, outcome="invalid").inc()
            raise RejectedRequest(str(exc)) from None
        loop = asyncio.get_running_loop()
        version, scores = await loop.run_in_executor(self._executor, self._score, rows)
        metrics.REQUESTS.labels(protocol=protocol, outcome="ok").inc()
        if protocol == "v1":
            listed = {t: np.asarray(v).tolist() for t, v in scores.items()}
            return {
                "model_version": version,
                "predictions": [{t: v[i] for t, v in listed.items()} for i in range(len(rows))],
            }
        outputs = [
            InferOutput(t, list(np.shape(v)), "FP32", np.asarray(v, np.float32).ravel().tolist())
            for t, v in scores.items()
        ]
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            model_version=version,
            infer_outputs=outputs,
        )
