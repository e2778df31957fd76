"""The BentoML service of one registered family: ``POST /predict`` (multipart field ``image``) → JSON predictions.

Two BentoML services in one server, each thin over :mod:`medmlops.inference.service`: ``Gateway`` (the HTTP
surface: request checks, errors as 4xx JSON) over :class:`~medmlops.inference.service.Gateway`, and ``Model`` (the
torch forward, with BentoML's adaptive batching, so concurrent requests share one batched forward) over
:class:`~medmlops.inference.service.ServedModel`. Both load the same model version, resolved once by
``medmlops serve`` and passed in the environment (:meth:`~medmlops.inference.service.ServingSettings.from_env`).

Every prediction is forwarded to monitoring as a :class:`~medmlops.inference.record.PredictionRecord` through a
disk spool and a background sender (``medmlops.inference.forwarding``): off the request path, retried with jittered
backoff while monitoring is down, idempotent by the record id (the server's; a client's ``X-Request-ID`` is kept as
the record's ``correlation_id``). On SIGTERM, BentoML finishes the requests in flight and then runs
``Gateway.drain``: the sender gets ``MEDMLOPS_SPOOL_DRAIN_S`` seconds to deliver the spool, the rest stays on disk.
"""

from __future__ import annotations

import re

import aiohttp
import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from medmlops.inference.record import RecordError
from medmlops.inference.service import Gateway as GatewayCore
from medmlops.inference.service import ServedModel, ServiceUnavailable, ServingSettings

SETTINGS = ServingSettings.from_env()
FIELD = "image"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the upload
_PATHLIKE = re.compile(r"(^|[\\/])\.\.([\\/]|$)|^[\\/]|[\\/]|^[A-Za-z]:")

app = FastAPI(title="medmlops serving", docs_url=None, redoc_url=None)


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


@bentoml.service(name="medmlops-model", traffic={"timeout": 300})
class Model:
    """The registered torch module, following ``MEDMLOPS_ALIAS``; ``forward`` is batched across requests."""

    def __init__(self) -> None:
        self.served = ServedModel.load(SETTINGS)

    @bentoml.api(batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)  # fmt: skip
    def forward(self, images: np.ndarray) -> np.ndarray:
        return self.served.forward(images)


@bentoml.service(name="medmlops-serving", traffic={"timeout": 300})
@bentoml.asgi_app(app, path="/")
class Gateway:
    """Reads the multipart upload; the core preprocesses, calls ``Model.forward``, decodes and records."""

    model = bentoml.depends(Model)

    def __init__(self) -> None:
        # A dropped keep-alive connection never reached the model (resent); BentoML's own errors mean it refused.
        resend_on, give_up_on = (aiohttp.ClientError,), (bentoml.exceptions.BentoMLException,)
        self.core = GatewayCore.from_registry(SETTINGS, resend_on=resend_on, give_up_on=give_up_on)

    @bentoml.on_shutdown
    def drain(self) -> None:
        # Blocks this worker's event loop for at most the drain period: no request is left to serve by then.
        self.core.close()

    @app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        from medmlops.inference.predict import InputError  # brings torch: not when BentoML only reads this module

        limit = SETTINGS.max_upload_bytes
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            sent = content_type or "no content type"
            return _error(415, "wrong_content_type",
                          f"send multipart/form-data with the file in field '{FIELD}', not '{sent}'")  # fmt: skip
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit + MULTIPART_OVERHEAD:
            return _error(413, "too_large", f"the request has {declared} bytes; the upload limit is {limit}")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:  # noqa: BLE001 - starlette raises several parser errors
            reason = " ".join(str(exc).split())[:200]
            return _error(400, "bad_multipart", f"the multipart body cannot be parsed ({reason})")
        upload = form.get(FIELD)
        if upload is None or isinstance(upload, str):
            fields = sorted(form.keys())
            return _error(400, "missing_field", f"no file in field '{FIELD}' (fields sent: {fields or 'none'})")
        if _PATHLIKE.search(upload.filename or ""):
            return _error(400, "bad_filename", f"file names must not contain a path ({upload.filename!r})")
        data = await upload.read(limit + 1)
        try:
            answer = await self.core.predict(data, request.headers.get("x-request-id"), self.model.to_async.forward)
        except ServiceUnavailable as err:
            retry = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s else None
            return _error(err.status, err.error, err.detail, retry)
        except (InputError, RecordError) as err:
            return _error(err.status, err.error, err.detail)
        return JSONResponse(answer)
