"""The review queue's stand-ins: the fake analyser and calibration source of :mod:`.fake_analyser`, with a contract
whose preprocessing is the real chest X-ray chain (so ``/v1/records/{id}/image.png`` draws the upload through the
model's own loader) and results that carry every class's saliency map (``class_pngs``), as the real analyser's do.

Used in-process and by ``medmlops monitor serve --analyser-factory tests.monitoring.review_fakes:factory
--calibration-source tests.monitoring.review_fakes:calibration_source``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Sequence
from typing import Any

from medmlops.registry.contract import InputSpec, ModelContract

from . import fake_analyser
from .fake_analyser import CLASSES, FakeAnalyser, tiny_png

FACTORY = "tests.monitoring.review_fakes:factory"
SOURCE = "tests.monitoring.review_fakes:calibration_source"
SIZE = 32  # the model input side


def xray_png(seed: int, side: int = 64) -> bytes:
    """A grey chest-film-like PNG (a bright disc on a gradient), different per ``seed``."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    centre = side / 2 + (seed % 7) - 3
    disc = ((x - centre) ** 2 + (y - side / 2) ** 2) < (side / 4) ** 2
    pixels = 40 + 120 * x / side + 80 * disc + (seed * 13) % 30
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class MapsAnalyser(FakeAnalyser):
    """The fake analyser, plus a distinct map per class (``class_pngs``) and the deployed CSF's confidence."""

    def analyse_bytes(self, uploads: Sequence[bytes]) -> list[Any]:
        out = super().analyse_bytes(uploads)
        for upload, result in zip(uploads, out, strict=True):
            if isinstance(result, dict):
                digest = hashlib.sha256(upload).digest()
                result["class_pngs"] = [tiny_png(digest[8 + j] + 60 * j) for j in range(len(CLASSES))]
                result["csf"] = "msr"
                result["confidence"] = dict(result["msr"])
                # the deployed CSF (MSR) at its operating point, as the real analyser flags
                result["flags"] = {c: v < fake_analyser.LOGIT_TAU for c, v in result["msr"].items()}
                result["flagged"] = any(result["flags"].values())
                result["informer_flags"] = {c: False for c in CLASSES}
        return out


def factory(family: str, version: str) -> MapsAnalyser:
    fake_analyser.factory(family, version)  # the same refusals (family "missing")
    return MapsAnalyser(family, version)


def review_contract(family: str, *, calibrated: bool = True) -> ModelContract:
    """:func:`fake_analyser.fake_contract` with the real chest X-ray preprocessing (``SIZE`` pixels, no lung crop)."""
    contract = fake_analyser.fake_contract(family, calibrated=calibrated)
    return dataclasses.replace(
        contract,
        input=InputSpec("xray", ("png",), (3, SIZE, SIZE), None, None, 3),
        preprocessing={"chain": "cxr", "size": SIZE, "lung_crop": False, "percentiles": [1.0, 99.0]},
    )


def calibration_source(family: str, version: str) -> tuple[ModelContract, dict[str, Any] | None]:
    if family == "missing":
        raise RuntimeError(f"registered model '{family}' version {version} not found")
    contract = review_contract(family, calibrated=family != "uncalibrated")
    return contract, contract.informer
