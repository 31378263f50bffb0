"""Request schema of the v1 predict endpoint; every violation becomes a 400 naming the field."""

from __future__ import annotations

import json
import reprlib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from shopguide.errors import ShopguideError

Id = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    item_ids: Annotated[list[Id], Field(min_length=1)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: Annotated[list[Instance], Field(min_length=1)]


MAX_REPORTED_ERRORS = 5


def _describe(exc: ValidationError) -> str:
    """The first few violations as `field.path: problem (got value)`; a bad list of thousands
    of ids must not become a megabyte error message."""
    errors = exc.errors()
    parts = []
    for e in errors[:MAX_REPORTED_ERRORS]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        got = "" if e["type"] == "missing" else f" (got {reprlib.repr(e['input'])})"
        parts.append(f"{where}: {e['msg']}{got}")
    if len(errors) > MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more")
    return "; ".join(parts)


def parse_request(payload: object, max_candidates: int) -> PredictRequest:
    """Validate a decoded body; `max_candidates` bounds the whole request (all instances are
    scored in one batch), so many small instances cannot add up to an unbounded one.

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
        raise ShopguideError(f"invalid request: {_describe(exc)}") from exc
    for i, inst in enumerate(request.instances):
        if len(inst.item_ids) > max_candidates:
            raise ShopguideError(
                f"invalid request: instances.{i}.item_ids has {len(inst.item_ids)} candidates, "
                f"over the limit of {max_candidates}"
            )
    total = sum(len(inst.item_ids) for inst in request.instances)
    if total > max_candidates:
        raise ShopguideError(
            f"invalid request: {len(request.instances)} instances have {total} candidates in "
            f"all, over the limit of {max_candidates} per request"
        )
    return request
