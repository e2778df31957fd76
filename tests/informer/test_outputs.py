"""INFORMER's outputs over a split read one batch at a time: at most one batch of images is alive, whatever the
split's size, and the outputs equal those of the whole split stacked in memory."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
import torch.nn as nn

from medmlops.informer.calibrate import SplitImages
from medmlops.informer.outputs import batched_outputs
from medmlops.interpret.saliency import LogitsModel
from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec

CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CONTRACT = ModelContract(
    family="cxr-findings", tasks=(TaskSpec("findings", "multilabel", CLASSES, (0.5,) * 5),),
    input=InputSpec("xray", (".png",), (3, 32, 32), None, None, 3), preprocessing={}, data_version="x",
    git_commit="y", metrics={},
)  # fmt: skip


class _Images:
    """An indexable split (``images[k]["image"]``), as the preprocessing cache is; counts the reads."""

    def __init__(self, n: int) -> None:
        self.pixels = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        self.reads = 0

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        self.reads += 1
        return {"image": self.pixels[k].clone()}


class _Watched:
    """A split's batches, counting how many batches of images are alive (referenced anywhere) at any time."""

    def __init__(self, split: SplitImages) -> None:
        self.split, self.alive, self.peak, self.made = split, 0, 0, 0

    def __len__(self) -> int:
        return len(self.split)

    def _gone(self) -> None:
        self.alive -= 1

    def batches(self, batch_size: int):
        for batch in self.split.batches(batch_size):
            self.made += 1
            self.alive += 1
            self.peak = max(self.peak, self.alive)
            weakref.finalize(batch, self._gone)
            yield batch
            del batch  # this generator holds no batch while the next is read


class _Tiny(nn.Module):
    """The models' surface (forward_features, forward_head with pre_logits) at a size that runs in a blink."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)
        self.num_features = 8

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"findings": self.forward_head(self.forward_features(x))}


@pytest.fixture(scope="module")
def model() -> LogitsModel:
    torch.manual_seed(0)
    return LogitsModel(_Tiny(), ["findings"]).eval()


def test_outputs_stream_one_batch_of_images_at_a_time(model):
    images = _Images(10)
    split = SplitImages(images, {}, [f"img-{k}" for k in range(10)], "test split")
    watched = _Watched(split)
    streamed = batched_outputs(model, CONTRACT, watched, methods=("ixg",), tta_samples=2, batch_size=4, progress=False)
    assert watched.made == 3 and images.reads == 10  # each image read once, in 3 batches (4 + 4 + 2)
    assert watched.peak == 1, f"{watched.peak} batches of images were held at once"
    assert watched.alive == 0  # nothing of the images is kept in the outputs

    # The same numbers as the split stacked in one tensor (sliced in the same batches, same TTA seeds).
    whole = batched_outputs(model, CONTRACT, images.pixels, methods=("ixg",), tta_samples=2, batch_size=4,
                            progress=False)  # fmt: skip
    for key in ("logits", "entropy", "embedding", "image_stats", "tta"):
        np.testing.assert_allclose(streamed[key], whole[key], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(streamed["d"]["ixg"], whole["d"]["ixg"], rtol=1e-5, atol=1e-7)
    assert streamed["d"]["ixg"].shape == (10, 5) and streamed["embedding"].shape == (10, model.model.num_features)


def test_split_images_yield_float32_batches_and_stack_for_small_splits():
    split = SplitImages(_Images(5), {}, [str(k) for k in range(5)], "val split")
    sizes = [tuple(b.shape) for b in split.batches(2)]
    assert sizes == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
    assert split.stack().dtype == torch.float32 and len(split) == 5
    assert split.describe() == {"source": "val split", "n": 5, "note": "", "selection": {}}
