"""``medmlops.inference.predict``: registered smoke models (ich-prognosis: NIfTI; cxr-findings: JPEG/PNG/DICOM) predict from
upload bytes through the training preprocessing, and every kind of bad upload is refused with a code and a
sentence naming the problem."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medmlops.inference.predict import InputError, Predictor, decode, sniff_format

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(registered_project):
    return registered_project


@pytest.fixture(scope="module")
def predictors(project):
    import mlflow

    from medmlops.registry import tracking

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{project / '.medmlops' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        loaded = {
            f: Predictor.from_registry(f, "candidate", device="cpu", max_bytes=2_000_000)
            for f in ("ich-prognosis", "cxr-findings")
        }
        assert tracking.resolve_version("ich-prognosis", "candidate").version
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    return loaded


def _nifti_bytes(volume: np.ndarray, gz: bool = True) -> bytes:
    image = nib.Nifti1Image(volume.astype(np.float32), np.diag([0.5, 0.5, 5.0, 1.0]))
    raw = image.to_bytes()
    return gzip.compress(raw) if gz else raw


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_ct_upload_predicts_every_head_with_the_contract_classes(project, predictors):
    predictor = predictors["ich-prognosis"]
    data = next((project / "data" / "raw-smoke" / "ich").rglob("*.nii.gz")).read_bytes()
    out = predictor.predict_bytes(data)
    assert list(out) == ["prognosis", "gcs_ordinal", "age_binary"]
    prognosis = out["prognosis"]
    assert set(prognosis["probabilities"]) == {"good", "poor"} and prognosis["label"] in ("good", "poor")
    assert sum(prognosis["probabilities"].values()) == pytest.approx(1.0)
    gcs = out["gcs_ordinal"]
    assert list(gcs["probabilities"]) == [">=moderate GCS 9-12", ">=severe GCS 3-8"]
    assert gcs["label"] in predictor.contract.tasks[1].classes


def test_one_code_path_same_tensor_as_training(project, predictors):
    """The upload path gives the tensor the training dataset gives for the same file."""
    from monai.transforms import Compose

    from medmlops.config import load_params
    from medmlops.data.preprocess import deterministic_transforms

    predictor = predictors["ich-prognosis"]
    path = next((project / "data" / "raw-smoke" / "ich").rglob("*.nii.gz"))
    params = load_params(project / "params.yaml", profile="smoke")
    expected = Compose(deterministic_transforms(params, "ich"))({"image": str(path)})["image"]
    assert torch.allclose(predictor.preprocess(path.read_bytes()), torch.as_tensor(expected), atol=1e-6)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "dicom"])
def test_xray_formats_predict_findings(project, predictors, fmt):
    predictor = predictors["cxr-findings"]
    if fmt == "dicom":
        data = next((project / "data" / "raw-smoke" / "aiforcovid").rglob("*.dcm")).read_bytes()
    else:
        jpg = next((project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg"))
        data = jpg.read_bytes() if fmt == "jpeg" else _png_bytes(np.asarray(Image.open(jpg)))
    assert sniff_format(data) == fmt
    out = predictor.predict_bytes(data)["findings"]
    assert list(out["probabilities"]) == list(predictor.contract.tasks[0].classes)
    assert all(0.0 <= p <= 1.0 for p in out["probabilities"].values())
    assert set(out["labels"]) <= set(out["probabilities"])
    assert out["labels"] == [
        c for c, p in out["probabilities"].items() if p >= out["thresholds"][list(out["probabilities"]).index(c)]
    ]


def test_batch_prediction_equals_one_by_one(project, predictors):
    predictor = predictors["cxr-findings"]
    files = sorted((project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg"))[:4]
    tensors = [predictor.preprocess(f.read_bytes()) for f in files]
    batched = predictor.predict_tensors(tensors)
    single = [predictor.predict_tensors([t])[0] for t in tensors]
    for a, b in zip(batched, single, strict=True):
        for cls, p in a["findings"]["probabilities"].items():
            assert p == pytest.approx(b["findings"]["probabilities"][cls], abs=1e-5)


def test_ordinal_labels_are_decoded_monotonically():
    from ..registry.conftest import make_contract

    contract = make_contract()
    ordinal = next(t for t in contract.tasks if t.kind == "ordinal")
    logits = {t.name: torch.zeros(3, t.n_logits) for t in contract.tasks}
    # second bit fires without the first: still the lowest class; both: the highest.
    logits[ordinal.name] = torch.tensor([[-5.0, 5.0], [5.0, -5.0], [5.0, 5.0]])
    labels = [row[ordinal.name]["label"] for row in decode(contract, logits)]
    assert labels == [ordinal.classes[0], ordinal.classes[1], ordinal.classes[2]]


# ---------------------------------------------------------------------------------------------------------------------
# Bad uploads: each refused with a stable code and a sentence naming the problem.
# ---------------------------------------------------------------------------------------------------------------------


def _bad_corpus(project) -> dict[str, tuple[str, bytes, str, str]]:
    """name → (family, bytes, error code, text the detail must contain)."""
    nii = next((project / "data" / "raw-smoke" / "ich").rglob("*.nii.gz")).read_bytes()
    jpg = next((project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg")).read_bytes()
    png = _png_bytes(np.asarray(Image.open(next((project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg")))))
    dcm = next((project / "data" / "raw-smoke" / "aiforcovid").rglob("*.dcm")).read_bytes()
    nan_volume = np.full((64, 64, 16), 40.0)
    nan_volume[10, 10, 3] = np.nan
    return {
        "empty": ("cxr-findings", b"", "empty_upload", "empty"),
        "text": ("ich-prognosis", b"just some text, not an image", "unsupported_format", "not NIfTI"),
        "truncated gzip": ("ich-prognosis", nii[: len(nii) // 2], "corrupt_file", "cannot be decompressed"),
        "gzip of garbage": ("ich-prognosis", gzip.compress(b"x" * 1000), "unsupported_format", "not NIfTI"),
        "truncated nifti": ("ich-prognosis", gzip.decompress(nii)[:600], "unreadable_image", "cannot be read"),
        "truncated png": ("cxr-findings", png[:100], "unreadable_image", "cannot be read"),
        "truncated jpeg": ("cxr-findings", jpg[:200], "unreadable_image", "cannot be read"),
        "truncated dicom": ("cxr-findings", dcm[:400], "corrupt_file", "no Rows/Columns (truncated"),
        "truncated dicom pixels": ("cxr-findings", dcm[: len(dcm) - 100], "unreadable_image", "cannot be read"),
        "2D image to the 3D model": ("ich-prognosis", png, "wrong_modality", "takes .nii"),
        "3D volume to the 2D model": ("cxr-findings", nii, "wrong_modality", "upload is NIFTI"),
        "2D NIfTI to the 3D model": (
            "ich-prognosis",
            _nifti_bytes(np.zeros((64, 64))),
            "unreadable_image",
            "cannot be read",
        ),
        "NaN voxels": ("ich-prognosis", _nifti_bytes(nan_volume), "non_finite", "1 NaN/Inf voxels"),
        "absurd shape": ("ich-prognosis", _nifti_bytes(np.zeros((1, 1, 1))), "implausible_shape", "shape [1, 1, 1]"),
        "tiny x-ray": ("cxr-findings", _png_bytes(np.zeros((4, 4), np.uint8)), "implausible_shape", "32-8192 pixels"),
        "oversized": ("cxr-findings", _PNG_HEADER + b"\0" * 2_100_000, "too_large", "limit is 2000000"),
    }


_PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def test_bad_uploads_are_refused_naming_the_problem(project, predictors):
    problems = []
    corpus = _bad_corpus(project)
    for name, (family, data, code, text) in corpus.items():
        try:
            predictors[family].predict_bytes(data)
        except InputError as err:
            detail = err.detail
            if err.error != code or text.lower() not in detail.lower() or not 400 <= err.status < 500:
                problems.append(f"{name}: got {err.status} {err.error}: {detail}")
            elif len(detail.splitlines()) != 1 or "medmlops-upload" in detail:
                problems.append(f"{name}: detail not one clean sentence: {detail}")
        else:
            problems.append(f"{name}: accepted")
    assert not problems, "\n".join(problems)
    assert len(corpus) >= 14
