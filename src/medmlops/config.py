"""Typed, frozen configuration loaded from ``params.yaml``.

``params.yaml`` is the single source of configuration for the CLI, the dvc.yaml stages and the Kubeflow
pipelines. It holds the defaults (the ``demo`` profile) at the top level and a ``profiles:`` mapping whose
entries are *overrides* of the same tree (``smoke`` shrinks everything for tests, ``paper`` restores the
papers' settings). Loading is strict: an unknown key anywhere is a user mistake and is reported with its
dotted path, e.g. ``params.yaml: unknown key 'data.ich.shpe' (expected one of: n, shape, ...)``.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medmlops.errors import UserError, did_you_mean, unknown_name
from medmlops.paths import state_path

PROFILES = ("smoke", "demo", "paper")
# CheXpert cohorts (data.chexpert.cohort): all = every image; paper = Shu et al.'s INFORMER cohort (data.readers).
CHEXPERT_COHORTS = ("all", "paper")


class ConfigError(UserError, ValueError):
    """A user mistake in params.yaml or a ``--set`` override; the message names the key."""


# ----------------------------------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IchData:
    """Size of the simulated ICH dataset and the patients to exclude when reading (real or simulated)."""

    n: int = 120
    shape: tuple[int, int, int] = (32, 128, 128)  # slices, rows, cols
    # The authors' public code drops patient 213 (a scan that fails to load); the list is configurable.
    exclude: tuple[int, ...] = ()


@dataclass(frozen=True)
class CxrData:
    n: int = 240
    shape: tuple[int, int] = (256, 256)  # rows, cols


@dataclass(frozen=True)
class ChexpertData:
    n: int = 600  # frontal training images; the simulator adds laterals and a validation split
    n_valid: int = 100
    shape: tuple[int, int] = (256, 256)
    # CheXpert's uncertain (-1) labels: "ignore" (U-Ignore: masked out of the loss), "ones" (U-Ones), "zeros" (U-Zeros).
    uncertainty_policy: str = "ignore"
    frontal_only: bool = True
    # all: every image (train.csv + valid.csv in the folds); paper: Shu et al.'s INFORMER cohort (frontal, no
    # uncertain label, at least one of the five findings; folds from train.csv, τ on valid.csv, test.csv tested).
    cohort: str = "all"

    def __post_init__(self) -> None:
        if self.cohort not in CHEXPERT_COHORTS:
            raise ConfigError(f"data.chexpert.cohort must be all or paper, got '{self.cohort}'")
        if self.cohort == "paper" and not self.frontal_only:
            raise ConfigError("data.chexpert.cohort paper uses frontal images only: set data.chexpert.frontal_only "
                              "true or cohort all")  # fmt: skip


@dataclass(frozen=True)
class DataConfig:
    raw_dir: str = "data/raw"
    dvc_file: str = "data.dvc"  # the DVC record of raw_dir (project root): each profile has its own
    simulated: bool = True  # raw_dir is made by the simulators (made when absent); false: real data, never generated
    seed: int = 0
    ich: IchData = field(default_factory=IchData)
    aiforcovid: CxrData = field(default_factory=CxrData)
    brixia: CxrData = field(default_factory=CxrData)
    chexpert: ChexpertData = field(default_factory=ChexpertData)


@dataclass(frozen=True)
class ValidationConfig:
    """Plausibility ranges applied by ``medmlops data validate`` (Great Expectations)."""

    reports_dir: str = "reports/validation"
    # Every referenced image is opened and checked; cap it for very large real datasets (0 = all).
    max_images: int = 0
    ct_min_slices: int = 8
    ct_max_slices: int = 1024
    ct_min_inplane: int = 64
    ct_max_inplane: int = 2048
    ct_spacing_mm: tuple[float, float] = (0.1, 12.0)
    # Real scanners pad outside the field of view with -1024 (GE even -3024); a volume whose 1st
    # percentile is not air-like was probably rescaled already (not HU) and is refused.
    ct_hu_min: float = -3100.0
    ct_hu_max: float = 4100.0
    ct_air_below_hu: float = -500.0
    cxr_min_size: int = 32
    cxr_max_size: int = 8192
    min_image_std: float = 1e-3


@dataclass(frozen=True)
class CtPreprocessConfig:
    """ICH CT preprocessing (MONAI). ``spatial_size`` is (x, y, z) as MONAI's Resize takes it on NIfTI arrays:
    in-plane, in-plane, slices; the paper's 301 × 301 × 40."""

    spatial_size: tuple[int, int, int] = (64, 64, 40)
    window: tuple[float, float] = (15.0, 100.0)
    skull_strip: bool = True
    orientation: str = "RAS"


@dataclass(frozen=True)
class CxrPreprocessConfig:
    """Chest X-ray preprocessing (both 2D families): percentile clip, min-max, lung box crop, resize, 3 channels,
    ImageNet normalisation. The papers: 256 px for MDMT, 320 px for the findings classifier."""

    size: int = 128
    lung_crop: bool = True
    percentiles: tuple[float, float] = (0.5, 99.5)
    # The MDMT public code applies each augmentation with p = 30/101 ≈ 0.3 (ICH uses train.aug_prob = 0.5).
    aug_prob: float = 0.3


@dataclass(frozen=True)
class PreprocessConfig:
    out_dir: str = "data/preprocessed"  # cached tensors + manifest per dataset (a dvc.yaml stage output)
    ich: CtPreprocessConfig = field(default_factory=CtPreprocessConfig)
    # AIforCOVID and BRIXIA share one chain: MDMT mixes them in every batch.
    covid: CxrPreprocessConfig = field(default_factory=CxrPreprocessConfig)
    chexpert: CxrPreprocessConfig = field(default_factory=CxrPreprocessConfig)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings (Cobo et al. for ICH: AdamW 1e-3 / 1e-4, batch 8 × 3 accumulation steps,
    early stopping patience 20 on validation balanced accuracy, augmentation p = 0.5, 10-fold CV).

    Three layers give an experiment its settings (:meth:`Params.for_experiment`): these keys, then
    ``families[<its family>]``, then the experiment's own ``train:`` mapping. ``profiles.paper`` fills the family
    layer with each paper's settings. A ``--set train.KEY=V`` on the command line is the last word for every
    experiment: it also clears KEY from the family and experiment layers.
    """

    epochs: int = 30
    batch_size: int = 8
    accumulation_steps: int = 3
    optimizer: str = "adamw"  # adamw (Cobo et al.: decoupled weight decay) or adam (Ruffini et al., Shu et al.)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's β1, β2 (Ruffini et al.'s "momentum of 0.9" is β1)
    weight_decay: float = 1e-4
    patience: int = 20
    # Epochs before early stopping may stop a run (MDMT: 40-epoch warm-up, patience 40, at most 300 epochs); the best
    # checkpoint is still kept from the first epoch on. The papers give no learning-rate warm-up.
    warmup_epochs: int = 0
    max_steps: int = 0  # stop after this many optimizer steps in all (0: no limit): the GPU check and benchmarks
    pretrained: bool = False  # 2D backbones start from ImageNet weights found in weights_dir (nothing is downloaded)
    weights_dir: str = ".medmlops/weights"  # one file per backbone, named as timm/torchvision name it (docs/models.md)
    oversample: bool = True
    augment: bool = True
    aug_prob: float = 0.5
    n_folds: int = 10
    val_fraction: float = 0.1
    folds: tuple[int, ...] = ()  # run only these folds (empty: all); the pipelines fan out one fold per task
    validation: str = "cv"  # cv: stratified K-fold; loco: leave-one-center-out (AIforCOVID hospitals)
    device: str = "auto"  # auto: CUDA when present, else CPU
    amp: bool = True  # automatic mixed precision, CUDA only
    num_workers: int = 0
    runs_dir: str = ".medmlops/runs"
    bootstrap_fold: int = 0  # the fold whose test set gets bootstrap CIs (the paper's Table 2)
    n_bootstrap: int = 1000
    # Family defaults over the keys above: family name → {key: value} (the papers' settings, in profiles.paper).
    families: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateConfig:
    """``medmlops evaluate``: what the cross-experiment report computes."""

    saliency_cases: int = 2  # test cases per model with Guided Backprop / Guided Grad-CAM maps
    permutation_repeats: int = 5  # RF permutation importance repeats (tabular models)
    rf_trees: int = 200


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment = a model, its tasks with loss weights (λ), and what to register. Experiments differ only here."""

    family: str = "ich-prognosis"
    dataset: str = "ich"
    model: str = "densenet121_3d"
    tasks: dict[str, float] = field(default_factory=lambda: {"prognosis": 1.0})
    primary_task: str = "prognosis"  # early stopping and promotion gates read this task's metrics
    register: bool = False  # register the result as FAMILY@candidate after training
    description: str = ""
    backbone: str = ""  # 2D models: a key of medmlops.models.backbones.BACKBONES
    weights_path: str = ""  # local pretrained weights for the backbone (nothing is downloaded)
    oversample: bool = True  # RandomOverSampler on the primary task (training split only)
    # MDMT: fraction of each batch drawn from AIforCOVID (the rest BRIXIA); empty = natural proportions.
    mix_ratio: float | None = None
    # Initialise the backbone from these experiments' same-fold best checkpoints (averaged when several):
    # FT starts from STL τ2; MDMT from the average of STL τ1 and STL τ2 (Ruffini et al.).
    init_from: tuple[str, ...] = ()
    # How the task losses add up. "task_mean": Σ λ_t · (mean loss over the batch rows labelled for t), Cobo et al.'s
    # Eq. 1. "indicator_sum": Ruffini et al.'s Eq. 2, Σ_i Σ_t I(X_i, τ_t) · λ_t · L_t(X_i), every image weighing the
    # same whichever dataset it comes from (divided by the batch size |X|, a constant that Adam's step ignores). Empty:
    # the model's paper (mdmt → indicator_sum, every other model → task_mean).
    loss: str = ""
    # This experiment's training settings over train: and train.families[family] (any TrainConfig key but families).
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def loss_reduction(self) -> str:
        return self.loss or ("indicator_sum" if self.model == "mdmt" else "task_mean")


LOSS_REDUCTIONS = ("task_mean", "indicator_sum")
OPTIMIZERS = ("adamw", "adam")


@dataclass(frozen=True)
class CovidProtocolConfig:
    """The MDMT paper's protocol: every backbone × {STL τ1, STL τ2, FT, MDMT} × validation strategy."""

    backbones: tuple[str, ...] = ("resnet18",)
    validations: tuple[str, ...] = ("cv", "loco")


@dataclass(frozen=True)
class InformerConfig:
    """INFORMER (Shu et al.): calibration and evaluation of the flag thresholds (see medmlops.informer)."""

    methods: tuple[str, ...] = ("ixg", "lrp")  # saliency methods calibrated; the first is the one monitoring runs
    direction: str = "low"  # which side of tau is "uncertain": low distinctiveness (the paper) or high
    step: float = 0.001  # the threshold grid (the paper: 0.001)
    tta_samples: int = 8  # test-time augmentations of the TTA baseline (0 = off)
    n_bootstrap: int = 30  # bootstrap test sets of the evaluation (the paper: 30)
    shifts: tuple[str, ...] = ("scanner", "intensity", "noise", "population", "corruption")  # FD-Shifts test sets
    min_per_class: int = 5  # fewer validation positives or negatives than this: no tau, the class is never flagged
    # Confidence scoring functions (medmlops.informer.csf): "auto" ranks them by AUGRC on the calibration split and
    # deploys the best (MSR unless another beats it beyond a multiplicity-corrected bootstrap bound); a name pins one.
    csf: str = "auto"
    # The CSFs ranked (plus informer_<m> for every method in ``methods``).
    csfs: tuple[str, ...] = (
        "msr",
        "maxlogit",
        "entropy",
        "energy",
        "tta",
        "mahalanobis",
        "informer_learned",
        "logit_learned",
    )
    review_budget: float | None = 0.1  # the deployed flag's operating point: flag the least-confident 10 % ...
    target_risk: float | None = None  # ... or (set this, review_budget null) the most coverage with risk <= this
    cv_folds: int = 5  # cross-fitting and the learned combiner's model choice on the calibration split


@dataclass(frozen=True)
class InputGateConfig:
    """What one family's model is for: the serving input gate, stored in every registered version's contract.

    DICOM attributes are checked before any pixel is decoded; an empty tuple takes any value. ``body_parts`` and
    ``view_positions`` are checked where the header has the attribute (many archives leave them empty). The CT
    value rule (Hounsfield units, air around the head) and the size ranges are the validation suite's
    (:class:`ValidationConfig`), copied into the contract at registration.
    """

    modalities: tuple[str, ...] = ()  # DICOM Modality (0008,0060)
    body_parts: tuple[str, ...] = ()  # BodyPartExamined (0018,0015), where present
    view_positions: tuple[str, ...] = ()  # ViewPosition (0018,5101), where present: PA/AP for frontal-only models
    photometric: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")  # PhotometricInterpretation (0028,0004)
    samples_per_pixel: int = 1
    max_frames: int = 1  # NumberOfFrames: one image per upload
    raster: bool = True  # PNG/JPEG (no header to check; the out-of-distribution score still applies)
    max_pixels: int = 4096 * 4096  # decoded pixels (X-ray) or voxels (CT) per upload, read from the header
    ood: str = "warn"  # out-of-distribution uploads: "warn" (answer, in_distribution false) or "refuse" (422)
    ood_percentile: float = 99.0  # the threshold: this percentile of the validation split's scores


@dataclass(frozen=True)
class ServingConfig:
    """``medmlops serve``'s door: the input gate per family and the bounds on each request's work."""

    inputs: dict[str, InputGateConfig] = field(default_factory=dict)  # registered family → input gate
    max_zip_entries: int = 2048  # a CT series zip: files in it
    body_timeout_s: float = 30.0  # a request body not received in full by then is answered 408
    max_concurrent_preprocessing: int = 2  # uploads decoded at once per gateway worker (the others wait)

    def gate(self, family: str) -> InputGateConfig:
        """The family's gate; a family without one takes what its contract's formats allow (any DICOM header)."""
        return self.inputs.get(family, InputGateConfig())


@dataclass(frozen=True)
class DemoConfig:
    """``make demo``: the whole platform on one machine (see medmlops.demo)."""

    workdir: str = ".medmlops/demo"  # logs, pid files, the token, the MLflow and monitoring databases, Evidently
    pipelines: tuple[str, ...] = ("ich", "cxr")  # Kubeflow local runs; add covid when there is time
    # Per pipeline, on top of the profile, to finish in ~20 min on 2 cores.
    overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    mlflow_port: int = 5000
    monitoring_port: int = 8080
    serving_ports: dict[str, int] = field(
        default_factory=lambda: {"ich-prognosis": 3001, "cxr-findings": 3002, "covid-prognosis": 3003}
    )
    traffic: int = 40  # simulated production requests per family, clean and then again shifted
    shift: str = "scanner"  # the simulator's shift knob for the drifted traffic


@dataclass(frozen=True)
class GatesConfig:
    """Promotion gates for one registered family: ``candidate`` becomes ``champion`` only when all pass."""

    primary_metric: str = "prognosis_auc_mean"
    # Absolute floors, metric name → minimum (metrics as logged on the candidate's parent run).
    min_metrics: dict[str, float] = field(default_factory=dict)
    # The candidate's primary metric may fall at most this far below the current champion's.
    max_regression: float = 0.0


@dataclass(frozen=True)
class RegistryConfig:
    # Empty: MLFLOW_TRACKING_URI from the environment, else SQLite under .medmlops/ in the working directory.
    tracking_uri: str = ""
    artifact_dir: str = ".medmlops/mlartifacts"
    experiment_prefix: str = "medmlops"
    gates: dict[str, GatesConfig] = field(default_factory=dict)  # registered family name → gates


@dataclass(frozen=True)
class ImagesConfig:
    """The one place the container images are named: components, the Makefile and k8s/ read it from here."""

    registry: str = "ghcr.io/medmlops"
    tag: str = "0.1.0"
    train: str = "medmlops-train"  # CUDA: pipeline steps and GPU training
    serve: str = "medmlops-serve"  # slim CPU: BentoML serving, monitoring, Evidently UI

    def ref(self, kind: str) -> str:
        return f"{self.registry}/{getattr(self, kind)}:{self.tag}"


@dataclass(frozen=True)
class TolerationConfig:
    key: str = "nvidia.com/gpu"
    operator: str = "Exists"
    effect: str = "NoSchedule"
    value: str = ""


@dataclass(frozen=True)
class ResourcesConfig:
    """Requests and limits of one kind of pipeline step (Kubernetes quantities)."""

    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "2Gi"
    memory_limit: str = "4Gi"
    accelerator_type: str = ""  # the resource name, copied verbatim into limits (e.g. nvidia.com/gpu)
    accelerator_count: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[TolerationConfig, ...] = ()


@dataclass(frozen=True)
class KubeflowConfig:
    """How the pipelines run on a cluster (ignored by the local runner, which uses this machine as it is)."""

    host: str = ""  # Kubeflow Pipelines API, e.g. http://ml-pipeline-ui.kubeflow:80 (or --host)
    experiment: str = "medmlops"  # KFP experiment the runs are filed under
    workdir: str = "/app"  # the project inside the image (params.yaml, data.dvc, .dvc/)
    data_pvc: str = "medmlops-data"  # raw data, preprocessing cache and run folders; shared by all steps
    data_mount: str = "/app/data"
    mlflow_secret: str = "medmlops-mlflow"  # key tracking-uri → MLFLOW_TRACKING_URI
    s3_secret: str = "medmlops-s3"  # keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL
    fold_parallelism: int = 5  # folds trained at once (one GPU node each)
    # params overrides every cluster step applies (run folders onto the data volume); local runs pass their own.
    overrides: tuple[str, ...] = ("train.runs_dir=data/runs",)
    step: ResourcesConfig = field(default_factory=ResourcesConfig)
    train: ResourcesConfig = field(
        default_factory=lambda: ResourcesConfig(
            cpu_request="4",
            cpu_limit="8",
            memory_request="16Gi",
            memory_limit="32Gi",
            accelerator_type="nvidia.com/gpu",
            accelerator_count=1,
            node_selector={"medmlops.io/pool": "gpu"},
            tolerations=(TolerationConfig(),),
        )  # fmt: skip
    )


@dataclass(frozen=True)
class Params:
    seed: int = 42
    profile: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    covid_protocol: CovidProtocolConfig = field(default_factory=CovidProtocolConfig)
    informer: InformerConfig = field(default_factory=InformerConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig)
    experiments: dict[str, ExperimentConfig] = field(default_factory=dict)

    def experiment(self, name: str) -> ExperimentConfig:
        if name not in self.experiments:
            raise ConfigError(unknown_name("experiment", name, self.experiments))
        return self.experiments[name]

    @property
    def families(self) -> tuple[str, ...]:
        """The model families the params name: the experiments' ``family`` values and the registry gates' keys."""
        return tuple(sorted({e.family for e in self.experiments.values()} | set(self.registry.gates)))

    def check_family(self, name: str) -> str:
        """``name`` if the params name that family; else a ConfigError with the closest family (before any side
        effect: a misspelled family must not create an MLflow database or a workspace)."""
        if name not in self.families:
            raise ConfigError(unknown_name("family", name, self.families, "families"))
        return name

    def train_for(self, name: str) -> TrainConfig:
        """Experiment ``name``'s training settings: ``train``, then ``train.families[family]``, then its ``train:``."""
        exp = self.experiment(name)
        return _layered_train(self.train, exp, source="params")

    def train_for_family(self, family: str) -> TrainConfig:
        """The training settings of ``family`` without any experiment's own layer (family-wide steps: Table 1)."""
        return _layered_train(self.train, ExperimentConfig(family=family), source="params")

    def for_experiment(self, name: str) -> Params:
        """These params with ``train`` resolved for experiment ``name`` (what its runs log and train with).

        Resolving twice for the same experiment gives the same params (the layers only set keys); the family layer
        stays in ``train.families`` so the resolved params still show where a value came from.
        """
        return dataclasses.replace(self, train=self.train_for(name))

    def with_train(self, **values: Any) -> Params:
        """These params with training keys set for every experiment, as ``--set train.KEY=V`` does: the base value
        changes and the family and experiment layers lose the key."""
        families = {f: {k: v for k, v in layer.items() if k not in values} for f, layer in self.train.families.items()}
        experiments = {
            n: dataclasses.replace(e, train={k: v for k, v in e.train.items() if k not in values})
            for n, e in self.experiments.items()
        }
        train = dataclasses.replace(self.train, families=families, **values)
        return dataclasses.replace(self, train=train, experiments=experiments)

    def train_sources(self, name: str) -> dict[str, str]:
        """For each training key of experiment ``name``, the layer its value comes from (``config show``)."""
        exp = self.experiment(name)
        family = self.train.families.get(exp.family, {})
        out = {}
        for f in dataclasses.fields(TrainConfig):
            if f.name == "families":
                continue
            if f.name in exp.train:
                out[f.name] = f"experiments.{name}.train"
            elif f.name in family:
                out[f.name] = f"train.families.{exp.family}"
            else:
                out[f.name] = "train"
        return out

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


_TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "families")


def _layered_train(base: TrainConfig, exp: ExperimentConfig, source: str, where: str = "") -> TrainConfig:
    layers = [(f"train.families.{exp.family}", base.families.get(exp.family, {})), (f"{where}train", exp.train)]
    values: dict[str, Any] = {}
    for prefix, layer in layers:
        for key, value in (layer or {}).items():
            if key not in _TRAIN_KEYS:
                raise ConfigError(
                    f"{source}: unknown key '{prefix}.{key}'{did_you_mean(str(key), _TRAIN_KEYS)} (training keys: "
                    f"{', '.join(_TRAIN_KEYS)})"
                )
            values[key] = (prefix, value)
    if not values:
        return base
    hints = typing.get_type_hints(TrainConfig)
    return dataclasses.replace(
        base, **{k: _coerce(hints[k], v, f"{prefix}.{k}", source) for k, (prefix, v) in values.items()}
    )


def _check_training(params: Params, source: str) -> None:
    """Every layer of every experiment's training settings is valid (at load time, naming the key)."""
    for family, layer in params.train.families.items():
        if not isinstance(layer, dict):
            raise ConfigError(f"{source}: 'train.families.{family}' must be a mapping of training keys")
    for name, exp in params.experiments.items():
        train = _layered_train(params.train, exp, source, where=f"experiments.{name}.")
        if train.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{source}: {unknown_name('optimizer', train.optimizer, OPTIMIZERS)} (experiment {name})")
        if exp.loss and exp.loss not in LOSS_REDUCTIONS:
            raise ConfigError(f"{source}: experiments.{name}.loss: {unknown_name('loss', exp.loss, LOSS_REDUCTIONS)}")
        for key in ("epochs", "batch_size", "accumulation_steps", "n_folds"):
            if getattr(train, key) < 1:
                raise ConfigError(
                    f"{source}: train.{key} must be at least 1 for experiment {name}, got {getattr(train, key)}"
                )
        for key in ("patience", "warmup_epochs", "max_steps"):
            if getattr(train, key) < 0:
                raise ConfigError(
                    f"{source}: train.{key} must be 0 or more for experiment {name}, got {getattr(train, key)}"
                )


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load_params(
    path: str | Path = "params.yaml",
    profile: str | None = None,
    overrides: typing.Sequence[str] = (),
) -> Params:
    """Load ``params.yaml``, apply a profile's overrides and ``key=value`` overrides, and type-check the result.

    Args:
        path: the YAML file; a missing file is an error (the defaults alone are not a config anyone reviewed).
        profile: one of ``smoke``, ``demo``, ``paper``; ``None`` keeps the file's ``profile`` value.
        overrides: dotted ``key=value`` strings (``data.ich.n=16``); values are parsed as YAML.

    Raises:
        ConfigError: unknown key, unknown profile, wrong type; the message names the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML{where} ({what}); fix the file or pass another --params") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return params_from_dict(raw, profile=profile, overrides=overrides, source=str(path))


def params_from_dict(
    raw: dict[str, Any],
    profile: str | None = None,
    overrides: typing.Sequence[str] = (),
    source: str = "params",
) -> Params:
    raw = copy.deepcopy(raw)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{source}: 'profiles' must be a mapping of profile name to overrides")
    for name in profiles:
        if name not in PROFILES:
            raise ConfigError(f"{source}: profiles.{name}: {unknown_name('profile', name, PROFILES)}")
    chosen = profile or raw.get("profile", "demo")
    if chosen not in PROFILES:
        raise ConfigError(f"{source}: {unknown_name('profile', chosen, PROFILES)}")
    merged = _deep_merge(raw, profiles.get(chosen) or {}, source=f"{source}: profiles.{chosen}")
    merged["profile"] = chosen
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{item}' must look like key=value with a dotted key, e.g. --set data.ich.n=16")
        _set_dotted(merged, key.strip(), yaml.safe_load(value))
        _clear_train_layers(merged, key.strip())
    params = _build(Params, merged, prefix="", source=source)
    _check_training(params, source)
    return _in_state_dir(params)


def _in_state_dir(params: Params) -> Params:
    """The run-time folders under ``.medmlops/`` moved into ``$MEDMLOPS_STATE_DIR`` when it is set (the images set
    it: their working directory is read-only); unchanged otherwise (:func:`medmlops.paths.state_path`)."""
    train = dataclasses.replace(
        params.train, runs_dir=state_path(params.train.runs_dir), weights_dir=state_path(params.train.weights_dir)
    )
    return dataclasses.replace(
        params,
        train=train,
        registry=dataclasses.replace(params.registry, artifact_dir=state_path(params.registry.artifact_dir)),
        demo=dataclasses.replace(params.demo, workdir=state_path(params.demo.workdir)),
    )


def _clear_train_layers(tree: dict[str, Any], dotted: str) -> None:
    """``--set train.KEY=V`` is the command line's last word for every experiment: drop KEY from the family and
    experiment layers, which would otherwise override it (``--profile paper --set train.epochs=2`` trains 2 epochs)."""
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] != "train" or parts[1] == "families":
        return

    def mapping(value: Any) -> dict[str, Any]:  # a malformed section is named by the type checks after the merge
        return value if isinstance(value, dict) else {}

    families = mapping(mapping(tree.get("train")).get("families"))
    experiments = mapping(tree.get("experiments"))
    for layer in [*families.values(), *(mapping(e).get("train") for e in experiments.values())]:
        if isinstance(layer, dict):
            layer.pop(parts[1], None)


def _deep_merge(base: dict[str, Any], override: dict[str, Any], source: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        # An empty mapping in an override replaces (clears) the base mapping; a non-empty one merges into it.
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, source)
        else:
            out[key] = value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def _build(cls: type, values: Any, prefix: str, source: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'{did_you_mean(str(key), names)} (keys of "
                f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)})"
            )
    kwargs = {}
    for name in names:
        if name in values:
            kwargs[name] = _coerce(hints[name], values[name], f"{prefix}{name}", source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=f"{key}.", source=source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key, source)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key, source) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, key, source) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(value_type, v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is Any:
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    return value


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


def save_resolved(params: Params, path: str | Path) -> Path:
    """Write the resolved config next to a run's outputs (timm's ``args.yaml`` habit)."""
    from medmlops.atomic import write_text_atomically

    return write_text_atomically(path, yaml.safe_dump(params.to_dict(), sort_keys=False))  # folds write it in parallel
