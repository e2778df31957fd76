"""Human names for the drift reports' feature columns, with a one-line meaning each.

The columns are those of :func:`medmlops.informer.outputs.feature_frame` (described at the top of
:mod:`medmlops.monitoring.drift`): ``img.<stat>``, ``p.<class>``, ``d.<class>``, ``flag.<class>``,
``entropy.<class>``, ``emb.pc<k>`` and ``label:<class>``. A class is the contract's output name
(``findings/Edema``); its last part is what a reader knows it by. An unknown column keeps its name and says so.
"""

from __future__ import annotations

import re
from typing import Any

_IMAGE_STATS = {
    "mean": ("mean intensity", "average pixel value of the preprocessed image"),
    "std": ("intensity spread", "standard deviation of the preprocessed image's pixel values"),
    "p05": ("dark end (5th percentile)", "pixel value below which the darkest 5 % of the image lies"),
    "p50": ("median intensity", "middle pixel value of the preprocessed image"),
    "p95": ("bright end (95th percentile)", "pixel value above which the brightest 5 % of the image lies"),
}
_PER_CLASS = {
    "p.": ("probability", "the model's probability of {c}"),
    "d.": (
        "distinctiveness",
        "how different the saliency map of {c} is from the other classes' maps (INFORMER; low = unsure)",
    ),
    "flag.": ("flagged", "share of cases INFORMER flagged for review on {c} (0 or 1 per case)"),
    "entropy.": ("uncertainty", "how undecided the model is about {c} (entropy of its probability)"),
    "label:": ("ground truth", "the label posted later for {c} (1 present, 0 absent)"),
}
_PC = re.compile(r"^(?:emb\.)?pc(\d+)$")


def class_name(output: str) -> str:
    """``findings/Edema`` → ``Edema``: the part of an output name a reader knows."""
    return output.rsplit("/", 1)[-1] or output


def describe(column: str) -> dict[str, str]:
    """``{"column", "name", "meaning"}`` of one feature column; an unknown column is named as it is."""
    column = str(column)
    if column.startswith("img."):
        stat = column[len("img.") :]
        name, meaning = _IMAGE_STATS.get(stat, (f"image {stat}", f"image statistic '{stat}' of the preprocessed image"))
        return {"column": column, "name": f"Image: {name}", "meaning": meaning}
    for prefix, (what, meaning) in _PER_CLASS.items():
        if column.startswith(prefix) and len(column) > len(prefix):
            cls = class_name(column[len(prefix) :])
            return {"column": column, "name": f"{cls}: {what}", "meaning": meaning.format(c=cls)}
    match = _PC.match(column)
    if match:
        k = int(match.group(1))
        return {
            "column": column, "name": f"Image content, axis {k}",
            "meaning": f"position along the {_ordinal(k)} main direction of variation of the model's internal image "
            "representation (PCA of the validation embeddings)",
        }  # fmt: skip
    return {"column": column, "name": column, "meaning": "a feature column without a description"}


def human_name(column: str) -> str:
    return describe(column)["name"]


def describe_all(columns: Any) -> list[dict[str, str]]:
    """:func:`describe` of each column, in order (None or a non-list: none)."""
    if not isinstance(columns, list | tuple):
        return []
    return [describe(c) for c in columns]


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"
