"""The local ImageNet weights store of the 2D backbones: where a backbone's pretrained weights come from.

Nothing is downloaded here. A backbone's ImageNet weights come, in this order, from

1. the store ``train.weights_dir`` (default ``.medmlops/weights``): one state-dict file per backbone named by its
   timm/torchvision name (:data:`medmlops.models.backbones.BACKBONES`), ``resnet18.pth`` or
   ``resnet18.safetensors`` (the latter when the ``safetensors`` package is installed);
2. the library's own download cache, when a connected run of timm or torchvision left the file there: timm's Hugging
   Face hub cache (``model.safetensors`` or ``pytorch_model.bin`` of the model's ``hf_hub_id``, looked up without any
   network access; the default pretrained tag first, then the model's other tags) or a tag's URL file in the torch
   hub cache, and torchvision's ``torch.hub.get_dir()/checkpoints/<file of the weights URL>``;

and otherwise :func:`resolve_weights` fails with one sentence naming the file expected and the one-liner that makes it
on a connected machine. ``docs/models.md`` says how to fill the store.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from medmlops.errors import UserError
from medmlops.models.names import BACKBONES

if TYPE_CHECKING:
    from medmlops.config import Params

DEFAULT_WEIGHTS_DIR = ".medmlops/weights"
HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None
# The store's file suffixes, in the order they are looked for.
SUFFIXES: tuple[str, ...] = (".pth", ".safetensors") if HAS_SAFETENSORS else (".pth",)
# Registered models that always build one backbone (the INFORMER classifier), and those whose backbone is an
# argument (its default when the experiment names none). Any other model (the 3D ICH ones) has no ImageNet weights.
_FIXED_BACKBONE = {"densenet121_findings": "densenet121"}
_BACKBONE_ARGUMENT_DEFAULT = {"mdmt": "densenet121"}
# torchvision's DenseNet checkpoints keep pre-0.3 key names ("norm.1.weight"); torchvision and timm rename them on load.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class WeightsError(UserError, ValueError):
    """A weights file that cannot initialise its backbone (not a state dict, other key names, other shapes)."""


class MissingWeightsError(UserError, FileNotFoundError):
    """Pretrained weights asked for and found nowhere; the message names the file expected and how to make it."""


@dataclass(frozen=True)
class WeightsSource:
    """Where backbone ``name``'s ImageNet weights are: ``path`` (None when nowhere) and ``origin`` in words."""

    name: str
    expected: Path  # the store file a user would add
    path: Path | None
    origin: str  # "weights_dir", "timm cache (Hugging Face hub <id>)", "torch hub cache", "torchvision cache", ""

    @property
    def found(self) -> bool:
        return self.path is not None


def imagenet_backbone(model: str, backbone: str = "") -> str | None:
    """The :data:`BACKBONES` key a registered model builds, or None for a model without ImageNet weights (3D)."""
    if model in _FIXED_BACKBONE:
        return _FIXED_BACKBONE[model]
    if model in _BACKBONE_ARGUMENT_DEFAULT:
        return backbone or _BACKBONE_ARGUMENT_DEFAULT[model]
    return None


def store_file(name: str, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR, suffix: str = ".pth") -> Path:
    """The store file of backbone ``name``: ``weights_dir/<timm or torchvision name><suffix>``."""
    _check_name(name)
    return Path(weights_dir) / f"{BACKBONES[name][1]}{suffix}"


def cache_files(name: str) -> list[tuple[str, Path]]:
    """The library cache files that would hold ``name``'s ImageNet weights, as (origin, path), in lookup order.

    Nothing is fetched: timm's files are looked up in the Hugging Face hub cache with
    ``huggingface_hub.try_to_load_from_cache`` (local only); the torch hub folder is ``torch.hub.get_dir()``
    (``$TORCH_HOME/hub``) at call time.
    """
    _check_name(name)
    library, model_name = BACKBONES[name]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if library == "torchvision":
        return [("torchvision cache", checkpoints / _torchvision_file(model_name))]
    import timm

    # The default pretrained tag first (what timm.create_model(name, pretrained=True) fetches), then the model's other
    # ImageNet tags (e.g. resnet18.tv_in1k, torchvision's own weights, whose URL file is torchvision's cache file).
    cfgs = [timm.models.get_pretrained_cfg(model_name)]
    cfgs += [timm.models.get_pretrained_cfg(tag) for tag in timm.list_pretrained(f"{model_name}.*")]
    out: list[tuple[str, Path]] = []
    for cfg in cfgs:
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if hub_id:
            for filename in ("model.safetensors", "pytorch_model.bin") if HAS_SAFETENSORS else ("pytorch_model.bin",):
                cached = _hf_cached(hub_id, filename)
                if cached is not None:
                    out.append((f"timm cache (Hugging Face hub {hub_id})", cached))
        url = getattr(cfg, "url", None) if cfg is not None else None
        if url:
            out.append(("torch hub cache", checkpoints / Path(urlparse(url).path).name))
    return list(dict.fromkeys(out))


def find_weights(name: str, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> WeightsSource:
    """Where ``name``'s ImageNet weights are: the store first, then the library's cache (see the module doc).

    Raises:
        WeightsError: The store holds both a ``.pth`` and a ``.safetensors`` file for ``name`` (which one is meant?).
    """
    in_store = [p for p in (store_file(name, weights_dir, s) for s in SUFFIXES) if p.is_file()]
    if len(in_store) > 1:
        raise WeightsError(f"{in_store[0]} and {in_store[1]} are both in the weights store: keep one of them")
    expected = store_file(name, weights_dir)
    if in_store:
        return WeightsSource(name, expected, in_store[0], "weights_dir")
    for origin, path in cache_files(name):
        if path.is_file():
            return WeightsSource(name, expected, path, origin)
    return WeightsSource(name, expected, None, "")


def make_command(name: str, path: str | Path | None = None) -> str:
    """The one-liner that writes ``name``'s ImageNet state dict to ``path`` on a machine with internet access."""
    _check_name(name)
    library, model_name = BACKBONES[name]
    target = str(path) if path is not None else f"{model_name}.pth"
    if library == "timm":
        build = f"timm.create_model('{model_name}', pretrained=True)"
    else:
        build = f"torchvision.models.{model_name}(weights='DEFAULT')"
    return f"""python -c "import torch, {library}; torch.save({build}.state_dict(), '{target}')\""""


def missing_message(source: WeightsSource) -> str:
    """One sentence: which file is missing, where else was looked, and how to make it."""
    library = BACKBONES[source.name][0]
    return (
        f"no ImageNet weights for backbone '{source.name}': {source.expected} does not exist and {library}'s local "
        f"cache does not hold them; on a machine with internet access run `{make_command(source.name)}` and copy "
        f"the file to {source.expected} (docs/models.md), or set train.pretrained to false"
    )


def resolve_weights(name: str, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> WeightsSource:
    """:func:`find_weights`, failing when the weights are nowhere.

    Raises:
        MissingWeightsError: Neither the store nor the library's cache holds them (the message says how to fix it).
    """
    source = find_weights(name, weights_dir)
    if not source.found:
        raise MissingWeightsError(missing_message(source))
    return source


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file (``weights_only``) or a ``.safetensors`` file, on the CPU.

    A checkpoint that wraps the state dict (``{"state_dict": ...}`` or ``{"model": ...}``) and ``module.`` prefixes
    (``DataParallel``) are unwrapped; torchvision's legacy DenseNet key names are renamed as torchvision renames them.

    Raises:
        MissingWeightsError: The file does not exist.
        WeightsError: The file cannot be read or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            if not HAS_SAFETENSORS:
                raise WeightsError(f"{path}: reading .safetensors needs the safetensors package; save it as .pth")
            from safetensors.torch import load_file

            state: object = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as exc:  # a truncated file, a pickle of arbitrary objects, another format
        raise WeightsError(f"weights file {path} cannot be read as a state dict ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict (found {type(state).__name__})")
    out = dict(state)
    if out and all(k.startswith("module.") for k in out):
        out = {k.removeprefix("module."): v for k, v in out.items()}
    return {(_rename_legacy_densenet(k)): v for k, v in out.items()}


def _rename_legacy_densenet(key: str) -> str:
    match = _LEGACY_DENSENET_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}' (expected one of: {', '.join(BACKBONES)})")


def _torchvision_file(model_name: str) -> str:
    import torchvision

    return Path(urlparse(torchvision.models.get_model_weights(model_name).DEFAULT.url).path).name


def _hf_cached(repo_id: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # timm without the hub client: only the torch hub cache can hold its weights
        return None
    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


@dataclass
class BackboneWeights:
    """One line of ``medmlops weights check``: a backbone, where its weights are, and which experiments use them."""

    source: WeightsSource
    explicit: bool = False  # an experiment's own weights_path rather than the store
    needed_by: list[str] = field(default_factory=list)  # experiments that load it (pretrained on, or weights_path)
    unused_by: list[str] = field(default_factory=list)  # experiments that would with train.pretrained on
    problem: str = ""  # set by check_loads: the file does not fit the backbone

    @property
    def missing(self) -> bool:
        return bool(self.needed_by) and (not self.source.found or bool(self.problem))


def weights_plan(
    params: Params, names: list[str], repo: str | Path = "."
) -> tuple[list[BackboneWeights], dict[str, str]]:
    """The ImageNet files experiments ``names`` would load, one entry per backbone and file, and the experiments
    that load none (name → why). A COVID experiment loads every backbone of ``covid_protocol.backbones`` too
    (``medmlops evaluate --protocol covid`` trains it on each); relative paths are under ``repo``."""
    entries: dict[tuple[str, str], BackboneWeights] = {}
    skipped: dict[str, str] = {}
    for name in names:
        exp = params.experiment(name)
        train = params.train_for(name)
        backbone = imagenet_backbone(exp.model, exp.backbone)
        if backbone is None:
            skipped[name] = f"{exp.model} is 3D: no ImageNet weights, trained from scratch"
            continue
        if exp.init_from:
            skipped[name] = f"its backbone comes from {', '.join(exp.init_from)}"
            continue
        backbones = [backbone]
        if exp.dataset == "covid" and exp.model in _BACKBONE_ARGUMENT_DEFAULT:
            backbones += [b for b in params.covid_protocol.backbones if b not in backbones]
        for b in backbones:
            if exp.weights_path:
                path = Path(repo) / exp.weights_path
                key = (b, str(path))
                if key not in entries:
                    origin = f"experiments.{name}.weights_path"
                    source = WeightsSource(b, path, path if path.is_file() else None, origin)
                    entries[key] = BackboneWeights(source, explicit=True)
            else:
                weights_dir = Path(repo) / train.weights_dir
                key = (b, str(weights_dir))
                if key not in entries:
                    entries[key] = BackboneWeights(find_weights(b, weights_dir))
            users = entries[key].needed_by if exp.weights_path or train.pretrained else entries[key].unused_by
            users.append(name)
    return list(entries.values()), skipped
