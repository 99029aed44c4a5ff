"""Top-1 accuracy of a method on cached test features, in chunks so large test sets fit in memory."""

from __future__ import annotations

import torch

from lathadapter.adapter.methods.base import Method, NotApplicable

CHUNK = 8192


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


@torch.no_grad()
def evaluate(method: Method, features: torch.Tensor, labels: torch.Tensor,
             text_features: torch.Tensor | None = None) -> float | None:
    """Accuracy on (`features`, `labels`) against the training classes, or against `text_features`' classes.

    Returns None (not applicable) when the method cannot score those classes.
    """
    method.eval()
    correct = 0
    try:
        for start in range(0, len(labels), CHUNK):
            scores = checked(method, method.logits(features[start:start + CHUNK], text_features))
            correct += int((scores.argmax(dim=-1) == labels[start:start + CHUNK]).sum())
    except NotApplicable:
        return None
    return 100.0 * correct / len(labels)


@torch.no_grad()
def evaluate_mapped(method: Method, features: torch.Tensor, labels: torch.Tensor, columns: list[int]) -> float:
    """Accuracy over a subset of the training classes: target class j is training class `columns[j]`
    (domain generalisation onto ImageNet-A/R's 200 classes). The method scores those classes alone
    (`Method.logits_over`): a softmax over the classes, as LatHAdapter's fused inference takes, runs over the subset,
    as it does in a classifier built for the target's classes."""
    method.eval()
    index = torch.as_tensor(columns, device=features.device)
    correct = 0
    for start in range(0, len(labels), CHUNK):
        scores = checked(method, method.logits_over(features[start:start + CHUNK], index))
        correct += int((scores.argmax(dim=-1) == labels[start:start + CHUNK]).sum())
    return 100.0 * correct / len(labels)


def harmonic_mean(base: float | None, novel: float | None) -> float | None:
    """HM = 2BN / (B + N); None when either side is not applicable."""
    if base is None or novel is None:
        return None
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)
