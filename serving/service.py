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
import anyio
import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from medmlops.inference.record import RecordError
from medmlops.inference.service import Gateway as GatewayCore
from medmlops.inference.service import ServedModel, ServiceUnavailable, ServingSettings

SETTINGS = ServingSettings.from_env()
FIELD = "image"
STUDY_FIELD = "study_id"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the upload
_PATHLIKE = re.compile(r"(^|[\\/])\.\.([\\/]|$)|^[\\/]|[\\/]|^[A-Za-z]:")

# Every refusal is {"error": code, "detail": one sentence}; a gate refusal (422 not_accepted) adds "attribute",
# "value" and "accepted". The codes, per status, as /docs lists them.
ERRORS = {
    400: "bad_multipart, missing_field, bad_filename, bad_request_id, bad_study_id, empty_upload, corrupt_file, "
         "unreadable_image, non_finite, implausible_shape, bad_zip, bad_entry_name, not_dicom, unreadable_slice: "
         "the request or the file cannot be read as sent",
    408: "body_timeout: the body did not arrive in full within the server's body timeout",
    413: "too_large (bytes on the wire or inflated), too_many_pixels (decoded size from the header), "
         "too_many_entries (a series zip): refused before decoding",
    415: "wrong_content_type (not multipart/form-data), wrong_modality (a format this model does not take)",
    422: "not_accepted (a DICOM attribute the model is not for: Modality, BodyPartExamined, ViewPosition, "
         "PhotometricInterpretation, SamplesPerPixel, NumberOfFrames), not_hounsfield_units, wrong_shape, "
         "mixed_series, not_ct, missing_slices, inconsistent_spacing, inconsistent_geometry, duplicate_slices, "
         "too_few_slices, out_of_distribution (when the contract refuses it)",
    503: "model_unavailable, spool_unavailable (with Retry-After when known): try again",
}  # fmt: skip
_ERROR_SCHEMA = {"type": "object", "required": ["error", "detail"],
                 "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}  # fmt: skip
_PREDICT_DOCS = {
    "summary": "Predict from one image",
    "description": "One image per request: NIfTI (.nii, .nii.gz) or a zip of one DICOM CT series for "
    "ich-prognosis; DICOM, PNG or JPEG for the chest families. The header is checked against the model's contract "
    "before anything is decoded. The answer names the model version, the predictions per task, "
    "`in_distribution` with the out-of-distribution score and threshold, and the study identity.",
    "responses": {
        200: {
            "description": "the prediction: request_id, model, version, created_at, predictions (per task: "
            "probabilities, label or labels, thresholds), in_distribution (true, false, or null without a "
            "reference), ood {score, threshold}, study {study_instance_uid, accession_number, study_id} when "
            "known, correlation_id (the client's X-Request-ID) when sent"
        },
        **{
            status: {"description": text, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
            for status, text in ERRORS.items()
        },  # fmt: skip
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [FIELD],
                        "properties": {
                            FIELD: {"type": "string", "format": "binary", "description": "the image file"},
                            STUDY_FIELD: {
                                "type": "string",
                                "maxLength": 128,
                                "description": "the hospital's study identifier, kept with the record (optional)",
                            },
                        },
                    }
                }
            },
        }
    },  # fmt: skip
}

app = FastAPI(
    title="medmlops serving", version="1", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json",
    description=f"POST an image to /predict as multipart field '{FIELD}'. Errors are JSON "
    "{error, detail}; see each status below.",
)  # fmt: skip


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, stopping at ``limit`` bytes whatever the transfer encoding (a chunked upload has no
    Content-Length), and within ``timeout_s`` (a client that stops sending holds nothing for long)."""
    chunks, size = [], 0
    with anyio.fail_after(timeout_s):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
    return b"".join(chunks)


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

    @app.post("/predict", **_PREDICT_DOCS)
    async def predict(self, request: Request) -> JSONResponse:
        from medmlops.inference.predict import InputError  # brings torch: not when BentoML only reads this module

        limit = SETTINGS.max_upload_bytes
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            sent = content_type or "no content type"
            return _error(415, "wrong_content_type",
                          f"send multipart/form-data with the file in field '{FIELD}', not '{sent}'")  # fmt: skip
        declared = request.headers.get("content-length") or "0"
        if not declared.isdigit():
            return _error(400, "bad_multipart", f"the Content-Length header {declared[:40]!r} is not a number")
        if int(declared) > limit + MULTIPART_OVERHEAD:
            return _error(413, "too_large", f"the request has {declared} bytes; the upload limit is {limit}",
                          {"Connection": "close"})  # fmt: skip
        try:
            request._body = await _read_body(request, limit + MULTIPART_OVERHEAD, SETTINGS.body_timeout_s)
        except _BodyTooLarge:
            return _error(413, "too_large", f"the request body passed the upload limit of {limit} bytes; "
                          "reading stopped there", {"Connection": "close"})  # fmt: skip
        except TimeoutError:
            return _error(408, "body_timeout", f"the request body did not arrive in full within "
                          f"{SETTINGS.body_timeout_s:g} s", {"Connection": "close"})  # fmt: skip
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
        study_id = form.get(STUDY_FIELD)
        if study_id is not None and not isinstance(study_id, str):
            return _error(400, "bad_study_id", f"field '{STUDY_FIELD}' must be text, not a file")
        data = await upload.read(limit + 1)
        try:
            answer = await self.core.predict(
                data, request.headers.get("x-request-id"), self.model.to_async.forward, study_id or None
            )
        except ServiceUnavailable as err:
            retry = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s else None
            return _error(err.status, err.error, err.detail, retry)
        except InputError as err:
            return JSONResponse(err.body(), status_code=err.status)
        except RecordError as err:
            return _error(err.status, err.error, err.detail)
        return JSONResponse(answer)
