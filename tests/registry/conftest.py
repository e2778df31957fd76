"""Registry fixtures: a SQLite tracking store per test, one real ``mlflow server`` per session, a tiny model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before mlflow is imported: its telemetry client is created at import time and would retry an external address.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from torch import nn  # noqa: E402

from medmlops.config import RegistryConfig  # noqa: E402
from medmlops.registry import InputSpec, ModelContract, TaskSpec, configure, get_or_create_experiment  # noqa: E402
from medmlops.registry.tracking import register_model  # noqa: E402

SHAPE = (1, 16, 16)


class TwoHeadNet(nn.Module):
    """conv → pool → two heads, returning ``{"prognosis": (B, 1), "gcs": (B, 2)}`` like the real multi-task models."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.prognosis = nn.Linear(4, 1)
        self.gcs = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {"prognosis": self.prognosis(h), "gcs": self.gcs(h)}


def make_contract(family: str = "ich-prognosis", metrics: dict[str, float] | None = None) -> ModelContract:
    return ModelContract(
        family=family,
        tasks=(
            TaskSpec("prognosis", "binary", ("good", "poor"), (0.5,)),
            TaskSpec("gcs", "ordinal", ("mild", "moderate", "severe"), (0.5, 0.42)),
        ),
        input=InputSpec(
            modality="xray", formats=("png", "dicom"), shape=SHAPE, spacing_mm=None, intensity_window=None, channels=1
        ),
        preprocessing={"resize": list(SHAPE[1:]), "scale": "minmax"},
        data_version="0123456789abcdef.dir",
        git_commit="feedface",
        metrics={"prognosis_auc_mean": 0.8} if metrics is None else metrics,
    )


def example_batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((2, *SHAPE), dtype=np.float32)


@dataclass
class Registry:
    """A configured tracking backend plus helpers to register tiny models into it."""

    uri: str
    experiment_id: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient()

    def new_run(self, metrics: dict[str, float] | None = None) -> str:
        client = self.client
        run = client.create_run(self.experiment_id)
        for name, value in (metrics or {}).items():
            client.log_metric(run.info.run_id, name, value)
        client.set_terminated(run.info.run_id)
        return run.info.run_id

    def register(
        self,
        family: str,
        metrics: dict[str, float] | None = None,
        *,
        run_metrics: dict[str, float] | None = None,
        model: nn.Module | None = None,
        contract: ModelContract | None = None,
        **kwargs,
    ):
        torch.manual_seed(len(self.versions(family)))
        return register_model(
            model or TwoHeadNet(),
            contract or make_contract(family, metrics),
            run_id=self.new_run(run_metrics),
            input_example=example_batch(),
            family=family,
            **kwargs,
        )

    def versions(self, family: str) -> list[str]:
        try:
            return sorted(str(v.version) for v in self.client.search_model_versions(f"name='{family}'"))
        except mlflow.exceptions.MlflowException:
            return []


@pytest.fixture
def restore_mlflow_uris() -> Iterator[None]:
    """Put MLflow's process-wide tracking/registry URIs back after the test."""
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


def aliases(client: MlflowClient, family: str) -> dict[str, str]:
    """Alias → version as strings (SQLite stores return ints, REST returns strings)."""
    return {k: str(v) for k, v in (client.get_registered_model(family).aliases or {}).items()}


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database, migrated once: creating the schema costs ~4 s, copying the file milliseconds."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}").search_registered_models()
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def sqlite_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_mlflow_uris: None, sqlite_template: Path
) -> Registry:
    """A fresh SQLite tracking + registry store and artifact folder under ``tmp_path``, configured as in main()."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copyfile(sqlite_template, tmp_path / "mlflow.db")
    cfg = RegistryConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_dir=str(tmp_path / "artifacts"))
    uri = configure(cfg, cwd=tmp_path)
    return Registry(uri, get_or_create_experiment("medmlops/test", cfg=cfg, cwd=tmp_path))


@pytest.fixture
def server_registry(
    mlflow_server: str, monkeypatch: pytest.MonkeyPatch, restore_mlflow_uris: None, tmp_path: Path
) -> Registry:
    """The session's mlflow server, reached the way a cluster deployment does: through $MLFLOW_TRACKING_URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    uri = configure(RegistryConfig(), cwd=tmp_path)
    return Registry(uri, get_or_create_experiment("medmlops/server-test"))


@pytest.fixture
def unique_family(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Family names unique per test (the session server is shared)."""
    return lambda base: f"{base}-{request.node.name}".replace("[", "-").replace("]", "")[:100]
