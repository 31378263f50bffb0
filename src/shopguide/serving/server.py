"""The model server: KServe's `ModelServer` (REST only) with the predictor, plus

* a body-size limit: a body over `serving.max_request_bytes` gets 413 before anything parses it;
* 400 (not FastAPI's 422) with a message naming the field for a malformed v2 envelope;
* a bind address (`serving.host`, `--host 127.0.0.1` for loopback only);
* quiet per-request logging: KServe's per-request trace and access lines would cost more than
  scoring a request (set SHOPGUIDE_ACCESS_LOG=1 to get the access log back), and no per-request
  timing middleware (the Prometheus metrics have the timings).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import kserve
import torch
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse, Response
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.rest.server import RESTServer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from shopguide.config import ServingParams
from shopguide.serving import metrics
from shopguide.serving.predictor import ShopguidePredictor
from shopguide.serving.schema import describe

log = logging.getLogger(__name__)


class LimitAndCount:
    """ASGI middleware: 413 for bodies over `max_bytes` (declared or streamed), and a count of
    every response by status code."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, send, size: str) -> None:
        body = (
            f'{{"error": "request body of {size} bytes is over the limit of {self.max_bytes} '
            f'bytes (serving.max_request_bytes)"}}'
        ).encode()
        metrics.RESPONSES.labels(code="413").inc()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                metrics.RESPONSES.labels(code=str(message["status"])).inc()
            await send(message)

        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._too_large(send, declared.decode())
                return
            await self.app(scope, receive, counting_send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, counting_send)
            return
        # A streamed body: read it up to the limit before the app sees any of it.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(send, f"more than {self.max_bytes}")
                return
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, counting_send)


async def invalid_envelope(_: Request, exc: RequestValidationError) -> ORJSONResponse:
    """FastAPI's schema check of a v2 body: a 400 in KServe's error shape, like every other
    invalid request."""
    errors = []
    for e in exc.errors():
        if e["type"] == "json_invalid":
            problem = (e.get("ctx") or {}).get("error", e["msg"])
            return ORJSONResponse(
                status_code=400, content={"error": f"request body is not valid JSON: {problem}"}
            )
        loc = tuple(p for p in e["loc"] if p != "body")
        if loc[:1] == ("bytes",):  # the raw-bytes branch of KServe's body type: not the issue
            continue
        errors.append({**e, "loc": loc[1:] if loc[:1] == ("InferenceRequest",) else loc})
    return ORJSONResponse(
        status_code=400, content={"error": f"invalid request: {describe(errors or exc.errors())}"}
    )


async def unparsable_body(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's answer to a v2 body its JSON decoder gives up on (nested too deeply), in
    KServe's error shape; every other HTTP error as FastAPI renders it."""
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return ORJSONResponse(
            status_code=400,
            content={"error": "request body is not valid JSON: nested too deeply or unreadable"},
        )
    return await http_exception_handler(request, exc)


class ShopguideModelServer(kserve.ModelServer):
    """KServe's server with one REST worker on a chosen address (KServe binds 0.0.0.0)."""

    def __init__(self, host: str, max_request_bytes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.max_request_bytes = max_request_bytes

    def start(self, models: list) -> None:
        from kserve.model_server import app

        app.add_middleware(LimitAndCount, max_bytes=self.max_request_bytes)
        app.add_exception_handler(RequestValidationError, invalid_envelope)
        app.add_exception_handler(StarletteHTTPException, unparsable_body)
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host
        # KServe's only middleware times every request (two getrusage calls and a route
        # lookup) for a trace log line that quiet_request_logs() silences; the Prometheus
        # metrics cover the same ground, so skip it.
        self._rest_server._add_middlewares = lambda app: None
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def quiet_request_logs() -> None:
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    if os.environ.get("SHOPGUIDE_ACCESS_LOG", "") not in ("1", "true"):
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def serve(
    serving: ServingParams,
    feature_repo: Path,
    model_dir: Path | None,
    registry: Path | None,
    http_port: int,
    host: str | None = None,
) -> None:
    """Run the model server in the foreground.

    Unless OMP_NUM_THREADS says otherwise, torch gets one thread: a request is a few small
    matrix products, and torch's default (every core of the node, not the pod's CPU limit)
    makes each op wait on starved threads, measured at 100x slower on a busy 2-core host.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    quiet_request_logs()
    model = ShopguidePredictor(serving, feature_repo, model_dir=model_dir, registry=registry)
    model.load()
    server = ShopguideModelServer(
        host=host or serving.host,
        max_request_bytes=serving.max_request_bytes,
        http_port=http_port,
        enable_grpc=False,
        workers=1,
        enable_latency_logging=False,
    )
    log.info("listening on http://%s:%d", host or serving.host, http_port)
    server.start([model])
