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

No hostile body makes the server do work, or write a message, that grows with it beyond what
parsing it costs: lists longer than any valid request are refused by their length before their
values are validated, an unknown field is named (cut short) before pydantic lists every other
one, and every message reports at most MAX_REPORTED_ERRORS problems with each field name and
value cut to a few dozen characters.
"""

from __future__ import annotations

import reprlib
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from shopguide.errors import ShopguideError

MAX_ID = 2**63 - 1
Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
MAX_REPORTED_ERRORS = 5
MAX_FIELD_CHARS = 40  # of a field name in a message
V2_INPUTS = ("user_id", "item_id")
V2_OPTIONAL_INPUTS = ("timestamp",)
MAX_V2_TENSORS = 8  # more is refused by the count, before FastAPI validates each one
# The largest id each v2 integer datatype can carry (ids are never negative).
V2_INTEGER_TYPES = {
    "INT64": MAX_ID,
    "INT32": 2**31 - 1,
    "INT16": 2**15 - 1,
    "INT8": 2**7 - 1,
    "UINT64": MAX_ID,
    "UINT32": 2**32 - 1,
    "UINT16": 2**16 - 1,
    "UINT8": 2**8 - 1,
}


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


def field(name: object) -> str:
    """A field name (or path part) for a message: on one line (control characters escaped)
    and cut to MAX_FIELD_CHARS."""
    text = str(name)
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(text) <= MAX_FIELD_CHARS:
        return text
    return f"{text[:MAX_FIELD_CHARS]}...({len(text)} characters)"


def describe(errors: list[dict], prefix: tuple = ()) -> str:
    """The first few violations as `field.path: problem (got value)`; a bad list of thousands
    of ids must not become a megabyte error message."""
    parts = []
    for e in errors[:MAX_REPORTED_ERRORS]:
        where = ".".join(field(p) for p in (*prefix, *e["loc"])) or "body"
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


def _only_fields(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        more = f" (and {len(unknown) - 1} more unknown fields)" if len(unknown) > 1 else ""
        raise ShopguideError(
            f"invalid request: {where}{field(unknown[0])}: Extra inputs are not permitted{more}"
        )


def _bounded_v1(payload: dict, max_candidates: int) -> None:
    """What pydantic would otherwise pay for or echo in full: unknown fields (a name of any
    length, any number of them) and lists longer than any valid request."""
    _only_fields(payload, tuple(PredictRequest.model_fields), "")
    instances = payload.get("instances")
    if not isinstance(instances, list):
        return
    if len(instances) > max_candidates:  # every instance has at least one candidate
        _check_total(len(instances), max_candidates, f"{len(instances)} instances have at least")
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            continue
        _only_fields(inst, tuple(Instance.model_fields), f"instances.{i}.")
        ids = inst.get("item_ids")
        if isinstance(ids, list) and len(ids) > max_candidates:
            raise ShopguideError(
                f"invalid request: instances.{i}.item_ids has {len(ids)} candidates, "
                f"over the limit of {max_candidates}"
            )


def decoded(payload: object) -> object:
    """A v1 body as JSON: KServe hands over the raw bytes when the client did not say
    `application/json` (curl's `-d` default); those are decoded here rather than refused."""
    if isinstance(payload, bytes | str):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ShopguideError(f"request body is not valid JSON: {exc}") from exc
    return payload


def parse_request(payload: object, max_candidates: int) -> PredictRequest:
    """Validate a v1 body (`decoded`)."""
    payload = decoded(payload)
    if not isinstance(payload, dict):
        raise ShopguideError(
            "request body must be a JSON object like "
            '{"instances": [{"user_id": 1, "item_ids": [2, 3]}]}'
        )
    _bounded_v1(payload, max_candidates)
    try:
        request = PredictRequest.model_validate(payload)
    except ValidationError as exc:
        raise ShopguideError(f"invalid request: {describe(exc.errors())}") from None
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


def _too_many_values(where: str, count: int, max_candidates: int) -> str:
    return (
        f"invalid request: {where} has {count} values, over the limit of {max_candidates} "
        "candidates per request"
    )


def _not_an_integer_type(where: str, datatype: object) -> str:
    return (
        f"invalid request: {where}.datatype must be an integer type such as INT64 "
        f"(got {reprlib.repr(datatype)})"
    )


def check_v2_envelope(
    body: bytes, max_candidates: int, max_tensors: int = MAX_V2_TENSORS
) -> str | None:
    """The problem with a v2 JSON body that FastAPI's parse would let through or pay for,
    else None (a body that is not a JSON object with a list of inputs is left to it): shape
    entries that are not JSON integers (FastAPI's lax parse reads "3", 3.0 and true as
    integers), a datatype not in capitals (KServe capitalises it), more tensors or values than
    a valid request has."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list):
        return None
    if len(inputs) > max_tensors:
        return f"invalid request: inputs has {len(inputs)} tensors; at most {max_tensors}"
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            continue
        name = tensor.get("name")
        where = f"inputs.{field(name) if isinstance(name, str) else i}"
        shape, data, datatype = tensor.get("shape"), tensor.get("data"), tensor.get("datatype")
        if isinstance(datatype, str) and datatype != datatype.upper():
            return _not_an_integer_type(where, datatype)
        if isinstance(shape, list):
            for j, size in enumerate(shape):
                if type(size) is not int:
                    return (
                        f"invalid request: {where}.shape.{j} must be an integer "
                        f"(got {reprlib.repr(size)})"
                    )
        if isinstance(data, list) and len(data) > max_candidates:
            return _too_many_values(where, len(data), max_candidates)
    return None


_IDS = TypeAdapter(list[Id])


def _v2_ids(tensor: object, name: str, max_candidates: int) -> np.ndarray:
    """The ids of one v2 input tensor, checked: an integer datatype (spelled as the protocol
    does), a 1-D shape that matches the data, every value an id its datatype can carry."""
    where = f"inputs.{name}"
    datatype = getattr(tensor, "datatype", "")
    if datatype not in V2_INTEGER_TYPES:
        raise ShopguideError(_not_an_integer_type(where, datatype))
    shape = list(getattr(tensor, "shape", []) or [])
    if len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
        raise ShopguideError(
            f"invalid request: {where}.shape must be one positive dimension like [3] "
            f"(got {reprlib.repr(shape)})"
        )
    if shape[0] > max_candidates:
        raise ShopguideError(_too_many_values(where, shape[0], max_candidates))
    data = tensor.data
    if data is None and getattr(tensor, "_raw_data", None) is not None:
        try:  # binary tensor extension: raw little-endian values
            data = tensor.as_numpy().ravel().tolist()
        except Exception as exc:  # any decoding problem is the client's
            raise ShopguideError(f"invalid request: {where} binary data: {exc}") from None
    if not isinstance(data, list):
        raise ShopguideError(f"invalid request: {where}.data must be a list of ids")
    if len(data) != shape[0]:
        raise ShopguideError(
            f"invalid request: {where} has {len(data)} values but shape {shape} says {shape[0]}"
        )
    try:
        ids = np.array(_IDS.validate_python(data), np.int64)
    except ValidationError as exc:
        problem = describe(exc.errors(), (where, "data"))
        raise ShopguideError(f"invalid request: {problem}") from None
    largest = V2_INTEGER_TYPES[datatype]
    over = np.flatnonzero(ids > largest)
    if len(over):
        j = int(over[0])
        raise ShopguideError(
            f"invalid request: {where}.data.{j}: {data[j]} is out of range for {datatype} "
            f"(at most {largest})"
        )
    return ids


def parse_infer_request(request: object, max_candidates: int) -> Batch:
    """Validate a v2 `InferRequest` (KServe has parsed the JSON envelope already)."""
    inputs = list(getattr(request, "inputs", None) or [])
    names = [getattr(t, "name", None) for t in inputs]
    unknown = [field(n) for n in names if n not in (*V2_INPUTS, *V2_OPTIONAL_INPUTS)]
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
