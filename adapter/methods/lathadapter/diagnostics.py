"""Whether a trained LatHAdapter holds the hierarchy it is regularised towards (docs/method.md, "Hierarchy
diagnostics"): the share of images inside their own category's entailment cone, the mean exterior angle and
half-aperture of the category → image edges, the mean scaled radius of each kind and whether categories lie nearest
the origin and images farthest, and how often Euclidean and hyperbolic inference disagree.

Computed once after training, in eval mode, over explicit lifted points with the plain functions of
`kernels.cone` (no fused twin): on the clean view of the few-shot train images and on the test images of the
training classes. Shares are percentages (as accuracies), angles radians, radii scaled (ρ' = √c |h| < 1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lathadapter.adapter.methods.lathadapter.reference import ATTRIBUTE, CATEGORY, IMAGE
from lathadapter.cache.store import FewShotData
from lathadapter.kernels.cone import cone_energy, cone_exterior_angle, cone_half_aperture

CHUNK = 8192  # test images scored at once (as `adapter.evaluate`): [CHUNK, C] scores, whatever the test set's size


def image_centres(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`cone_parent=image`'s parents [C, D]: each class's image-side centre norm(mean v_i) over `images` (adapted
    unit directions [N, D]), lifted as a category (as the reference lifts the batch's centres)."""
    sums = images.new_zeros(num_classes, images.shape[1]).index_add(0, labels, images)
    mean = sums / torch.bincount(labels, minlength=num_classes).clamp_min(1).to(images.dtype)[:, None]
    return model.lift(CATEGORY, F.normalize(mean, dim=-1), mean.norm(dim=-1))


def cone_statistics(parents: torch.Tensor, children: torch.Tensor, c: torch.Tensor, k: float, kappa: float
                    ) -> torch.Tensor:
    """[the share (0–1) of the pairs (parent_i, child_i) with cone energy E = 0, their mean exterior angle Ξ], on the
    device (read back with the other diagnostics: one wait for the device, not one per number)."""
    inside = cone_energy(parents, children, c, k, kappa) == 0
    return torch.stack([inside.float().mean().to(children.dtype), cone_exterior_angle(parents, children, c).mean()])


def mean_radii(categories: torch.Tensor, attributes: torch.Tensor, images: torch.Tensor, c: torch.Tensor
               ) -> torch.Tensor:
    """The mean scaled radius √c |h| of each kind's points [category, attribute, image], on the device."""
    return torch.stack([c.sqrt() * points.norm(dim=-1).mean() for points in (categories, attributes, images)])


def radius_summary_of(radii: list[float]) -> dict[str, Any]:
    """The mean radii (`mean_radii`, read back) by kind, and whether they keep category < attribute < image."""
    radius = dict(zip(("category", "attribute", "image"), radii, strict=True))
    return {**{f"radius_{kind}": value for kind, value in radius.items()},
            "radius_order": radius["category"] < radius["attribute"] < radius["image"]}


@torch.no_grad()
def hierarchy_diagnostics(model: nn.Module, data: FewShotData) -> dict[str, Any]:
    """The diagnostics of a trained LatHAdapter `model` on its training view `data` (train and test images of the
    training classes), with the run's own c, K (`cone_k`) and κ (`cone_kappa`); every number is computed on the
    device and read back at once."""
    model.eval()
    o, c = model.options, model.curvature

    def lifted(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v, length = model.adapt_images(model.centred_images(features))
        return v, model.lift(IMAGE, v, length)

    v_train, train = lifted(data.train_features)
    _, test = lifted(data.test_features)
    side = model.text_side(model.text_features)
    categories = (model.class_radii(model.text_features, side, c) / c.sqrt())[:, None] * side.prototypes
    # the parents of the category → image edges, as the run's cones have them (centres: of the train images)
    parents = categories if o.cone_parent == "text" else image_centres(model, v_train, data.train_labels,
                                                                         data.num_classes)
    attributes = model.lift(ATTRIBUTE, side.attributes, model.attribute_lengths())
    disagree = torch.zeros((), dtype=torch.long, device=test.device)
    for start in range(0, len(data.test_labels), CHUNK):
        euclid, hyper = model.scores(data.test_features[start:start + CHUNK])
        disagree += (euclid.argmax(-1) != hyper.argmax(-1)).sum()
    values = torch.cat([cone_statistics(parents[data.train_labels], train, c, o.cone_k, o.cone_kappa),
                        cone_statistics(parents[data.test_labels], test, c, o.cone_k, o.cone_kappa),
                        cone_half_aperture(parents, c, o.cone_k).mean()[None],
                        mean_radii(categories, attributes, train, c),
                        disagree[None].to(train.dtype)]).tolist()
    (train_share, train_angle, test_share, test_angle, aperture), radii = values[:5], values[5:8]
    return {
        "train_in_cone": 100.0 * train_share,
        "test_in_cone": 100.0 * test_share,
        "train_angle": train_angle,
        "test_angle": test_angle,
        "aperture": aperture,
        **radius_summary_of(radii),
        "euclid_hyper_disagree": 100.0 * values[8] / len(data.test_labels),
    }
