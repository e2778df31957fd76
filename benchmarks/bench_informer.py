"""INFORMER's cost, side by side in one run (ratios, never asserted in tests):

1. batched class saliency vs Captum's per-class loop on the same model and images (InputXGradient and LRP), and vs
   the raw batched-autograd floor (one forward + ``autograd.grad(is_grads_batched=True)``, nothing else);
2. INFORMER cost per image (saliency + distinctiveness + features + thumbnail: what the monitoring worker runs)
   relative to a plain forward pass (what serving runs);
3. monitoring throughput relative to serving throughput for the same model at the same batch size: the share of
   predictions monitoring keeps up with (1.0 = every prediction; below, the sustainable sampling rate).

    .venv/bin/python benchmarks/bench_informer.py [--size 128] [--batch 4] [--repeats 5] [--device auto] [--json F]

Random-initialised DenseNet-121 with the 5 CheXpert findings (the cxr-findings model); CUDA when present.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--json", default=None, help="also write the timings and ratios to this JSON file")
    args = parser.parse_args()

    from medmlops.informer.analyser import Analyser
    from medmlops.interpret.saliency import LogitsModel, captum_class_saliency, class_saliency, gradients_per_class
    from medmlops.models.cxr import FindingsDenseNet121
    from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec

    torch.manual_seed(0)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    net = FindingsDenseNet121(num_classes=5).to(device).eval()
    model = LogitsModel(net, ["findings"]).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    n_classes = 5
    print(f"DenseNet-121, C = {n_classes}, {args.batch} images at {args.size} px, {device}, "
          f"median of {args.repeats} runs, {torch.get_num_threads()} threads")  # fmt: skip

    def floor() -> None:
        xg = x.clone().requires_grad_(True)
        gradients_per_class(model(xg), xg)

    with torch.no_grad():
        t_forward = _timed(lambda: model(x), args.repeats)
    rows = [("plain forward (serving)", t_forward)]
    t_floor = _timed(floor, args.repeats)
    rows.append(("raw batched autograd floor", t_floor))
    results = {}
    for method in ("ixg", "lrp"):
        ours = _timed(lambda m=method: class_saliency(model, x, m), args.repeats)
        loop = _timed(lambda m=method: captum_class_saliency(model, x, m), args.repeats)
        diff = float((class_saliency(model, x, method) - captum_class_saliency(model, x, method)).abs().max())
        results[method] = (ours, loop, diff)
        rows += [(f"{method}: batched (ours)", ours), (f"{method}: Captum per-class loop", loop)]

    contract = ModelContract(
        family="cxr-findings",
        tasks=(TaskSpec("findings", "multilabel", ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                                    "Pleural Effusion"), (0.5,) * 5),),  # fmt: skip
        input=InputSpec("xray", (".png",), (3, args.size, args.size), None, None, 3),
        preprocessing={"chain": "cxr", "size": args.size, "lung_crop": True, "percentiles": [0.5, 99.5]},
        data_version="bench", git_commit="bench", metrics={},
    )  # fmt: skip
    analyser = Analyser("cxr-findings", "bench", contract, net, calibration=None, method="ixg")
    t_informer = _timed(lambda: analyser.analyse_tensors(x), args.repeats)
    rows.append(("INFORMER per batch (monitoring worker)", t_informer))

    print(f"\n{'step':<42}{'s / batch':>10}{'ms / image':>12}")
    for name, seconds in rows:
        print(f"{name:<42}{seconds:>10.3f}{1000 * seconds / args.batch:>12.1f}")
    print("\nratios")
    for method, (ours, loop, diff) in results.items():
        print(f"  {method}: Captum loop / batched = {loop / ours:.2f}x   (max |map difference| {diff:.2e})")
    ours_ixg = results["ixg"][0]
    print(f"  ixg: batched / raw autograd floor = {ours_ixg / t_floor:.2f}x   (target <= 1.1x)")
    print(f"  INFORMER per image / plain forward = {t_informer / t_forward:.1f}x")
    print(f"  monitoring / serving throughput (same batch) = {t_forward / t_informer:.2f}  "
          f"-> monitoring sustains {min(1.0, t_forward / t_informer):.0%} of the model's forward-pass rate")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": str(device), "size": args.size, "batch": args.batch, "repeats": args.repeats,
            "s_per_batch": dict(rows),
            "forward_images_per_s": args.batch / t_forward, "informer_images_per_s": args.batch / t_informer,
            "informer_over_forward": t_informer / t_forward,
            "captum_loop_over_batched": {m: loop / ours for m, (ours, loop, _) in results.items()},
            "max_map_difference": {m: diff for m, (_, _, diff) in results.items()},
            "ixg_batched_over_floor": ours_ixg / t_floor,
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
