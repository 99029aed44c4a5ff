"""Top-1 accuracy and calibration (ECE, and the per-bin tallies of its reliability diagram) of a method on cached test
features, all from one pass in chunks so that large test sets fit in memory."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from lathadapter.adapter.methods.base import Method, NotApplicable

CHUNK = 8192
ECE_BINS = 15  # equal-width bins of the top-1 confidence over (0, 1], as Guo et al. (2017) bin it


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    return float((scores.argmax(dim=-1) == labels).float().mean() * 100)


class NaNScores(ValueError):
    """A method scored NaN at evaluation: the argmax of NaN scores is class 0, not a prediction."""


def checked(method: Method, scores: torch.Tensor) -> torch.Tensor:
    """`scores` of `method`, refused (`NaNScores`) when any is NaN: such an accuracy must never be reported (a run
    then counts as diverged, `experiments.run.evaluated`)."""
    if bool(torch.isnan(scores).any()):
        raise NaNScores(f"{method.name} gave NaN scores at evaluation, so no accuracy is reported; check its options "
                        "for values that overflow")
    return scores


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's numbers (Guo et al., 2017, Fig. 1): per confidence bin (`ECE_BINS`), the images, the
    right predictions and the sum of their top-1 confidences. Runs pool by adding them up (`pooled`); `record()` is
    what metrics.json's `reliability` holds."""

    images: tuple[int, ...]
    correct: tuple[int, ...]
    confidence: tuple[float, ...]

    def record(self) -> dict[str, list[Any]]:
        return {"images": list(self.images), "correct": list(self.correct), "confidence": list(self.confidence)}

    @classmethod
    def read(cls, record: Any) -> Reliability | None:
        """A `record()` read back from JSON; None for anything else (not applicable, or not `ECE_BINS` bins)."""
        try:
            read = cls(*(tuple(record[name]) for name in ("images", "correct", "confidence")))
        except (TypeError, KeyError):
            return None
        return read if all(len(tally) == ECE_BINS for tally in (read.images, read.correct, read.confidence)) else None

    @classmethod
    def pooled(cls, tallies: Iterable[Reliability]) -> Reliability:
        """The bins of several runs' test images together (seeds of one configuration): their tallies summed."""
        tallies = list(tallies)
        return cls(*(tuple(sum(column) for column in zip(*(getattr(t, name) for t in tallies), strict=True))
                     for name in ("images", "correct", "confidence")))

    def accuracy(self) -> float:
        """Top-1 accuracy (%) over every bin."""
        return 100.0 * sum(self.correct) / sum(self.images)

    def ece(self) -> float:
        """ECE (%) of these bins, `Tally.scores`' formula: Σ_b |correct_b − confidence_b| / n."""
        return 100.0 * math.fsum(abs(c - s) for c, s in zip(self.correct, self.confidence, strict=True)) / sum(
            self.images)


@dataclass(frozen=True)
class Scores:
    """A method's top-1 accuracy and expected calibration error on one test set, both in percent, and the bins the
    ECE reads."""

    accuracy: float
    ece: float
    reliability: Reliability


class Tally:
    """Per confidence bin (`ECE_BINS`): the images, the right predictions and the sum of top-1 confidences, added up
    chunk by chunk. The confidences are float32 and their sums float64, which hold them exactly (at 1,000 classes, up
    to a million images in one bin), so any chunking gives the whole set's numbers bit for bit."""

    def __init__(self, device: torch.device) -> None:
        self.images = torch.zeros(ECE_BINS, dtype=torch.int64, device=device)
        self.correct = torch.zeros(ECE_BINS, dtype=torch.int64, device=device)
        self.confidence = torch.zeros(ECE_BINS, dtype=torch.float64, device=device)

    def add(self, method: Method, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Count a chunk's `scores` (checked already) against its `labels`: the prediction is the top score, its
        confidence the method's probability of it (`Method.probabilities`)."""
        self.add_confidences(method.probabilities(scores.float()).amax(dim=-1), scores.argmax(dim=-1) == labels)

    def add_confidences(self, confidence: torch.Tensor, right: torch.Tensor) -> None:
        """Count a chunk's predictions by their top-1 `confidence` and whether each is `right` (bool)."""
        right = right.long()
        # bin b holds confidences in (b / B, (b + 1) / B], compared exactly: a float32 times B is exact in float64
        # (float32 edges from linspace miss k / B by an ulp either way); one rounded above 1 stays in the last bin
        bins = (confidence.double() * ECE_BINS).ceil_().long().sub_(1).clamp_(0, ECE_BINS - 1)  # NaN: some bin
        self.images.index_add_(0, bins, torch.ones_like(bins))
        self.correct.index_add_(0, bins, right)
        self.confidence.index_add_(0, bins, confidence.double())

    def scores(self, method: Method) -> Scores:
        """Accuracy and ECE = Σ_b (n_b / n) |acc_b − conf_b| = Σ_b |correct_b − confidence_b| / n, in percent."""
        n = int(self.images.sum())
        if n == 0:
            raise ValueError("no samples to evaluate")
        ece = float((self.correct.double() - self.confidence).abs().sum()) / n
        if ece != ece:  # NaN: a +inf score has no softmax
            raise NaNScores(f"{method.name} gave infinite scores at evaluation, whose probabilities are NaN, so no "
                            "accuracy is reported; check its options for values that overflow")
        reliability = Reliability(tuple(self.images.tolist()), tuple(self.correct.tolist()),
                                  tuple(self.confidence.tolist()))
        return Scores(100.0 * int(self.correct.sum()) / n, 100.0 * ece, reliability)


@torch.no_grad()
def evaluate(method: Method, features: torch.Tensor, labels: torch.Tensor,
             text_features: torch.Tensor | None = None) -> Scores | None:
    """Accuracy and ECE on (`features`, `labels`) against the training classes, or against `text_features`' classes.

    Returns None (not applicable) when the method cannot score those classes.
    """
    method.eval()
    tally = Tally(features.device)
    try:
        for start in range(0, len(labels), CHUNK):
            scores = checked(method, method.logits(features[start:start + CHUNK], text_features))
            tally.add(method, scores, labels[start:start + CHUNK])
    except NotApplicable:
        return None
    return tally.scores(method)


@torch.no_grad()
def evaluate_mapped(method: Method, features: torch.Tensor, labels: torch.Tensor, columns: list[int]) -> Scores:
    """Accuracy and ECE over a subset of the training classes: target class j is training class `columns[j]`
    (domain generalisation onto ImageNet-A/R's 200 classes). The method scores those classes alone
    (`Method.logits_over`): a softmax over the classes, as LatHAdapter's fused inference and the ECE take, runs over
    the subset, as it does in a classifier built for the target's classes."""
    method.eval()
    index = torch.as_tensor(columns, device=features.device)
    tally = Tally(features.device)
    for start in range(0, len(labels), CHUNK):
        scores = checked(method, method.logits_over(features[start:start + CHUNK], index))
        tally.add(method, scores, labels[start:start + CHUNK])
    return tally.scores(method)


def harmonic_mean(base: float | None, novel: float | None) -> float | None:
    """HM = 2BN / (B + N); None when either side is not applicable."""
    if base is None or novel is None:
        return None
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)
