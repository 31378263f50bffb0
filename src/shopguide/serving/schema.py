"""Request schema of the v1 predict endpoint; every violation becomes a 400 naming the field."""

from __future__ import annotations

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


def parse_request(payload: object, max_candidates: int) -> PredictRequest:
    if not isinstance(payload, dict):
        raise ShopguideError('request body must be a JSON object like '
                             '{"instances": [{"user_id": 1, "item_ids": [2, 3]}]}')
    try:
        request = PredictRequest.model_validate(payload)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ShopguideError(f"invalid request: {details}") from exc
    for i, inst in enumerate(request.instances):
        if len(inst.item_ids) > max_candidates:
            raise ShopguideError(
                f"invalid request: instances.{i}.item_ids has {len(inst.item_ids)} candidates, "
                f"over the limit of {max_candidates}"
            )
    return request
