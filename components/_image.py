"""The image every component runs in, named once in ``params.yaml`` (``images:``)."""

from pathlib import Path

from medmlops.config import load_params

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
BASE_IMAGE = load_params(PARAMS_FILE).images.ref("train")
