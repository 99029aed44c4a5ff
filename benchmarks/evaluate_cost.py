"""What recording calibration costs at evaluation: `adapter.evaluate.evaluate` (top-1 accuracy, ECE and the
reliability bins in one chunked pass) against the accuracy-only loop it replaced at stop 22 (restated here: each
chunk's argmax against its labels), on the same zero-shot method and features, shaped like Caltech101's and ImageNet's
test sets (ViT-B-16's 512 dimensions).

    OMP_NUM_THREADS=1 python benchmarks/evaluate_cost.py [--rounds 7] [--threads 1]

The two variants alternate within each round (accuracy-only first in odd rounds, last in even ones), so a slow spell
of this shared 2-core machine slows both alike; the table gives each one's median seconds and new/old as the ratio of
the medians and the median of the rounds' paired ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lathadapter.adapter import evaluate as evaluate_module
from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.evaluate import checked, evaluate
from lathadapter.adapter.methods.base import Method
from lathadapter.cache.store import FewShotData

SHAPES = {"caltech101": (2465, 100), "imagenet": (50000, 1000)}  # test images, classes
DIM = 512


@torch.no_grad()
def accuracy_only(method: Method, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Stop 21's `evaluate`: top-1 accuracy over chunks, nothing else."""
    method.eval()
    correct = 0
    for start in range(0, len(labels), evaluate_module.CHUNK):
        scores = checked(method, method.logits(features[start:start + evaluate_module.CHUNK]))
        correct += int((scores.argmax(dim=-1) == labels[start:start + evaluate_module.CHUNK]).sum())
    return 100.0 * correct / len(labels)


def zero_shot(images: int, classes: int) -> tuple[Method, torch.Tensor, torch.Tensor]:
    """A zero-shot method over random unit text features, and random unit test features near their class's text."""
    generator = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(classes, DIM, generator=generator), dim=-1)
    labels = torch.randint(0, classes, (images,), generator=generator)
    test = torch.nn.functional.normalize(text[labels] + 1.5 * torch.randn(images, DIM, generator=generator) / DIM**0.5,
                                         dim=-1)
    data = FewShotData([f"c{i}" for i in range(classes)], text, torch.zeros(0, DIM), test[:2], test[:2, None],
                       labels[:2], test[:2], labels[:2], test, labels, fingerprint="evaluate-cost")
    return create_method("zeroshot", data), test, labels


def timed(score, method: Method, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds of one `score(method, features, labels)`."""
    start = time.perf_counter()
    score(method, features, labels)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, CPU, {args.threads} thread(s), {args.rounds} rounds, variants alternating")
    print("| test set | images × classes | accuracy only s (median) | accuracy + ECE + bins s (median) | new/old "
          "(medians) | new/old (median of paired) | same accuracy |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for name, (images, classes) in SHAPES.items():
        method, features, labels = zero_shot(images, classes)
        same = accuracy_only(method, features, labels) == evaluate(method, features, labels).accuracy  # warm-up too
        old, new = [], []
        for round_ in range(args.rounds):
            pair = [(old, accuracy_only), (new, evaluate)]
            for times, score in pair if round_ % 2 == 0 else pair[::-1]:
                times.append(timed(score, method, features, labels))
        paired = statistics.median(n / o for n, o in zip(new, old, strict=True))
        print(f"| {name} | {images} × {classes} | {statistics.median(old):.4f} | {statistics.median(new):.4f} | "
              f"{statistics.median(new) / statistics.median(old):.2f} | {paired:.2f} | {same} |")


if __name__ == "__main__":
    main()
