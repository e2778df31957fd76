"""INFORMER calibration/evaluation memory at the paper shape: peak memory for two split sizes, to show it does not
grow with the split (printed, never asserted in tests).

``informer calibrate`` and ``informer evaluate`` read a split one batch at a time (``SplitImages`` →
``batched_outputs``) and keep only per-image outputs (scores, logits, the embedding: a few kB an image). Before,
they stacked the whole split in memory first: 1.23 MB an image at 3 × 320 × 320 float32, about 20 GB for a
CheXpert-sized split. Each size runs in its own process, so each peak is its own:

    .venv/bin/python benchmarks/bench_informer_memory.py [--sizes 32 96] [--size 320] [--batch 16] [--methods ixg]

Random-initialised DenseNet-121 with the 5 CheXpert findings (the cxr-findings model); images made on demand as the
preprocessing cache hands them out; CUDA when present (the peak is then the CUDA allocation beside the host RSS).
glibc's dynamic mmap threshold lets the heap fragment over batches (a creep in peak RSS that is not data kept); run
with ``MALLOC_MMAP_THRESHOLD_=131072`` to see the peak without it. Figures: docs/failure-detection.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(n: int, size: int, batch: int, methods: tuple[str, ...], tta: int) -> dict:
    import torch

    from medmlops.informer.calibrate import SplitImages
    from medmlops.informer.outputs import batched_outputs
    from medmlops.interpret.saliency import LogitsModel
    from medmlops.models.cxr import FindingsDenseNet121
    from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec

    classes = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    contract = ModelContract(
        family="cxr-findings", tasks=(TaskSpec("findings", "multilabel", classes, (0.5,) * 5),),
        input=InputSpec("xray", (".png",), (3, size, size), None, None, 3), preprocessing={}, data_version="x",
        git_commit="y", metrics={},
    )  # fmt: skip

    class Images:  # what the preprocessing cache hands out: one preprocessed image per index
        def __len__(self) -> int:
            return n

        def __getitem__(self, k: int) -> dict:
            return {"image": torch.rand(3, size, size, generator=torch.Generator().manual_seed(k))}

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = LogitsModel(FindingsDenseNet121(num_classes=5), ["findings"]).eval().to(device)

    class OnDevice:
        def __init__(self, split: SplitImages) -> None:
            self.split = split

        def __len__(self) -> int:
            return len(self.split)

        def batches(self, batch_size: int):
            for x in self.split.batches(batch_size):
                yield x.to(device)

    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: kB)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    split = SplitImages(Images(), {}, [str(k) for k in range(n)], f"{n} images")
    start = time.perf_counter()
    outputs = batched_outputs(model, contract, OnDevice(split), methods=methods, tta_samples=tta, batch_size=batch,
                              progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    kept = sum(v.nbytes for v in outputs.values() if hasattr(v, "nbytes"))
    kept += sum(v.nbytes for key in ("d", "cos") for v in outputs[key].values())
    return {
        "n": n, "device": device.type, "seconds": seconds, "rss_after_model_mib": rss_model,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "outputs_kib": kept / 1024, "stacked_split_mib": n * 3 * size * size * 4 / 2**20,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96], help="split sizes (images)")
    parser.add_argument("--size", type=int, default=320, help="image side (the paper: 320)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (batched_outputs' default: 16)")
    parser.add_argument("--methods", nargs="+", default=["ixg"], help="saliency methods (ixg, lrp, ...)")
    parser.add_argument("--tta", type=int, default=0, help="test-time augmentations")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.size, args.batch, tuple(args.methods), args.tta)))
        return
    rows = []
    for n in args.sizes:
        command = [sys.executable, __file__, "--child", str(n), "--size", str(args.size), "--batch", str(args.batch),
                   "--methods", *args.methods, "--tta", str(args.tta)]  # fmt: skip
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"measured: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    print(f"DenseNet-121, 5 classes, {args.size} px, batch {args.batch}, methods {'+'.join(args.methods)}, "
          f"TTA {args.tta}, device {rows[0]['device']}")  # fmt: skip
    print("| split | peak RSS MiB | RSS after model MiB | peak - model MiB | CUDA peak MiB | outputs KiB | "
          "the split stacked MiB (before) | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cuda = "-" if r["cuda_peak_mib"] is None else f"{r['cuda_peak_mib']:.0f}"
        print(f"| {r['n']} | {r['peak_rss_mib']:.0f} | {r['rss_after_model_mib']:.0f} | "
              f"{r['peak_rss_mib'] - r['rss_after_model_mib']:.0f} | {cuda} | {r['outputs_kib']:.0f} | "
              f"{r['stacked_split_mib']:.0f} | {r['seconds']:.0f} |")  # fmt: skip
    first, last = rows[0], rows[-1]
    growth = last["peak_rss_mib"] - first["peak_rss_mib"]
    print(f"peak RSS {first['n']} → {last['n']} images: {growth:+.0f} MiB (stacking the split would add "
          f"{last['stacked_split_mib'] - first['stacked_split_mib']:.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
