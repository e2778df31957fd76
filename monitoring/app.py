"""The INFORMER monitoring service's HTTP surface (FastAPI), thin over :class:`medmlops.monitoring.service.Monitor`.

Run it with ``medmlops monitor serve``. Routes:

    POST /records, /v1/records          a prediction record from serving → 202 once committed with its logit tier;
                                        409 if already stored
    POST /v1/labels                     delayed ground truth {"request_id", "labels": {class: 0|1}}
    GET  /v1/records/{id}               status, tier ("logit" until INFORMER's "saliency" follows) and when, both tiers'
                                        results (probabilities, distinctiveness, flags, ...), version, queue state
    GET  /v1/records/{id}/saliency.png  the saliency thumbnail
    GET  /v1/summary                    counts and flag rates (?family=&version=&since=&until=)
    GET  /v1/timeseries                 flag and out-of-distribution rates, estimated vs realized performance per time
                                        bucket, the alias history (?family=&version=&bucket_s=SECONDS|auto&since=&until=)
    GET  /v1/flagged                    the newest flagged cases (?family=&limit=)
    GET  /v1/drift                      the latest drift report per family (?family=)
    GET  /v1/drift/history              a family's drift reports over time, oldest first, and its alias history
                                        (?family=&version=&since=&until=&limit=)
    GET  /v1/drift/{id}/evidently-js/*  the Evidently JS bundle and font a report's HTML loads (beside the report)
    GET  /v1/performance                estimated (CBPE) and realized performance per version
                                        (?family=&version=&since=&until=&limit=; none: the metrics window)
    GET  /v1/families                   families with record counts
    GET  /v1/review                     the review queue: unreviewed flagged/sampled cases in priority order, and
                                        per version the reviews' error rate and flag precision (?family=&version=&limit=)
    GET  /v1/review/{id}                one case as the review page shows it (reasons in words, classes, maps)
    GET  /v1/records/{id}/image.png     the stored upload as the model saw it (its preprocessing), in grey
    GET  /v1/records/{id}/maps/{k}.png  the saliency map of output k
    GET  /review                        the review page (queue, case, label form)
    GET  /dashboard                     the dashboard page (its data come from the routes above)
    GET  /healthz, /metrics             open to probes and Prometheus

Writes need ``Authorization: Bearer <write token>`` when a write token is set; reads need either token when a read
token is set. Errors are JSON ``{"error": code, "detail": sentence}``; bad input is a 4xx, never a 5xx.

The lifespan starts the in-process INFORMER worker, unless ``--no-worker`` (then ``medmlops monitor worker``
processes do the saliency tier from the same database).
"""

from __future__ import annotations

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

from medmlops.errors import NotFound, UserError
from medmlops.inference.record import RecordError
from medmlops.monitoring.review import Review, ReviewCollector
from medmlops.monitoring.service import Monitor, load_json, parse_count, parse_time

log = logging.getLogger("medmlops.monitoring")
DASHBOARD = Path(__file__).with_name("dashboard.html")
REVIEW_PAGE = Path(__file__).with_name("review.html")
WRITE_ROUTES = {"/records", "/v1/records", "/v1/labels"}
OPEN_ROUTES = {"/healthz", "/metrics", "/dashboard", "/", "/review"}
LABELS_MAX_BYTES = 1024 * 1024
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


class BodyError(Exception):
    """A request body refused before it reaches the core (content type, size, JSON)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


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


async def _json(request: Request, limit: int, what: str) -> Any:
    """The JSON body, read in chunks so a body without Content-Length is held to ``limit`` too; BodyError if not."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        given = content_type or "no content type"
        raise BodyError(415, "wrong_content_type", f"send the {what} as application/json, not '{given}'")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyError(413, "too_large", f"the {what} body has {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, "too_large", f"the {what} body has more than {limit} bytes, the limit")
        chunks.append(chunk)
    return await run_in_threadpool(load_json, b"".join(chunks))  # RecordError (400) if not JSON or too deep


def _query(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


def _number(request: Request, name: str, default: float) -> float:
    text = _query(request, name)
    try:
        return default if text is None else float(text)
    except ValueError as exc:
        raise UserError(f"query parameter '{name}' must be a number, not {text[:40]!r}") from exc


def _bucket(request: Request) -> float | None:
    """``bucket_s``: seconds (default one hour), or ``auto`` (None: the core chooses from the records)."""
    return None if _query(request, "bucket_s") == "auto" else _number(request, "bucket_s", 3600.0)


def _window(request: Request) -> dict[str, Any]:
    """``family``, ``version``, ``since`` and ``until`` of the query, as the core's views take them."""
    since, until = (parse_time(_query(request, name), name) for name in ("since", "until"))
    return {"family": _query(request, "family"), "version": _query(request, "version"), "since": since, "until": until}


def create_app(monitor: Monitor) -> FastAPI:
    """The FastAPI app over ``monitor``; its lifespan starts the worker (if it has one) and closes the store."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        monitor.start()
        try:
            yield
        finally:
            await run_in_threadpool(monitor.close)

    app = FastAPI(title="medmlops monitoring", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    dashboard_html = DASHBOARD.read_text(encoding="utf-8")
    review_html = REVIEW_PAGE.read_text(encoding="utf-8")
    review = Review(monitor.store.engine, monitor.scorer.version)
    monitor.metrics.registry.register(ReviewCollector(review))

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
        return _error(exc.status_code, _STATUS_CODES.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "bad_request", f"{where or 'the request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
        return _error(422, "bad_query", str(exc))

    @app.exception_handler(RecordError)
    async def record_error(_request: Request, exc: RecordError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail, field=exc.field)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, exc.error, exc.detail)

    @app.exception_handler(BodyError)
    async def body_error(_request: Request, exc: BodyError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail)

    @app.post("/records")
    @app.post("/v1/records")
    async def post_record(request: Request) -> Response:
        body = await _json(request, monitor.settings.max_body_bytes, "record")
        request_id, stored = await run_in_threadpool(monitor.ingest, body)
        if not stored:
            return _error(409, "duplicate", f"record {request_id} is already stored", request_id=request_id)
        return JSONResponse({"request_id": request_id, "status": "accepted"}, status_code=202)

    @app.post("/v1/labels")
    async def post_labels(request: Request) -> Response:
        body = await _json(request, LABELS_MAX_BYTES, "labels")
        return JSONResponse(await run_in_threadpool(monitor.post_labels, body))

    @app.get("/v1/records/{request_id}")
    def get_record(request_id: str) -> Response:
        return JSONResponse(monitor.record_view(request_id))

    @app.get("/v1/records/{request_id}/saliency.png")
    def get_saliency(request_id: str) -> Response:
        png = monitor.saliency(request_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/drift/{report_id}/report.html")
    def get_drift_html(report_id: int) -> Response:
        return FileResponse(monitor.drift_html(report_id), media_type="text/html")

    @app.get("/v1/drift/{report_id}/evidently-js/{name}")
    def get_drift_asset(report_id: int, name: str) -> Response:
        path = monitor.drift_asset(report_id, name)
        kind = "text/javascript" if name.endswith(".js") else "font/woff2"
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/v1/summary")
    def get_summary(request: Request) -> Response:
        return JSONResponse(monitor.summary(**_window(request)))

    @app.get("/v1/timeseries")
    def get_timeseries(request: Request) -> Response:
        return JSONResponse(monitor.timeseries(**_window(request), bucket_s=_bucket(request)))

    @app.get("/v1/flagged")
    def get_flagged(request: Request) -> Response:
        limit = parse_count(_query(request, "limit"), "limit", 20)
        return JSONResponse({"cases": monitor.flagged_cases(family=_query(request, "family"), limit=limit)})

    @app.get("/v1/drift/history")
    def get_drift_history(request: Request) -> Response:
        limit = parse_count(_query(request, "limit"), "limit", 500, high=5000)
        return JSONResponse(monitor.drift_history(**_window(request), limit=limit))

    @app.get("/v1/drift")
    def get_drift(request: Request) -> Response:
        return JSONResponse({"reports": monitor.drift(_query(request, "family"))})

    @app.get("/v1/performance")
    def get_performance(request: Request) -> Response:
        text = _query(request, "limit")
        limit = None if text is None else parse_count(text, "limit", 500, high=100_000)
        return JSONResponse(monitor.performance(**_window(request), limit=limit))

    @app.get("/v1/families")
    def get_families() -> Response:
        return JSONResponse({"families": monitor.families()})

    @app.get("/v1/review")
    def get_review(request: Request) -> Response:
        limit = parse_count(_query(request, "limit"), "limit", 50)
        window = {"family": _query(request, "family"), "version": _query(request, "version")}
        return JSONResponse(review.queue(**window, limit=limit))

    @app.get("/v1/review/{request_id}")
    def get_review_case(request_id: str) -> Response:
        return JSONResponse(review.case_view(request_id))

    @app.get("/v1/records/{request_id}/image.png")
    async def get_image(request_id: str) -> Response:
        png = await run_in_threadpool(review.image, request_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/records/{request_id}/maps/{position}.png")
    def get_class_map(request_id: str, position: int) -> Response:
        png = review.map_png(request_id, position)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/review")
    def review_page() -> Response:
        return HTMLResponse(review_html)

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
