"""How confident the studies' worlds' zero-shot classifier is against how often it is right: accuracy, mean top-1
confidence, expected calibration error (ECE, 15 equal-width confidence bins) and the mean probability of the true
class, on each world's test split, with CLIP's logit scale 100 and the CoOp template's text features.

    python benchmarks/zero_shot_calibration.py [--data benchmarks/.data/lpp-val-set]
        [--calibrated benchmarks/.data/calibrated-worlds] [--save benchmarks/results/zero_shot_calibration.txt]

Beside the table, a reliability diagram (`--save` with .png: accuracy against mean confidence per bin, one line per
world; the diagonal is a calibrated classifier): the defaults study's worlds, and the calibrated worlds with their
uncalibrated twins.

The worlds: the defaults study's five (benchmarks/lathadapter_study.py), and benchmarks/calibrated_worlds.py's four
(`write_clip_world(text_signal=...)`) with their uncalibrated twins (text_signal None: the same images and seeds).

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


def bins(probabilities: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, float, float]]:
    """(share of the images, mean top-1 confidence, accuracy) of each non-empty bin of `BINS` equal-width bins of the
    top-1 confidence."""
    confidence, prediction = probabilities.max(dim=1)
    correct = (prediction == labels).double()
    edges = torch.linspace(0, 1, BINS + 1, dtype=torch.float64)
    return [(inside.double().mean().item(), confidence[inside].mean().item(), correct[inside].mean().item())
            for low, high in zip(edges[:-1], edges[1:], strict=True)
            if (inside := (confidence > low) & (confidence <= high)).any()]


def calibration(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, mean confidence, ECE over `BINS` equal-width bins of the top-1 confidence, mean true-class
    probability."""
    confidence, prediction = probabilities.max(dim=1)
    ece = sum(share * abs(mean - accuracy) for share, mean, accuracy in bins(probabilities, labels))
    return {"accuracy": (prediction == labels).double().mean().item(), "confidence": confidence.mean().item(),
            "ece": ece, "p_true": probabilities.gather(1, labels[:, None]).mean().item()}


def zero_shot_probabilities(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-shot softmax [N, C] of a cache's test split at `LOGIT_SCALE`, and the labels [N]."""
    with CacheReader(path) as reader:
        data = reader.load(*reader.info().subsets[0])  # any subset: the test split and the text are shared
    images = F.normalize(data.test_features.double(), dim=-1)
    text = F.normalize(data.text_features.double(), dim=-1)
    return (LOGIT_SCALE * images @ text.T).softmax(dim=1), data.test_labels


def plot(panels: dict[str, dict[str, Path]], path: Path) -> None:
    """Reliability diagrams, one panel per group of worlds, written to `path` (PNG)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(panels), 4.6))
    for index, (title, group) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), index + 1)
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
        for name, world in group.items():
            probabilities, labels = zero_shot_probabilities(world)
            ece = calibration(probabilities, labels)["ece"]
            points = bins(probabilities, labels)
            axes.plot([c for _, c, _ in points], [a for _, _, a in points], marker="o", markersize=3,
                      label=f"{name} (ECE {100 * ece:.1f})")
        axes.set(title=title, xlabel="mean top-1 confidence in the bin", ylabel="accuracy in the bin", xlim=(0, 1),
                 ylim=(0, 1))
        axes.legend(fontsize=7, loc="upper left")
    figure.suptitle(f"Zero-shot reliability at logit scale {LOGIT_SCALE:.0f}, test split, {BINS} bins")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def calibration_rows(worlds: dict[str, Path]) -> list[str]:
    """A markdown table of each world's zero-shot calibration on its test split."""
    lines = ["| world | accuracy | mean confidence | ECE | mean p(true class) |", "| --- | --- | --- | --- | --- |"]
    for name, path in worlds.items():
        found = calibration(*zero_shot_probabilities(path))
        lines.append(f"| {name} | {100 * found['accuracy']:.2f} | {100 * found['confidence']:.2f} | "
                     f"{100 * found['ece']:.2f} | {100 * found['p_true']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "lpp-val-set", help="where the worlds are (written once)")
    parser.add_argument("--calibrated", type=Path, default=DATA / "calibrated-worlds",
                        help="where benchmarks/calibrated_worlds.py's worlds are (written once)")
    parser.add_argument("--save", type=Path, default=RESULTS / "zero_shot_calibration.txt")
    args = parser.parse_args()
    from calibrated_worlds import TEXT_SIGNAL, WORLDS, calibrated_worlds  # here: that script imports this one

    signal = {name: TEXT_SIGNAL[text_attributes] for name, (_, text_attributes) in WORLDS.items()}
    study = worlds(args.data)
    twins = {f"{n} (text_signal None)": p for n, p in calibrated_worlds(args.calibrated, calibrated=False).items()}
    calibrated = {f"{n} (text_signal {signal[n]})": p for n, p in calibrated_worlds(args.calibrated).items()}
    found = {**study, **twins, **calibrated}
    lines = [f"# benchmarks/zero_shot_calibration.py; zero-shot (logit scale {LOGIT_SCALE:.0f}), test split, "
             f"ECE over {BINS} bins; the defaults study's worlds, then benchmarks/calibrated_worlds.py's, each "
             "after its uncalibrated twin (the same images)", "", *calibration_rows(found)]
    print("\n".join(lines))
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text("\n".join(lines) + "\n")
    plot({"the defaults study's worlds": study, "calibrated worlds (text_signal) and their twins": {
        **{n.replace(" (text_signal None)", ", None"): p for n, p in twins.items()},
        **{n.replace(" (text_signal ", ", ").rstrip(")"): p for n, p in calibrated.items()}}},
         args.save.with_suffix(".png"))
    print(f"plot: {args.save.with_suffix('.png')}")


if __name__ == "__main__":
    main()
