"""The BentoML service of one registered family: ``POST /predict`` (multipart field ``image``) → JSON predictions.

Two BentoML services in one server: ``Gateway`` (the HTTP surface: request checks, preprocessing from the model
contract, decoding, errors as 4xx JSON) and ``Model`` (the torch forward, with BentoML's adaptive batching, so
concurrent requests share one batched forward). Both load the same model version, resolved once by
``medmlops serve`` and passed as ``MEDMLOPS_MODEL_VERSION`` (MLflow from ``MLFLOW_TRACKING_URI``).

Environment: ``MEDMLOPS_FAMILY``, ``MEDMLOPS_MODEL_VERSION``, ``MEDMLOPS_MAX_UPLOAD_BYTES``,
``MEDMLOPS_MAX_BATCH_SIZE``, ``MEDMLOPS_MAX_LATENCY_MS``, ``MEDMLOPS_BATCHING`` (``0`` turns batching off),
``MONITORING_URL`` (empty: no forwarding), ``MEDMLOPS_SPOOL_DIR``, ``MEDMLOPS_MONITORING_TOKEN``.

Every prediction is forwarded to monitoring with its request id, model version, the upload itself (base64, with
its sha256: monitoring re-runs the same preprocessing from the contract), outputs and timestamp, through a disk
spool and a background sender (``medmlops.inference.forwarding``): off the request path, retried with backoff while
monitoring is down, idempotent by request id.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import os
import re
import threading
import time
import uuid

import aiohttp
import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

FAMILY = os.environ.get("MEDMLOPS_FAMILY", "")
VERSION = os.environ.get("MEDMLOPS_MODEL_VERSION", "")
MAX_UPLOAD = int(os.environ.get("MEDMLOPS_MAX_UPLOAD_BYTES", str(64 * 1024 * 1024)))
BATCHING = os.environ.get("MEDMLOPS_BATCHING", "1") != "0"
MAX_BATCH = int(os.environ.get("MEDMLOPS_MAX_BATCH_SIZE", "16"))
# BentoML's dispatcher *rejects* (503 "overloaded") requests it predicts will exceed this; the batching window
# itself adapts far below it. Its per-item cost estimate is capped at max_latency/15; with 10 s, a 60 s load test
# at concurrency 16 on 2 CPU cores shared with monitoring got 503 for 127 of 393 requests. So: a generous bound.
MAX_LATENCY_MS = int(os.environ.get("MEDMLOPS_MAX_LATENCY_MS", "60000"))
ALIAS = os.environ.get("MEDMLOPS_ALIAS", "")
RELOAD_S = float(os.environ.get("MEDMLOPS_RELOAD_S", "30"))
MONITORING_URL = os.environ.get("MONITORING_URL", "")
SPOOL_DIR = os.environ.get("MEDMLOPS_SPOOL_DIR", "")
MONITORING_TOKEN = os.environ.get("MEDMLOPS_MONITORING_TOKEN", "")
FIELD = "image"
log = logging.getLogger("medmlops.serving")
_PATHLIKE = re.compile(r"(^|[\\/])\.\.([\\/]|$)|^[\\/]|[\\/]|^[A-Za-z]:")

app = FastAPI(title="medmlops serving", docs_url=None, redoc_url=None)


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


@bentoml.service(name="medmlops-model", traffic={"timeout": 300})
class Model:
    """The registered torch module; ``forward`` is batched adaptively across concurrent requests.

    Follows ``MEDMLOPS_ALIAS``: every ``MEDMLOPS_RELOAD_S`` seconds it resolves the alias; a new version is loaded
    beside the serving one and swapped in between two batches (no request is dropped). A version whose input or
    preprocessing differs is not swapped in (the gateway preprocesses with the serving chain): it is logged and
    needs a restart. ``forward`` appends the version that computed each row as a last column.
    """

    def __init__(self) -> None:
        from medmlops.inference.predict import Predictor

        self.predictor = Predictor.from_registry(FAMILY, VERSION)  # version number: an alias move cannot interleave
        if ALIAS and RELOAD_S > 0:
            threading.Thread(target=self._follow_alias, name="medmlops-reload", daemon=True).start()

    def _follow_alias(self) -> None:
        from medmlops.inference.predict import Predictor
        from medmlops.registry.tracking import resolve_version

        while True:
            time.sleep(RELOAD_S)
            try:
                version = str(resolve_version(FAMILY, ALIAS).version)
                if version == self.predictor.version:
                    continue
                candidate = Predictor.from_registry(FAMILY, version, device=str(self.predictor.device))
                current = self.predictor.contract
                if (
                    candidate.contract.input != current.input
                    or candidate.contract.preprocessing != current.preprocessing
                ):
                    log.error("%s@%s moved to version %s, whose input/preprocessing differ from version %s: restart "
                              "the server to serve it", FAMILY, ALIAS, version, self.predictor.version)  # fmt: skip
                    continue
                self.predictor = candidate  # one reference swap: a batch uses one version throughout
                log.info("%s@%s: now serving version %s", FAMILY, ALIAS, version)
            except Exception:  # noqa: BLE001 - MLflow briefly unreachable: keep serving, try again
                log.exception("checking %s@%s for a new version failed", FAMILY, ALIAS)

    @bentoml.api(batchable=BATCHING, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def forward(self, images: np.ndarray) -> np.ndarray:
        predictor = self.predictor
        logits = predictor.forward(images)
        return np.concatenate([logits, np.full((len(logits), 1), float(predictor.version), np.float32)], axis=1)


@bentoml.service(name="medmlops-serving", traffic={"timeout": 300})
@bentoml.asgi_app(app, path="/")
class Gateway:
    """Checks the request, preprocesses with the contract's chain, calls ``Model.forward``, decodes."""

    model = bentoml.depends(Model)

    def __init__(self) -> None:
        from medmlops.inference.predict import Preprocessor
        from medmlops.registry.tracking import load_contract

        self.contract = load_contract(FAMILY, VERSION)
        self.contracts = {VERSION: self.contract}
        self.preprocess = Preprocessor(FAMILY, self.contract, MAX_UPLOAD)
        self.forwarder = None
        if MONITORING_URL:
            from medmlops.inference.forwarding import Forwarder

            self.forwarder = Forwarder(
                MONITORING_URL, SPOOL_DIR or f".medmlops/spool/{FAMILY}", token=MONITORING_TOKEN or None
            )
            self.forwarder.start()

    def _contract(self, version: str):
        """The contract of ``version`` (thresholds may differ between versions), loaded once."""
        if version not in self.contracts:
            from medmlops.registry.tracking import load_contract

            self.contracts[version] = load_contract(FAMILY, version)
        return self.contracts[version]

    @app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        from medmlops.inference.predict import InputError, decode, split_outputs

        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return _error(
                415,
                "wrong_content_type",
                f"send multipart/form-data with the file in field '{FIELD}', not '{content_type or 'no content type'}'",
            )
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_UPLOAD + 64 * 1024:
            return _error(413, "too_large", f"the request has {declared} bytes; the upload limit is {MAX_UPLOAD}")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:  # noqa: BLE001 - starlette raises several parser errors
            return _error(
                400, "bad_multipart", f"the multipart body cannot be parsed ({' '.join(str(exc).split())[:200]})"
            )
        upload = form.get(FIELD)
        if upload is None or isinstance(upload, str):
            fields = sorted(form.keys())
            return _error(400, "missing_field", f"no file in field '{FIELD}' (fields sent: {fields or 'none'})")
        filename = upload.filename or ""
        if _PATHLIKE.search(filename):
            return _error(400, "bad_filename", f"file names must not contain a path ({filename!r})")
        data = await upload.read(MAX_UPLOAD + 1)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", request_id):
            return _error(400, "bad_request_id", "X-Request-ID must be 1-128 letters, digits, '.', '_' or '-'")
        try:
            image = await run_in_threadpool(self.preprocess, data)
        except InputError as err:
            return _error(err.status, err.error, err.detail)
        logits = None
        for _attempt in range(3):
            try:
                logits = await self.model.to_async.forward(image.numpy()[None])
                break
            except aiohttp.ClientError as exc:
                # A pooled keep-alive connection the model service was just closing ("Server disconnected"):
                # forward is pure, so resend (measured: ~4 % of requests at concurrency 8 without this).
                failure = exc
            except bentoml.exceptions.BentoMLException as exc:  # the model service shed load or is restarting
                failure = exc
                break
        if logits is None:
            log.warning("request %s: the model service did not take it (%s)", request_id, failure)
            response = _error(503, "model_unavailable", f"the model could not take the request now ({failure}); retry")
            response.headers["Retry-After"] = "1"
            return response
        logits = np.asarray(logits)
        version = str(int(logits[0, -1]))  # the version that computed it (the alias may have moved)
        contract = await run_in_threadpool(self._contract, version)
        logits = logits[:, :-1]
        prediction = decode(contract, split_outputs(contract, logits))[0]
        answer = {
            "request_id": request_id, "model": FAMILY, "version": version,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "predictions": prediction,
        }  # fmt: skip
        if self.forwarder is not None:
            from medmlops.inference.forwarding import SpoolError

            record = {
                **answer, "logits": logits[0].tolist(),
                "input": {"sha256": hashlib.sha256(data).hexdigest(), "bytes_b64": base64.b64encode(data).decode()},
            }  # fmt: skip
            try:
                await run_in_threadpool(self.forwarder.submit, record)
            except (SpoolError, ValueError) as exc:  # never drop a record silently
                return _error(
                    503, "spool_unavailable", f"the prediction was made but cannot be recorded for monitoring: {exc}"
                )
        return JSONResponse(answer)
