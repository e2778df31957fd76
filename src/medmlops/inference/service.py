"""The serving service without its HTTP shell: settings, the served model following its alias, and one prediction
from upload bytes to the client's answer and the record for monitoring.

``serving/service.py`` maps BentoML and HTTP onto :class:`ServedModel` (the batched torch forward) and
:class:`Gateway` (everything around it); what decides something is here, testable without a server.

The two halves speak through the forward's output: ``ServedModel.forward`` appends the version that computed each
row as a last column, so the gateway decodes with that version's contract even when the alias moved in between.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from medmlops.errors import UserError
from medmlops.inference.forwarding import DEFAULT_DRAIN_S, DEFAULT_SPOOL_DIR, Forwarder, SpoolError
from medmlops.inference.record import PredictionRecord, check_study_id, correlation_id_from_header, new_request_id
from medmlops.paths import state_path

if TYPE_CHECKING:
    from medmlops.inference.predict import Predictor
    from medmlops.registry.contract import ModelContract

log = logging.getLogger("medmlops.serving")
Forward = Callable[[np.ndarray], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class ServingSettings:
    """What ``medmlops serve`` passes to the server processes through their environment (:meth:`from_env`)."""

    family: str
    version: str
    max_upload_bytes: int = 64 * 1024 * 1024
    batching: bool = True
    max_batch_size: int = 16
    # BentoML's dispatcher *rejects* (503 "overloaded") requests it predicts will exceed this; the batching window
    # itself adapts far below it. Its per-item cost estimate is capped at max_latency/15; with 10 s, a 60 s load test
    # at concurrency 16 on 2 CPU cores shared with monitoring got 503 for 127 of 393 requests. So: a generous bound.
    max_latency_ms: int = 60000
    alias: str = ""
    reload_s: float = 30.0
    monitoring_url: str = ""
    spool_dir: str = ""
    monitoring_token: str = ""
    spool_drain_s: float = DEFAULT_DRAIN_S  # on shutdown, how long to keep delivering the spool before leaving it
    body_timeout_s: float = 30.0  # a request body not received in full by then is answered 408
    max_concurrent_preprocessing: int = 2  # uploads decoded at once per gateway worker
    max_zip_entries: int = 2048  # files in a CT series zip

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServingSettings:
        """``MEDMLOPS_FAMILY``, ``MEDMLOPS_MODEL_VERSION``, ``MEDMLOPS_MAX_UPLOAD_BYTES``, ``MEDMLOPS_BATCHING``
        (``0``: off), ``MEDMLOPS_MAX_BATCH_SIZE``, ``MEDMLOPS_MAX_LATENCY_MS``, ``MEDMLOPS_ALIAS``,
        ``MEDMLOPS_RELOAD_S``, ``MONITORING_URL`` (empty: no forwarding), ``MEDMLOPS_SPOOL_DIR``,
        ``MEDMLOPS_MONITORING_TOKEN``, ``MEDMLOPS_SPOOL_DRAIN_S``, ``MEDMLOPS_BODY_TIMEOUT_S``,
        ``MEDMLOPS_MAX_DECODING``, ``MEDMLOPS_MAX_ZIP_ENTRIES``; defaults where unset."""
        default = cls("", "")
        return cls(
            family=env.get("MEDMLOPS_FAMILY", ""), version=env.get("MEDMLOPS_MODEL_VERSION", ""),
            max_upload_bytes=int(env.get("MEDMLOPS_MAX_UPLOAD_BYTES", default.max_upload_bytes)),
            batching=env.get("MEDMLOPS_BATCHING", "1") != "0",
            max_batch_size=int(env.get("MEDMLOPS_MAX_BATCH_SIZE", default.max_batch_size)),
            max_latency_ms=int(env.get("MEDMLOPS_MAX_LATENCY_MS", default.max_latency_ms)),
            alias=env.get("MEDMLOPS_ALIAS", ""), reload_s=float(env.get("MEDMLOPS_RELOAD_S", default.reload_s)),
            monitoring_url=env.get("MONITORING_URL", ""), spool_dir=env.get("MEDMLOPS_SPOOL_DIR", ""),
            monitoring_token=env.get("MEDMLOPS_MONITORING_TOKEN", ""),
            spool_drain_s=float(env.get("MEDMLOPS_SPOOL_DRAIN_S", default.spool_drain_s)),
            body_timeout_s=float(env.get("MEDMLOPS_BODY_TIMEOUT_S", default.body_timeout_s)),
            max_concurrent_preprocessing=int(env.get("MEDMLOPS_MAX_DECODING", default.max_concurrent_preprocessing)),
            max_zip_entries=int(env.get("MEDMLOPS_MAX_ZIP_ENTRIES", default.max_zip_entries)),
        )  # fmt: skip


class ServiceUnavailable(UserError):
    """The prediction cannot be made or recorded now (503); ``retry_after_s`` tells the client when to try again."""

    status = 503

    def __init__(self, error: str, detail: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(f"{error}: {detail}")
        self.error, self.detail, self.retry_after_s = error, detail, retry_after_s


class ServedModel:
    """The registered torch module; follows ``settings.alias`` when one is set.

    Every ``reload_s`` seconds the alias is resolved; a new version is loaded beside the serving one and swapped in
    between two batches (no request is dropped). A version whose input or preprocessing differs is not swapped in
    (the gateway preprocesses with the serving chain): it is logged and needs a restart.
    """

    def __init__(self, settings: ServingSettings, predictor: Predictor) -> None:
        self.settings, self.predictor = settings, predictor

    @classmethod
    def load(cls, settings: ServingSettings) -> ServedModel:
        """``models:/family/version`` (by number: an alias move cannot interleave), following the alias if set."""
        from medmlops.inference.predict import Predictor

        served = cls(settings, Predictor.from_registry(settings.family, settings.version))
        if settings.alias and settings.reload_s > 0:
            threading.Thread(target=served._follow, name="medmlops-reload", daemon=True).start()
        return served

    def _follow(self) -> None:
        while True:
            time.sleep(self.settings.reload_s)
            try:
                self.check_alias()
            except Exception:  # noqa: BLE001 - MLflow briefly unreachable: keep serving, try again
                log.exception("checking %s@%s for a new version failed", self.settings.family, self.settings.alias)

    def check_alias(self) -> bool:
        """Serve the version the alias names now, when it is new and takes the same input; True when swapped."""
        from medmlops.inference.predict import Predictor
        from medmlops.registry.tracking import resolve_version

        family, alias = self.settings.family, self.settings.alias
        version = str(resolve_version(family, alias).version)
        if version == self.predictor.version:
            return False
        candidate = Predictor.from_registry(family, version, device=str(self.predictor.device))
        current = self.predictor.contract
        if candidate.contract.input != current.input or candidate.contract.preprocessing != current.preprocessing:
            log.error("%s@%s moved to version %s, whose input/preprocessing differ from version %s: restart the server "
                      "to serve it", family, alias, version, self.predictor.version)  # fmt: skip
            return False
        self.predictor = candidate  # one reference swap: a batch uses one version throughout
        log.info("%s@%s: now serving version %s", family, alias, version)
        return True

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Logits of a batch, then each row's out-of-distribution score (NaN: the version has no reference), then
        the version that computed them as a last column; one forward pass gives logits and score."""
        predictor = self.predictor
        logits, scores = predictor.forward_scored(images)
        n = len(logits)
        version = np.full((n, 1), float(predictor.version), np.float32)
        return np.concatenate([logits, np.asarray(scores, np.float32).reshape(n, 1), version], axis=1)


class Gateway:
    """Upload bytes → the model's input (the contract's chain), the forward (resent when a connection drops),
    the decoded answer, and the record spooled for monitoring before the answer goes out.

    Args:
        settings: the served family and version, upload limit, monitoring URL and spool.
        contract: the served version's contract (its preprocessing is the gateway's).
        resend_on: errors of the forward call that mean "not delivered" (it is pure: sent again, up to 3 times).
        give_up_on: errors that mean the model service refused (shed load, restarting): answered 503 at once.
    """

    attempts = 3

    def __init__(
        self, settings: ServingSettings, contract: ModelContract, *,
        resend_on: tuple[type[BaseException], ...] = (), give_up_on: tuple[type[BaseException], ...] = (),
    ) -> None:  # fmt: skip
        from medmlops.inference.predict import Preprocessor

        self.settings, self.resend_on, self.give_up_on = settings, resend_on, give_up_on
        self.contracts = {settings.version: contract}
        self.preprocess = Preprocessor(
            settings.family, contract, settings.max_upload_bytes, max_zip_entries=settings.max_zip_entries
        )
        # Decoding is the memory-hungry step: at most this many uploads are decoded at once; the others wait.
        self.decoding = anyio.CapacityLimiter(settings.max_concurrent_preprocessing)
        self.forwarder: Forwarder | None = None
        if settings.monitoring_url:
            spool = settings.spool_dir or Path(state_path(DEFAULT_SPOOL_DIR)) / settings.family
            token = settings.monitoring_token or None
            self.forwarder = Forwarder(settings.monitoring_url, spool, token=token).start()

    @classmethod
    def from_registry(cls, settings: ServingSettings, **kwargs: Any) -> Gateway:
        from medmlops.registry.tracking import load_contract

        return cls(settings, load_contract(settings.family, settings.version), **kwargs)

    def contract(self, version: str) -> ModelContract:
        """The contract of ``version`` (thresholds may differ between versions), loaded once."""
        if version not in self.contracts:
            from medmlops.registry.tracking import load_contract

            self.contracts[version] = load_contract(self.settings.family, version)
        return self.contracts[version]

    def close(self) -> None:
        """Serving shuts down: give the sender up to ``spool_drain_s`` to deliver the spool; the rest stays on disk
        for the next start."""
        if self.forwarder is not None:
            left = self.forwarder.stop(self.settings.spool_drain_s)
            if left:
                log.warning("%d records for monitoring stay in %s for the next start", left, self.forwarder.spool)

    async def predict(
        self, upload: bytes, x_request_id: str | None, forward: Forward, study_id: str | None = None
    ) -> dict[str, Any]:
        """The client's answer for ``upload``: a record id of the server's own, and the client's ``X-Request-ID`` (if
        it sent one) as its correlation id. The study identity (the DICOM's StudyInstanceUID and AccessionNumber,
        the client's ``study_id``) travels with the record; monitoring keeps the upload without patient identifiers.

        Raises:
            RecordError: the X-Request-ID header or the study id breaks its rule.
            InputError: the upload is not an image this model takes.
            ServiceUnavailable: the model service did not take it, or the spool cannot keep the record.
        """
        from medmlops.inference.upload import study_identity

        correlation_id = correlation_id_from_header(x_request_id)
        if study_id is not None:
            check_study_id(study_id)
        request_id = new_request_id()
        prepared = await anyio.to_thread.run_sync(self.preprocess.prepare, upload, limiter=self.decoding)
        outputs = await self._forward(forward, prepared.image.numpy()[None], request_id)
        study = {**prepared.upload.study, **study_identity({}, study_id)}
        return await anyio.to_thread.run_sync(
            functools.partial(self.answer, request_id, prepared.stored, outputs, correlation_id, study=study or None)
        )

    async def _forward(self, forward: Forward, images: np.ndarray, request_id: str) -> np.ndarray:
        for _attempt in range(self.attempts):
            try:
                return np.asarray(await forward(images))
            except self.resend_on as exc:
                # A pooled keep-alive connection the model service was just closing ("Server disconnected"):
                # measured, ~4 % of requests at concurrency 8 without the resend.
                failure: BaseException = exc
            except self.give_up_on as exc:
                failure = exc
                break
        log.warning("request %s: the model service did not take it (%s)", request_id, failure)
        raise ServiceUnavailable(
            "model_unavailable", f"the model could not take the request now ({failure}); retry", retry_after_s=1
        )

    def answer(
        self, request_id: str, upload: bytes, outputs: np.ndarray, correlation_id: str | None = None,
        study: dict[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Decode ``outputs`` (:meth:`ServedModel.forward`'s) and spool the record; the client's answer.

        The out-of-distribution verdict (:func:`medmlops.inference.ood.verdict`) and ``study`` (the study identity)
        go into the record. Outputs without a score column (a model service from before it) or a version without
        a reference give ``in_distribution: null``.

        Raises:
            InputError: 422 ``out_of_distribution``, when the version's contract refuses such inputs (nothing is
                recorded then).
            ServiceUnavailable: the spool cannot keep the record.
        """
        from medmlops.inference import ood
        from medmlops.inference.predict import InputError, decode, split_outputs

        version = str(int(outputs[0, -1]))
        contract = self.contract(version)
        n_logits = sum(task.n_logits for task in contract.tasks)
        logits = outputs[:, :n_logits]
        score = float(outputs[0, n_logits]) if outputs.shape[1] > n_logits + 1 else float("nan")
        reference = contract.input_gate.ood if contract.input_gate is not None else None
        (result,) = ood.verdict(reference if reference and "threshold" in reference else None, [score])
        if ood.refused(reference, result):
            raise InputError(
                "out_of_distribution", f"the image is unlike the images model {self.settings.family} version {version} "
                f"was trained on (distance {result['score']:.4g} above the threshold {result['threshold']:.4g})",
                status=422,
            )  # fmt: skip
        record = PredictionRecord.build(
            request_id=request_id, family=self.settings.family, version=version, upload=upload,
            predictions=decode(contract, split_outputs(contract, logits))[0], logits=logits[0].tolist(),
            correlation_id=correlation_id, ood=result, study=study or None,
        )  # fmt: skip
        if self.forwarder is not None:
            try:
                self.forwarder.submit(record)
            except SpoolError as exc:  # never drop a record silently
                raise ServiceUnavailable(
                    "spool_unavailable", f"the prediction was made but cannot be recorded for monitoring: {exc}"
                ) from exc
        return record.answer()
