"""The INFORMER monitoring service's HTTP surface (FastAPI), thin over :class:`medmlops.monitoring.service.Monitor`.

Run it with ``medmlops monitor serve``. Routes:

    POST /records, /v1/records          a prediction record from serving → 202 once committed; 409 if already stored
    POST /v1/labels                     delayed ground truth {"request_id", "labels": {class: 0|1}}
    GET  /v1/records/{id}               status, INFORMER probabilities, labels, distinctiveness, flags, entropy, version
    GET  /v1/records/{id}/saliency.png  the saliency thumbnail
    GET  /v1/summary                    counts and flag rates (?family=&version=&since=&until=)
    GET  /v1/timeseries                 flag rates per time bucket (?family=&version=&bucket_s=&since=&until=)
    GET  /v1/flagged                    the newest flagged cases (?family=&limit=)
    GET  /v1/drift                      the latest drift report per family (?family=)
    GET  /v1/families                   families with record counts
    GET  /dashboard                     the dashboard page (its data come from the routes above)
    GET  /healthz, /metrics             open to probes and Prometheus

Writes need ``Authorization: Bearer <write token>`` when a write token is set; reads need either token when a read
token is set. Errors are JSON ``{"error": code, "detail": sentence}``; bad input is a 4xx, never a 5xx.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from medmlops.errors import UserError
from medmlops.monitoring.service import Monitor, parse_time
from medmlops.monitoring.store import RecordError

log = logging.getLogger("medmlops.monitoring")
DASHBOARD = Path(__file__).with_name("dashboard.html")
WRITE_ROUTES = {"/records", "/v1/records", "/v1/labels"}
OPEN_ROUTES = {"/healthz", "/metrics", "/dashboard", "/"}
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def _error(status: int, error: str, detail: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status, headers=headers)


def _handler(app: FastAPI, scope: dict) -> tuple[str, bool]:
    """The route template a request goes to (bounded label values for the request counter), and whether its method
    matches too (when not, the answer is 405 whoever asks)."""
    partial = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.path, True
        if match == Match.PARTIAL and partial is None:
            partial = route.path
    return partial or "unmatched", False


def _query(request: Request, name: str, default: str | None = None) -> str | None:
    value = request.query_params.get(name)
    return value if value not in (None, "") else default


def _number(request: Request, name: str, default: float) -> float:
    text = _query(request, name)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError as exc:
        raise UserError(f"query parameter '{name}' must be a number, not {text[:40]!r}") from exc


def create_app(monitor: Monitor) -> FastAPI:
    """The FastAPI app over ``monitor``; its lifespan starts the worker and closes the store."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        monitor.start()
        try:
            yield
        finally:
            await run_in_threadpool(monitor.close)

    app = FastAPI(title="medmlops monitoring", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.monitor = monitor
    limit = monitor.settings.max_body_bytes
    dashboard_html = DASHBOARD.read_text(encoding="utf-8")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        handler, routed = _handler(app, request.scope)
        scope = "open" if not routed or handler in OPEN_ROUTES else "write" if handler in WRITE_ROUTES else "read"
        if not monitor.allowed(scope, request.headers.get("authorization")):
            given = "a wrong token" if request.headers.get("authorization") else "no token"
            kind = "the write token" if scope == "write" else "a read token"
            response = _error(
                401, "unauthorized", f"{request.url.path} needs {kind} as 'Authorization: Bearer ...' ({given} sent)"
            )
        else:
            try:
                response = await call_next(request)
            except Exception:  # noqa: BLE001 - a bug must not take the server down; the traceback goes to the log
                log.exception("%s %s failed", request.method, request.url.path)
                response = _error(500, "internal_error", "the monitoring service failed on this request; see its log")
        monitor.metrics.http_requests.labels(handler, request.method, str(response.status_code)).inc()
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "bad_request", f"{where or 'the request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
        return _error(422, "bad_query", str(exc))

    async def _post_record(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return _error(
                415,
                "wrong_content_type",
                f"send the record as application/json, not '{content_type or 'no content type'}'",
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _error(413, "too_large", f"the record has {declared} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return _error(413, "too_large", f"the record has more than {limit} bytes, the limit")
            chunks.append(chunk)
        try:
            body = await run_in_threadpool(json.loads, b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, "bad_json", f"the body is not valid JSON ({str(exc)[:120]})")
        try:
            stored = await run_in_threadpool(monitor.ingest, body)
        except RecordError as err:
            return _error(err.status, err.error, err.detail, field=err.field)
        request_id = body["request_id"]
        if not stored:
            return _error(409, "duplicate", f"record {request_id} is already stored", request_id=request_id)
        return JSONResponse({"request_id": request_id, "status": "accepted"}, status_code=202)

    app.add_api_route("/records", _post_record, methods=["POST"], include_in_schema=False)
    app.add_api_route("/v1/records", _post_record, methods=["POST"], include_in_schema=False)

    @app.post("/v1/labels")
    async def post_labels(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "wrong_content_type", "send the labels as application/json")
        body = await request.body()
        if len(body) > 1024 * 1024:
            return _error(413, "too_large", "a labels post must be under 1 MiB")
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, "bad_json", f"the body is not valid JSON ({str(exc)[:120]})")
        try:
            stored = await run_in_threadpool(monitor.post_labels, parsed)
        except RecordError as err:
            return _error(err.status, err.error, err.detail, field=err.field)
        if stored is None:
            return _error(404, "unknown_request_id", f"no record {parsed['request_id']} is stored")
        return JSONResponse({"request_id": stored[0], "labels": stored[1], "status": "stored"})

    @app.get("/v1/records/{request_id}")
    def get_record(request_id: str) -> Response:
        view = monitor.record_view(request_id)
        if view is None:
            return _error(404, "unknown_request_id", f"no record {request_id} is stored")
        return JSONResponse(view)

    @app.get("/v1/records/{request_id}/saliency.png")
    def get_saliency(request_id: str) -> Response:
        png = monitor.store.saliency_png(request_id)
        if png is None:
            known = monitor.store.has_record(request_id)
            detail = (
                f"record {request_id} has no saliency map (not processed yet, or failed)"
                if known
                else f"no record {request_id} is stored"
            )
            return _error(404, "no_saliency" if known else "unknown_request_id", detail)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/summary")
    def get_summary(request: Request) -> Response:
        return JSONResponse(
            monitor.summary(
                family=_query(request, "family"), version=_query(request, "version"),
                since=parse_time(_query(request, "since"), "since"), until=parse_time(_query(request, "until"), "until"),
            )
        )  # fmt: skip

    @app.get("/v1/timeseries")
    def get_timeseries(request: Request) -> Response:
        return JSONResponse(
            monitor.timeseries(
                family=_query(request, "family"), version=_query(request, "version"),
                bucket_s=_number(request, "bucket_s", 3600.0), since=parse_time(_query(request, "since"), "since"),
                until=parse_time(_query(request, "until"), "until"),
            )
        )  # fmt: skip

    @app.get("/v1/flagged")
    def get_flagged(request: Request) -> Response:
        limit = int(_number(request, "limit", 20))
        return JSONResponse({"cases": monitor.flagged_cases(family=_query(request, "family"), limit=limit)})

    @app.get("/v1/drift")
    def get_drift(request: Request) -> Response:
        return JSONResponse({"reports": monitor.drift(_query(request, "family"))})

    @app.get("/v1/drift/{report_id}/report.html")
    def get_drift_html(report_id: int) -> Response:
        report = monitor.store.drift_report(report_id)
        path = Path(report["html_path"]) if report and report["html_path"] else None
        if path is None or path.suffix.lower() not in (".html", ".htm") or not path.is_file():
            return _error(404, "no_report", f"drift report {report_id} has no HTML file here")
        return FileResponse(path, media_type="text/html")

    @app.get("/v1/families")
    def get_families() -> Response:
        return JSONResponse({"families": monitor.families()})

    @app.get("/healthz")
    def healthz() -> Response:
        state = monitor.healthy()
        if state is None:
            return _error(503, "database_unavailable", "the monitoring database does not answer")
        return JSONResponse(state)

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = monitor.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/dashboard")
    def dashboard() -> Response:
        return HTMLResponse(dashboard_html)

    @app.get("/")
    def root() -> Response:
        return RedirectResponse("/dashboard")

    return app
