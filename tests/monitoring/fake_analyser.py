"""A stand-in INFORMER analyser and logit-tier calibration source for the monitoring tests: deterministic results
from the upload's bytes, no model, no MLflow.

Used in-process (worker tests) and by real ``medmlops monitor serve|worker`` subprocesses through
``--analyser-factory tests.monitoring.fake_analyser:factory`` and ``--calibration-source
tests.monitoring.fake_analyser:calibration_source``. Environment (subprocess): ``FAKE_ANALYSER_DELAY_S`` (seconds per
upload, so a test can kill a process mid-batch), ``FAKE_ANALYSER_LOG`` (a file that gets one line per analysed
request), ``FAKE_ANALYSER_CALLS`` (a folder that gets one empty file per analysed upload, named
``<sha256>.<pid>.<ns>``: which process analysed what, and how often, without concurrent appends).

Uploads starting with ``b"BAD"`` give an InputError in their slot; ``b"RAISE"`` makes the whole call raise; family
``"missing"`` cannot be loaded nor scored; family ``"uncalibrated"`` is scored at ingest but never flagged there. The
logit tier flags a class when its MSR is below :data:`LOGIT_TAU` (logits within about ±0.4 of zero). A calibrated
family's contract also carries a CBPE ``performance`` section (:data:`PERFORMANCE`: temperatures 1, the
``cxr-findings`` gate: mean AUROC of both findings, floor :data:`GATE_FLOOR`); ``"uncalibrated"`` has none.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Sequence
from typing import Any

from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec

FINDINGS = ("Atelectasis", "Cardiomegaly")
CLASSES = [f"findings/{name}" for name in FINDINGS]  # the contract's output names, as the real analyser's classes
LOGIT_TAU = 0.6
CSF_AUGRC = 41.5  # the deployed CSF's (MSR's) validation AUGRC x 1000 the fake calibration reports
GATE_FLOOR = 0.6
PERFORMANCE = {
    "probability": {"method": "temperature", "classes": CLASSES, "temperature": [1.0, 1.0], "isotonic": None,
                    "too_few": [], "n": 0, "min_per_class": 5},
    "gate": {"metric": "findings_mean_auroc_mean", "floor": GATE_FLOOR, "estimate": "auroc", "classes": CLASSES,
             "why": None},
}  # fmt: skip


def tiny_png(seed: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (8, 8), (seed % 256, 64, 255 - seed % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fake_result(family: str, version: str, upload: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(upload).digest()
    p = {c: digest[i] / 255 for i, c in enumerate(CLASSES)}
    d = {c: digest[i + 2] / 64 for i, c in enumerate(CLASSES)}
    flags = {c: digest[i + 4] % 2 == 0 for i, c in enumerate(CLASSES)}
    return {
        "family": family, "version": version, "calibrated": True, "method": "ixg", "classes": list(CLASSES),
        "probabilities": p, "labels": {c: int(v >= 0.5) for c, v in p.items()}, "distinctiveness": d, "flags": flags,
        "flagged": any(flags.values()), "entropy": {c: 0.5 for c in CLASSES}, "msr": {c: max(v, 1 - v) for c, v in p.items()},
        "features": {"image_mean": digest[6] / 255, **{f"p:{c}": v for c, v in p.items()}, **{f"d:{c}": v for c, v in d.items()}},
        "saliency_png": tiny_png(digest[7]),
    }  # fmt: skip


class FakeAnalyser:
    def __init__(
        self, family: str, version: str, *, delay_s: float = 0.0, log: str | None = None, calls: str | None = None
    ) -> None:
        self.family, self.version, self.delay_s, self.log, self.calls_dir = family, version, delay_s, log, calls
        self.calls: list[int] = []

    def analyse_bytes(self, uploads: Sequence[bytes]) -> list[Any]:
        from medmlops.inference.predict import InputError

        self.calls.append(len(uploads))
        if any(u.startswith(b"RAISE") for u in uploads):
            raise RuntimeError("the analyser crashed")
        out: list[Any] = []
        for upload in uploads:
            digest = hashlib.sha256(upload).hexdigest()
            if self.log:  # before the work: a test can see a batch in flight
                with open(self.log, "a", encoding="utf-8") as f:
                    f.write(digest + "\n")
            if self.calls_dir:
                open(os.path.join(self.calls_dir, f"{digest}.{os.getpid()}.{time.time_ns()}"), "x").close()
            time.sleep(self.delay_s)
            if upload.startswith(b"BAD"):
                out.append(InputError("unreadable_image", "the upload is not a PNG, JPEG, DICOM or NIfTI file"))
            else:
                out.append(fake_result(self.family, self.version, upload))
        return out


def factory(family: str, version: str) -> FakeAnalyser:
    if family == "missing":
        raise RuntimeError(f"registered model '{family}' version {version} not found")
    return FakeAnalyser(
        family, version, delay_s=float(os.environ.get("FAKE_ANALYSER_DELAY_S", "0")),
        log=os.environ.get("FAKE_ANALYSER_LOG") or None, calls=os.environ.get("FAKE_ANALYSER_CALLS") or None,
    )  # fmt: skip


def fake_contract(family: str, *, calibrated: bool = True) -> ModelContract:
    """A two-finding multilabel contract whose ``informer`` field carries a logit-tier section (MSR, τ 0.6) and a
    CBPE performance section."""
    tier = {"score": "msr", "tau": [LOGIT_TAU] * 2, "direction": ["low"] * 2, "selection": {}}
    deployed = {"selected": "msr", "augrc": {"msr": CSF_AUGRC, "informer_ixg": 2 * CSF_AUGRC}, "reason": "lowest AUGRC",
                "operating_point": {"review_budget": 0.1, "tau": [LOGIT_TAU] * 2}}  # fmt: skip
    return ModelContract(
        family=family, tasks=(TaskSpec("findings", "multilabel", FINDINGS, (0.5, 0.5)),),
        input=InputSpec("xray", ("png",), (1, 8, 8), None, None, 1), preprocessing={}, data_version="test",
        git_commit="test", metrics={},
        informer={"method": "ixg", "logit_tier": tier, "csf": deployed, "performance": PERFORMANCE} if calibrated else None,
    )  # fmt: skip


def calibration_source(family: str, version: str) -> tuple[ModelContract, dict[str, Any] | None]:
    """What ``--calibration-source`` gives the logit tier: ``(contract, calibration)``, as the registry would."""
    if family == "missing":
        raise RuntimeError(f"registered model '{family}' version {version} not found")
    contract = fake_contract(family, calibrated=family != "uncalibrated")
    return contract, contract.informer
