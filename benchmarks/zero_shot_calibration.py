"""How confident the studies' worlds' zero-shot classifier is against how often it is right: accuracy, mean top-1
confidence, expected calibration error (ECE, 15 equal-width confidence bins) and the mean probability of the true
class, on each world's test split, with CLIP's logit scale 100 and the CoOp template's text features.

    python benchmarks/zero_shot_calibration.py [--data benchmarks/.data/lpp-val-set] [--save
                                                benchmarks/results/zero_shot_calibration.txt]

Methods that read zero-shot probabilities (CLAP's multipliers are the per-class mean probability of the true class)
behave as the worlds' calibration makes them: a world whose zero-shot softmax is overconfident gives them near 0-or-1
values where a calibrated one would give graded ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from lathadapter_study import DATA, RESULTS, worlds  # noqa: E402 — the defaults study's worlds, written once

from lathadapter.cache.store import CacheReader  # noqa: E402

BINS = 15
LOGIT_SCALE = 100.0


def calibration(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, mean confidence, ECE over `BINS` equal-width bins of the top-1 confidence, mean true-class
    probability."""
    confidence, prediction = probabilities.max(dim=1)
    correct = (prediction == labels).double()
    edges = torch.linspace(0, 1, BINS + 1, dtype=torch.float64)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.double().mean().item() * abs(confidence[inside].mean().item() - correct[inside].mean().item())
    return {"accuracy": correct.mean().item(), "confidence": confidence.mean().item(), "ece": ece,
            "p_true": probabilities.gather(1, labels[:, None]).mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "lpp-val-set", help="where the worlds are (written once)")
    parser.add_argument("--save", type=Path, default=RESULTS / "zero_shot_calibration.txt")
    args = parser.parse_args()
    lines = [f"# benchmarks/zero_shot_calibration.py; zero-shot (logit scale {LOGIT_SCALE:.0f}), test split, "
             f"ECE over {BINS} bins", "", "| world | accuracy | mean confidence | ECE | mean p(true class) |",
             "| --- | --- | --- | --- | --- |"]
    for name, path in worlds(args.data).items():
        with CacheReader(path) as reader:
            data = reader.load(*reader.info().subsets[0])  # any subset: the test split and the text are shared
        images = F.normalize(data.test_features.double(), dim=-1)
        text = F.normalize(data.text_features.double(), dim=-1)
        found = calibration((LOGIT_SCALE * images @ text.T).softmax(dim=1), data.test_labels)
        lines.append(f"| {name} | {100 * found['accuracy']:.2f} | {100 * found['confidence']:.2f} | "
                     f"{100 * found['ece']:.2f} | {100 * found['p_true']:.2f} |")
    print("\n".join(lines))
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
