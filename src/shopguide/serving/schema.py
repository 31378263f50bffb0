"""Request schemas of the two protocols; every violation becomes a 400 naming the field.

* v1 (`POST /v1/models/<name>:predict`): `{"instances": [{"user_id": 1, "item_ids": [2, 3]}]}`,
  one ranking per instance; an instance may name the moment to rank at, `"timestamp"` (epoch
  seconds; default: the server's clock).
* v2, the Open Inference Protocol (`POST /v2/models/<name>/infer`): two INT64 tensors,
  `user_id` (shape [1], broadcast, or [N]) and `item_id` (shape [N]), and optionally
  `timestamp` (shape [1] or [N]); one row per (user, item) pair.

The moment matters because the model reads ages: the seconds since the user last viewed,
carted, ... each candidate, and since each of their recent events.

`max_candidates` bounds the rows of a whole request (all of it is scored as one batch), so many
small instances cannot add up to an unbounded request.
"""

from __future__ import annotations

import json
import reprlib
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from shopguide.errors import ShopguideError

MAX_ID = 2**63 - 1
Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
MAX_REPORTED_ERRORS = 5
V2_INPUTS = ("user_id", "item_id")
V2_OPTIONAL_INPUTS = ("timestamp",)
V2_INTEGER_TYPES = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    item_ids: Annotated[list[Id], Field(min_length=1)]
    timestamp: Id | None = None  # the moment to rank at, epoch seconds; None: now


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: Annotated[list[Instance], Field(min_length=1)]


@dataclass(frozen=True)
class Batch:
    """What gets scored: one row per (user, item) pair, in request order."""

    users: np.ndarray  # (rows,) int64
    items: np.ndarray  # (rows,) int64
    sizes: list[int]  # rows per instance (v1) or [rows] (v2)
    moments: np.ndarray  # (rows,) int64 epoch seconds each row is scored at


def now() -> int:
    return int(time.time())


def describe(errors: list[dict], prefix: tuple = ()) -> str:
    """The first few violations as `field.path: problem (got value)`; a bad list of thousands
    of ids must not become a megabyte error message."""
    parts = []
    for e in errors[:MAX_REPORTED_ERRORS]:
        where = ".".join(str(p) for p in (*prefix, *e["loc"])) or "body"
        got = "" if e["type"] == "missing" else f" (got {reprlib.repr(e.get('input'))})"
        parts.append(f"{where}: {e['msg']}{got}")
    if len(errors) > MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more")
    return "; ".join(parts)


def _check_total(total: int, max_candidates: int, what: str) -> None:
    if total > max_candidates:
        raise ShopguideError(
            f"invalid request: {what} {total} candidates in all, over the limit of "
            f"{max_candidates} per request"
        )


def parse_request(payload: object, max_candidates: int) -> PredictRequest:
    """Validate a decoded v1 body.

    KServe hands over the raw bytes when the client did not say `application/json` (curl's
    `-d` default); those are decoded here rather than refused."""
    if isinstance(payload, bytes | str):
        try:
            payload = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ShopguideError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ShopguideError(
            "request body must be a JSON object like "
            '{"instances": [{"user_id": 1, "item_ids": [2, 3]}]}'
        )
    try:
        request = PredictRequest.model_validate(payload)
    except ValidationError as exc:
        raise ShopguideError(f"invalid request: {describe(exc.errors())}") from exc
    for i, inst in enumerate(request.instances):
        if len(inst.item_ids) > max_candidates:
            raise ShopguideError(
                f"invalid request: instances.{i}.item_ids has {len(inst.item_ids)} candidates, "
                f"over the limit of {max_candidates}"
            )
    total = sum(len(inst.item_ids) for inst in request.instances)
    _check_total(total, max_candidates, f"{len(request.instances)} instances have")
    return request


def v1_batch(request: PredictRequest) -> Batch:
    sizes = [len(inst.item_ids) for inst in request.instances]
    users = np.repeat(np.array([i.user_id for i in request.instances], np.int64), sizes)
    items = np.fromiter(
        (x for inst in request.instances for x in inst.item_ids), np.int64, sum(sizes)
    )
    clock = now()
    moments = np.repeat(
        np.array([clock if i.timestamp is None else i.timestamp for i in request.instances]),
        sizes,
    ).astype(np.int64)
    return Batch(users, items, sizes, moments)


_IDS = TypeAdapter(list[Id])


def _v2_ids(tensor: object, name: str, max_candidates: int) -> np.ndarray:
    """The ids of one v2 input tensor, checked: integer datatype, 1-D shape that matches the
    data, every value an integer id."""
    where = f"inputs.{name}"
    datatype = str(getattr(tensor, "datatype", "")).upper()
    if datatype not in V2_INTEGER_TYPES:
        raise ShopguideError(
            f"invalid request: {where}.datatype must be an integer type such as INT64 "
            f"(got {datatype!r})"
        )
    shape = list(getattr(tensor, "shape", []) or [])
    if len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
        raise ShopguideError(
            f"invalid request: {where}.shape must be one positive dimension like [3] "
            f"(got {reprlib.repr(shape)})"
        )
    if shape[0] > max_candidates:
        raise ShopguideError(
            f"invalid request: {where} has {shape[0]} values, over the limit of "
            f"{max_candidates} candidates per request"
        )
    data = tensor.data
    if data is None and getattr(tensor, "_raw_data", None) is not None:
        try:  # binary tensor extension: raw little-endian values
            data = tensor.as_numpy().ravel().tolist()
        except Exception as exc:  # any decoding problem is the client's
            raise ShopguideError(f"invalid request: {where} binary data: {exc}") from exc
    if not isinstance(data, list):
        raise ShopguideError(f"invalid request: {where}.data must be a list of ids")
    if len(data) != shape[0]:
        raise ShopguideError(
            f"invalid request: {where} has {len(data)} values but shape {shape} says {shape[0]}"
        )
    try:
        ids = _IDS.validate_python(data)
    except ValidationError as exc:
        raise ShopguideError(f"invalid request: {describe(exc.errors(), (where, 'data'))}") from exc
    return np.array(ids, np.int64)


def parse_infer_request(request: object, max_candidates: int) -> Batch:
    """Validate a v2 `InferRequest` (KServe has parsed the JSON envelope already)."""
    inputs = list(getattr(request, "inputs", None) or [])
    names = [getattr(t, "name", None) for t in inputs]
    unknown = [n for n in names if n not in (*V2_INPUTS, *V2_OPTIONAL_INPUTS)]
    if unknown:
        raise ShopguideError(
            f"invalid request: unknown inputs {unknown}; expected {list(V2_INPUTS)} and "
            f"optionally {list(V2_OPTIONAL_INPUTS)}"
        )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ShopguideError(f"invalid request: inputs {duplicated} given more than once")
    missing = [n for n in V2_INPUTS if n not in names]
    if missing:
        raise ShopguideError(
            f"invalid request: missing inputs {missing}; expected exactly {list(V2_INPUTS)}"
        )
    tensors = dict(zip(names, inputs, strict=True))
    items = _v2_ids(tensors["item_id"], "item_id", max_candidates)
    users = _v2_ids(tensors["user_id"], "user_id", max_candidates)
    users = _broadcast(users, "user_id", len(items))
    if "timestamp" in tensors:
        moments = _broadcast(
            _v2_ids(tensors["timestamp"], "timestamp", max_candidates), "timestamp", len(items)
        )
    else:
        moments = np.full(len(items), now(), np.int64)
    return Batch(users, items, [len(items)], moments)


def _broadcast(values: np.ndarray, name: str, rows: int) -> np.ndarray:
    """One value for every item_id, or one per item_id."""
    if len(values) == 1:
        return np.repeat(values, rows)
    if len(values) != rows:
        raise ShopguideError(
            f"invalid request: inputs.{name} has {len(values)} values; it must have 1 (the "
            f"same for every item) or one per item_id ({rows})"
        )
    return values
