"""Post-hoc temperature scaling (Guo et al. 2017): one temperature T per run, fitted by the NLL of its val images,
divides the logarithm of the method's class probabilities; the test ECE after it tells how much of a method's
miscalibration is one temperature. Never part of a run's training or its recorded scores."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lathadapter.adapter.evaluate import NaNScores, Scores, Tally
from lathadapter.adapter.methods.base import Method

T_RANGE = (1e-3, 1e3)  # the temperatures searched
STEPS = 200  # golden-section steps: the bracket shrinks by 0.618 a step, far below float64 resolution of log T
FLOOR = 1e-300  # probabilities below it (0 in float64) are taken as it, so that their logarithm is finite


def log_probabilities(method: Method, scores: torch.Tensor) -> torch.Tensor:
    """log of `method`'s class probabilities of `scores` (`Method.probabilities`), in float64, floored at `FLOOR`.
    For a softmax method, scaling it by 1/T is the softmax of its logits divided by T."""
    return method.probabilities(scores.double()).clamp_min(FLOOR).log()


def nll(log_p: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under softmax(`log_p` / `temperature`)."""
    z = log_p / temperature
    return float((torch.logsumexp(z, dim=-1) - z.gather(1, labels[:, None]).squeeze(1)).mean())


def fit_temperature(log_p: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in `T_RANGE` minimising `nll` on (`log_p` float64 [N, C], `labels` [N]). The NLL is convex in 1/T, so
    unimodal in log T: a golden-section search over log T."""
    low, high = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(log_p, labels, math.exp(a)), nll(log_p, labels, math.exp(b))
    for _ in range(STEPS):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(log_p, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(log_p, labels, math.exp(b))
    return math.exp((low + high) / 2)


@dataclass(frozen=True)
class TemperatureScaled:
    """The temperature fitted on `val_images` val images, and the test accuracy (unchanged: scaling keeps the
    ranking) and ECE after it."""

    temperature: float
    val_images: int
    scores: Scores

    @property
    def at_edge(self) -> bool:
        """Whether T is at an end of `T_RANGE`: the val NLL falls on towards it (every val image right, for T → 0),
        so the val images do not bound T."""
        return not T_RANGE[0] * 1.001 < self.temperature < T_RANGE[1] / 1.001


def temperature_scaled(method: Method, val_scores: torch.Tensor, val_labels: torch.Tensor,
                       test_scores: torch.Tensor, test_labels: torch.Tensor) -> TemperatureScaled | None:
    """Fit T on the method's val scores (`logits` over its training classes) and score the test scores with their
    probabilities scaled by it, binned as every ECE here (`Tally`); None without val or test images. NaN or infinite
    scores (NaN probabilities) are refused (`NaNScores`): the search would end at the top of `T_RANGE`, a T that
    no image chose."""
    if len(val_labels) == 0 or len(test_labels) == 0:
        return None
    val_log_p, test_log_p = log_probabilities(method, val_scores), log_probabilities(method, test_scores)
    for images, log_p in (("val", val_log_p), ("test", test_log_p)):
        if bool(torch.isnan(log_p).any()):
            raise NaNScores(f"{method.name} gave NaN or infinite scores on its {images} images, so no temperature is "
                            "fitted")
    temperature = fit_temperature(val_log_p, val_labels.to(val_scores.device))
    scaled = torch.softmax(test_log_p / temperature, dim=-1)
    tally = Tally(test_scores.device)
    # binned in float32, as every ECE here (`Tally.add_confidences` bins a float32 exactly; a float64 can miss an edge)
    tally.add_confidences(scaled.amax(dim=-1).float(),
                          test_scores.argmax(dim=-1) == test_labels.to(test_scores.device))
    return TemperatureScaled(temperature, len(val_labels), tally.scores(method))
