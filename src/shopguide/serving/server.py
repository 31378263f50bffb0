"""The model server, started through KServe's public API only: `kserve.ModelServer` holds the
model repository and data plane (`register_model`) and unloads the model on SIGTERM/SIGINT
(`register_signal_handler`); `RESTServer.run(sockets=...)`, the REST server that
`ModelServer.start` runs, serves a socket bound here, because `ModelServer.start` always binds
0.0.0.0. On top of KServe's app (`kserve.model_server.app`), through FastAPI's own
`add_middleware` and `add_exception_handler` before it starts:

* a body-size limit: a body over `serving.max_request_bytes` gets 413 before anything parses it;
* a strict v2 envelope: shape entries that are not JSON integers, and tensors with more values
  than `serving.max_candidates`, get 400 before FastAPI's lax parse (which turns "3" and 3.0
  into 3) and validation see them;
* 400 (not FastAPI's 422) with a message naming the field for a malformed v2 envelope;
* a request the predictor refuses gets its 400 and one short log line, not KServe's handler
  (which logs the whole exception with a traceback); the requests KServe itself refuses (v1
  bodies that are not JSON) are logged as one line too (`ClientErrorsInOneLine`);
* a bind address (`serving.host`, `--host 127.0.0.1` for loopback only);
* quiet logging: no per-request lines (set SHOPGUIDE_ACCESS_LOG=1 to get uvicorn's access log
  back), and every record goes through a queue to a thread that formats and writes it, capped
  (`shopguide.logs.background_logging`), so the event loop never does either.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path

import kserve
import torch
from fastapi import FastAPI
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InvalidInput
from kserve.model_server import app as kserve_app
from kserve.protocol.rest.server import RESTServer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from shopguide.config import ServingParams
from shopguide.errors import ShopguideError
from shopguide.logs import background_logging
from shopguide.serving import metrics
from shopguide.serving.predictor import RejectedRequest, ShopguidePredictor
from shopguide.serving.schema import check_v2_envelope, describe

log = logging.getLogger(__name__)

# Seconds in-flight requests get to finish after SIGTERM (uvicorn's graceful shutdown); below
# Kubernetes' default terminationGracePeriodSeconds of 30.
GRACE_PERIOD_S = 15
V2_INFER = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer")


class RequestGuard:
    """ASGI middleware: 413 for bodies over `max_bytes` (declared or streamed), the strict v2
    envelope check on v2 inference bodies, and a count of every response by status code."""

    def __init__(self, app, max_bytes: int, max_candidates: int, max_tensors: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_candidates = max_candidates
        self.max_tensors = max_tensors

    @staticmethod
    async def _reply(send, status: int, error: str) -> None:
        log.info("rejected request: %s", error)
        body = json.dumps({"error": error}).encode()
        metrics.RESPONSES.labels(code=str(status)).inc()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _too_large(self, size: str) -> str:
        return (
            f"request body of {size} bytes is over the limit of {self.max_bytes} bytes "
            "(serving.max_request_bytes)"
        )

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
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reply(send, 413, self._too_large(declared.decode()))
            return
        v2 = scope["method"] == "POST" and V2_INFER.fullmatch(scope["path"]) is not None
        streamed = declared is None and b"chunked" in headers.get(b"transfer-encoding", b"")
        if not (v2 or streamed):
            await self.app(scope, receive, counting_send)
            return
        # Read the body (up to the limit) before the app sees any of it.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._reply(send, 413, self._too_large(f"more than {self.max_bytes}"))
                return
            if not message.get("more_body"):
                break
        if v2:
            problem = check_v2_envelope(bytes(body), self.max_candidates, self.max_tensors)
            if problem is not None:
                await self._reply(send, 400, problem)
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, counting_send)


async def invalid_envelope(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's schema check of a v2 body: a 400 in KServe's error shape, like every other
    invalid request."""
    errors = []
    for e in exc.errors():
        if e["type"] == "json_invalid":
            problem = (e.get("ctx") or {}).get("error", e["msg"])
            return JSONResponse(
                status_code=400, content={"error": f"request body is not valid JSON: {problem}"}
            )
        loc = tuple(p for p in e["loc"] if p != "body")
        if loc[:1] == ("bytes",):  # the raw-bytes branch of KServe's body type: not the issue
            continue
        errors.append({**e, "loc": loc[1:] if loc[:1] == ("InferenceRequest",) else loc})
    return JSONResponse(
        status_code=400, content={"error": f"invalid request: {describe(errors or exc.errors())}"}
    )


async def unparsable_body(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's answer to a v2 body its JSON decoder gives up on (nested too deeply), in
    KServe's error shape; every other HTTP error as FastAPI renders it."""
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return JSONResponse(
            status_code=400,
            content={"error": "request body is not valid JSON: nested too deeply or unreadable"},
        )
    return await http_exception_handler(request, exc)


async def rejected(_: Request, exc: RejectedRequest) -> JSONResponse:
    """A request the predictor refused: its 400 and one line of log (the message is short by
    construction, shopguide.serving.schema), without KServe's traceback."""
    log.info("rejected request: %s", exc.reason)
    return JSONResponse(status_code=400, content={"error": exc.reason})


class ClientErrorsInOneLine(logging.Filter):
    """KServe's handler logs an invalid request (its InvalidInput) as an ERROR with the
    traceback; it is the client's error: one INFO line with the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, InvalidInput):
            record.msg, record.args, record.exc_info = "rejected request: %s", (error.reason,), None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def extend_app(app: FastAPI, serving: ServingParams, max_tensors: int) -> None:
    """Our middleware and exception handlers on KServe's app (before it starts; KServe adds
    its own handlers when it starts, for other exception types)."""
    app.add_middleware(
        RequestGuard,
        max_bytes=serving.max_request_bytes,
        max_candidates=serving.max_candidates,
        max_tensors=max_tensors,
    )
    app.add_exception_handler(RequestValidationError, invalid_envelope)
    app.add_exception_handler(StarletteHTTPException, unparsable_body)
    app.add_exception_handler(RejectedRequest, rejected)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host` (IPv4 or IPv6 address or name) and `port`."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ShopguideError(f"cannot listen on {host}:{port} (serving.host): {exc}") from exc


def quiet_request_logs() -> None:
    logging.getLogger("kserve").addFilter(ClientErrorsInOneLine())
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
    predictor: type[kserve.Model] = ShopguidePredictor,
) -> None:
    """Run the model server in the foreground until SIGTERM or SIGINT: `predictor` serves the
    pipeline's models, `shopguide.serving.declared.DeclaredPredictor` a declared dataset's
    (its imports, scikit-learn's text hashing among them, load only when it is the one served).

    Unless OMP_NUM_THREADS says otherwise, torch gets one thread: a request is a few small
    matrix products, and torch's default (every core of the node, not the pod's CPU limit)
    makes each op wait on starved threads, measured at 100x slower on a busy 2-core host.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    host = host or serving.host
    quiet_request_logs()
    with background_logging(on_drop=metrics.LOG_RECORDS_DROPPED.inc):
        model = predictor(serving, feature_repo, model_dir=model_dir, registry=registry)
        model.load()
        server = kserve.ModelServer(
            http_port=http_port,
            workers=1,
            enable_grpc=False,
            enable_latency_logging=False,
            grace_period=GRACE_PERIOD_S,
        )
        server.register_model(model)
        extend_app(kserve_app, serving, model.max_v2_tensors)
        rest = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            server.dataplane,
            server.model_repository_extension,
            http_port,
            workers=1,
            grace_period=GRACE_PERIOD_S,
        )
        listening = bind(host, http_port)
        server.register_signal_handler()
        log.info("listening on http://%s:%d", host, http_port)
        with listening:
            rest.run(sockets=[listening])
        log.info("stopped")
