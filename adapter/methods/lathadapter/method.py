"""LatHAdapter: attribute prompts bridge categories and images; all three are lifted into a Poincaré ball where a
hierarchical regularisation shapes the latent tree category → attribute → image (docs/method.md).

Only four facts come from the paper's abstract (adapter on frozen CLIP, attribute prompts as a one-to-many bridge,
hyperbolic lift of each batch's categories, attributes and images, hierarchical regularisation). The equations are
this project's reconstruction, and each of its choices is an option.

The loss is defined by `reference.reference_loss` (explicit points, plain autograd; `impl=reference`). Every lifted
point is a unit direction times a radius, so the fused twins compute every term from direction cosines and radii:
the category side is one autograd node with a hand-written backward pass (`text`), and the loss after the image
product is written over the radial distance and cone-angle nodes of `kernels.radial` (`fused`: one 0-d radius per
kind for `radius=kind`, radius vectors for `radius=head|norm`; Triton kernels on CUDA). Stacked runs and captured
steps take its fixed-shape form (`stacked`).
Three reconstruction switches act around them: `centre` (on the inputs, so every form sees it), `hyp_metric=euclid`
(added here to the fused forms, which run with λ_hyp = 0) and `cone_parent=image` (the reference alone).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lathadapter.adapter.methods.base import LOGIT_SCALE, Adapter, Method, ProtocolWarning, cosines, mix, normalize
from lathadapter.adapter.methods.lathadapter.diagnostics import hierarchy_diagnostics
from lathadapter.adapter.methods.lathadapter.fused import fused_loss
from lathadapter.adapter.methods.lathadapter.options import (
    CURVATURE_RANGE,
    DIAGNOSED,
    FORM_ONLY,
    HIERARCHY_ONLY,
    LatHAdapterOptions,
)
from lathadapter.adapter.methods.lathadapter.reference import ATTRIBUTE, CATEGORY, IMAGE, reference_loss
from lathadapter.adapter.methods.lathadapter.stacked import masked_loss
from lathadapter.adapter.methods.lathadapter.text import TextSide, text_side
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData
from lathadapter.kernels.dispatch import use_triton
from lathadapter.kernels.radial import radial_distance, scaled_radius


def kmeans(points: torch.Tensor, k: int, seed: int = 0, iterations: int = 50) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding (deterministic for `seed`); returns the `k` centres. Remembered for the
    last few inputs: every run of a grid on one cache (any seed, shots) starts its prompts from the same vocabulary,
    and on a GPU grid's trainer threads the k-means was a tenth of the host's work per LatHAdapter run."""
    points = points.detach().float().cpu().contiguous()
    key = (tuple(points.shape), points.numpy().tobytes(), k, seed, iterations)
    with _KMEANS_LOCK:
        centres = _KMEANS_CENTRES.get(key)
    if centres is None:
        centres = _lloyd(points, k, seed, iterations)
        with _KMEANS_LOCK:
            if len(_KMEANS_CENTRES) >= KMEANS_REMEMBERED:
                _KMEANS_CENTRES.pop(next(iter(_KMEANS_CENTRES)))  # the oldest
            _KMEANS_CENTRES[key] = centres
    return centres.clone()  # the caller's own: it becomes a parameter


KMEANS_REMEMBERED = 8
_KMEANS_CENTRES: dict[tuple[Any, ...], torch.Tensor] = {}
_KMEANS_LOCK = threading.Lock()


def _lloyd(points: torch.Tensor, k: int, seed: int, iterations: int) -> torch.Tensor:
    """`kmeans` itself, on CPU float32 points."""
    generator = torch.Generator().manual_seed(seed)
    centres = [points[torch.randint(len(points), (1,), generator=generator)].squeeze(0)]
    for _ in range(1, k):
        distance = torch.cdist(points, torch.stack(centres)).min(dim=1).values.pow(2)
        centres.append(points[torch.multinomial(distance + 1e-12, 1, generator=generator)].squeeze(0))
    centres_t = torch.stack(centres)
    for _ in range(iterations):
        assignment = torch.cdist(points, centres_t).argmin(dim=1)
        updated = torch.zeros_like(centres_t).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).unsqueeze(1)
        updated = torch.where(counts > 0, updated / counts.clamp_min(1), centres_t)
        if torch.allclose(updated, centres_t):
            break
        centres_t = updated
    return centres_t


def modality_means(data: FewShotData) -> tuple[torch.Tensor, torch.Tensor]:
    """`centre=modality`'s means: the image mean over the few-shot train images, every view (clean and augmented),
    and the text mean over the training classes' text features."""
    dim = data.text_features.shape[1]
    images = torch.cat([data.train_features.reshape(-1, dim), data.train_augmented.reshape(-1, dim)])
    return images.mean(0), data.text_features.mean(0)


def init_attribute_prompts(data: FewShotData, options: LatHAdapterOptions,
                           text_mean: torch.Tensor | None = None) -> torch.Tensor:
    """K × D prompts: k-means centres of the attribute-vocabulary features when the cache has enough of them (text
    features, so centred with the text mean under `centre=modality`); otherwise N(0, 1/D) draws of the run's seed."""
    dim = data.text_features.shape[1]
    vocabulary = data.attribute_features
    if text_mean is not None and len(vocabulary):
        vocabulary = F.normalize(vocabulary - text_mean.to(vocabulary), dim=-1)
    if options.attr_init == "kmeans" and len(vocabulary) >= options.num_attributes:
        return kmeans(vocabulary, options.num_attributes).to(data.text_features.device)
    if options.attr_init == "kmeans":  # never silently: the vocabulary the cache was built with goes unused
        # fewer prompts fit a short vocabulary; none fit an empty one, where only attr_init=random says what happens
        fix = f"--set num_attributes={len(vocabulary)}" if len(vocabulary) else "--set attr_init=random"
        warnings.warn(f"lathadapter: attr_init=kmeans needs at least num_attributes={options.num_attributes} "
                      f"attribute phrases, but the cache holds {len(vocabulary)}: the prompts start at random "
                      "(N(0, 1/D)), as with attr_init=random. Build the cache with a longer --attributes file, or "
                      f"pass {fix}", ProtocolWarning, stacklevel=3)
    # the global generator, which the run seeds (`experiments.run.build`): each seed starts from its own prompts
    prompts = torch.randn(options.num_attributes, dim) / math.sqrt(dim)
    return prompts.to(data.text_features.device)


@register("lathadapter", LatHAdapterOptions)
class LatHAdapter(Method):
    stackable = True  # under vmap (and in captured steps) its loss is `stacked.masked_loss`; not with impl=reference

    def __init__(self, options: LatHAdapterOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        device, dim = data.text_features.device, data.text_features.shape[1]
        text_mean = None
        if options.centre == "modality":  # fixed at construction; novel classes' text takes the training text mean
            image_mean, text_mean = modality_means(data)
            self.register_buffer("image_mean", image_mean)
            self.register_buffer("text_mean", text_mean)
            self.text_features = self.centred_text(data.text_features)
        if options.impl == "reference" or options.hyp_metric != "poincare" or options.reference_only():
            # `impl=reference` trains through the reference itself, so neither stacked nor captured (both take
            # `stacked.masked_loss`); and the fixed-shape form implements neither variant (`REFERENCE_ONLY`)
            self.stackable = False
        self.visual_adapter = Adapter(dim, options.reduction).to(device)
        self.text_adapter = Adapter(dim, options.reduction).to(device)
        self.attribute_prompts = nn.Parameter(init_attribute_prompts(data, options, text_mean))
        self.beta = nn.Parameter(torch.tensor(options.beta, device=device))
        self.log_curvature = nn.Parameter(
            torch.tensor(math.log(options.curvature), device=device), requires_grad=options.learn_curvature
        )
        self.log_scales = nn.Parameter(
            torch.tensor([options.scale_cat, options.scale_attr, options.scale_img], device=device).log()
        )
        self.log_tau_hyp = nn.Parameter(torch.tensor(math.log(options.tau_hyp), device=device))
        if options.radius == "head":  # w = 0, b = log(e − 1): every radius starts at its kind's scale
            self.radius_weight = nn.Parameter(torch.zeros(3, dim, device=device))
            self.radius_bias = nn.Parameter(torch.full((3,), math.log(math.e - 1), device=device))

    # --- the pieces of the forward pass (docs/method.md, steps 1–5) ---

    @property
    def curvature(self) -> torch.Tensor:
        return self.log_curvature.exp().clamp(*CURVATURE_RANGE)

    def centred_images(self, features: torch.Tensor) -> torch.Tensor:
        """Step 0 (`centre=modality`): `norm(x − mean image)`; the features unchanged with `centre=none`."""
        return features if self.options.centre == "none" else normalize(features - self.image_mean)

    def centred_text(self, text_features: torch.Tensor) -> torch.Tensor:
        """Step 0 (`centre=modality`): `norm(t − mean training text)`, for training and novel classes alike."""
        return text_features if self.options.centre == "none" else normalize(text_features - self.text_mean)

    def adapt_images(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1 for images: `v_i = norm(z_i)` and `|z_i|`, z_i = (1 − α_v) x_i + α_v g_v(x_i)."""
        mixed = mix(features, self.visual_adapter, self.options.alpha_v)
        length = torch.linalg.vector_norm(mixed, dim=-1)
        return mixed / length.clamp_min(1e-12)[:, None], length

    def attribute_lengths(self) -> torch.Tensor:
        """|A_k|: the attribute prompts' norms before their normalisation (what `radius=norm` scales)."""
        return torch.linalg.vector_norm(self.attribute_prompts, dim=-1)

    def text_side(self, text_features: torch.Tensor) -> TextSide:
        """The category side (steps 1–3): the prototypes `p_c`, normalised `q_c = u_c + β Σ_k w_ck a_k` (`u_c` with
        `attr_proto` off), the weights `w_ck`, the cosines `<p_c, a_k>` and the attributes; one autograd node
        (`text`)."""
        first, _, second = self.text_adapter.net
        return text_side(text_features, first.weight, second.weight, self.attribute_prompts, self.beta,
                         self.options.alpha_t, self.options.tau_attr, self.options.attr_proto)

    def prototypes(self, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute-refined class prototypes `p_c` and the category→attribute weights `w_ck`."""
        side = self.text_side(text_features)
        return side.prototypes, side.weights

    def prototype_lengths(self, text_features: torch.Tensor, side: TextSide) -> torch.Tensor:
        """|q_c| with q_c = m_c + β |m_c| Σ_k w_ck a_k (|m_c| with `attr_proto` off), from the category side:
        |q_c| = |m_c| · <p_c, u_c + β Σ_k w_ck a_k> = |m_c| (<p_c, u_c> + β Σ_k w_ck <p_c, a_k>)."""
        m = mix(text_features, self.text_adapter, self.options.alpha_t)
        length = torch.linalg.vector_norm(m, dim=-1)
        if not self.options.attr_proto:
            return length
        along = (side.prototypes * m).sum(-1) / length + self.beta * (side.weights * side.class_attribute).sum(-1)
        return length * along

    def radius(self, kind: int, units: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Step 5: the radius ρ > 0 of each lifted point of `kind` (CATEGORY, ATTRIBUTE or IMAGE) with unit
        directions `units` [N, D] whose pre-normalisation vectors had `lengths` [N] (option `radius`; only `norm`
        reads the lengths)."""
        scale = self.log_scales.exp()[kind]
        if self.options.radius == "kind":
            return scale.expand(len(units))
        if self.options.radius == "norm":
            return scale * lengths
        return scale * F.softplus(units @ self.radius_weight[kind] + self.radius_bias[kind])

    def scaled_radii(self, kind: int, units: torch.Tensor, lengths: torch.Tensor | None, c: torch.Tensor
                     ) -> torch.Tensor:
        """ρ' = √c |exp0(ρ e)| = min(tanh(√c ρ), 1 − ε): the radius in the ball rescaled to curvature −1, which the
        radial geometry takes."""
        return scaled_radius(self.radius(kind, units, lengths), c)

    def lift(self, kind: int, units: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`exp0(ρ e)` of unit directions `units`: points of the ball of curvature −c."""
        c = self.curvature
        return (self.scaled_radii(kind, units, lengths, c) / c.sqrt())[:, None] * units

    def hyperbolic_logits(self, distances: torch.Tensor) -> torch.Tensor:
        """`−d(h^v_i, h^c_c) / τ_h`."""
        return distances * -torch.exp(-self.log_tau_hyp)  # one pass over [B, C]; the scalar work is on 0-d tensors

    # --- training loss (docs/method.md, step 6) ---

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of `reference.reference_loss`, through the fused twin of the configured radius (under vmap, for
        stacked runs, through `stacked.masked_loss`). Every form gets the centred inputs (`centre`); with
        `hyp_metric=euclid` the fused forms run without their Poincaré L_hyp and its Euclidean twin is added here."""
        o = self.options
        features = self.centred_images(features)
        euclid_twin = o.hyp_metric == "euclid" and o.impl == "fused" and not self.fixed_form()
        if euclid_twin:
            o = dataclasses.replace(o, lambda_hyp=0.0)
        if self.fixed_form():  # stacked runs, captured steps: the fixed-shape form (`stacked.masked_loss`)
            loss, parts = masked_loss(self, features, labels)
        elif o.impl == "reference":
            loss, parts = reference_loss(self, features, labels)
        else:
            side = self.text_side(self.text_features)
            mixed = mix(features, self.visual_adapter, o.alpha_v)
            triton = use_triton(mixed)
            # v = normalize(mixed) is folded into the one product of the images with prototypes and attributes; the
            # image–attribute cosines feed the hierarchy term alone, and its centripetal hinge between one radius per
            # kind not at all, so without them (λ_hier = 0, the default) the PyTorch twin takes the prototypes only
            # (the Triton twin's kernels take both)
            kind = o.radius == "kind" and not triton
            attribute_cosines = triton or (o.lambda_hier > 0 and not (o.hier == "triplet" and kind))
            directions = torch.cat([side.prototypes, side.attributes]) if attribute_cosines else side.prototypes
            image_cosines = cosines(mixed, directions, unit_y=True)
            c = self.curvature
            if kind:  # one 0-d radius per kind (under Triton, `scaled_radii` below gives constant radius vectors)
                radii = tuple(scaled_radius(self.log_scales.exp(), c).unbind())
            else:
                length = torch.linalg.vector_norm(mixed, dim=-1)
                units = mixed / length[:, None] if o.radius == "head" else mixed  # only the head reads directions
                radii = (self.scaled_radii(CATEGORY, side.prototypes, self.prototype_lengths(self.text_features, side)
                                           if o.radius == "norm" else None, c),
                         self.scaled_radii(ATTRIBUTE, side.attributes, self.attribute_lengths(), c),
                         self.scaled_radii(IMAGE, units, length, c))
            loss, (ce, hyp, hier) = fused_loss(image_cosines, side.class_attribute, side.weights, *radii, c,
                                               self.log_tau_hyp, labels, o)
            parts = {"ce": ce, "hyp": hyp, "hier": hier}
            if o.lambda_anchor > 0:  # L_anchor: (1 − <p_c, t_c>) over classes, (1 − <v_i, x_i>) over the batch
                anchor = (1 - (side.prototypes * self.text_features).sum(-1)).mean() + (
                    1 - (mixed * features).sum(-1) / torch.linalg.vector_norm(mixed, dim=-1)).mean()
                loss = loss + o.lambda_anchor * anchor
                parts["anchor"] = anchor.detach()
            if euclid_twin:  # L_hyp's Euclidean twin CE(<v_i, p_c> / τ_h), from the fused path's image–class cosines
                o = self.options
                hyp = F.cross_entropy(image_cosines[:, :len(side.prototypes)] / self.log_tau_hyp.exp(), labels)
                loss = loss + o.lambda_hyp * hyp
                parts["hyp"] = hyp.detach()
        weights = {"hyp": o.lambda_hyp, "hier": o.lambda_hier, "anchor": o.lambda_anchor}
        return loss, {k: v for k, v in parts.items() if weights.get(k, 1) > 0}

    def class_radii(self, text_features: torch.Tensor, side: TextSide, c: torch.Tensor) -> torch.Tensor:
        """Scaled radii of the lifted prototypes of `text_features`' classes (novel classes get theirs from the same
        head or norm)."""
        lengths = self.prototype_lengths(text_features, side) if self.options.radius == "norm" else None
        return self.scaled_radii(CATEGORY, side.prototypes, lengths, c)

    @torch.no_grad()
    def lifted_points(self, data: FewShotData, classes: int = 4, images_per_class: int = 12) -> dict[str, Any]:
        """The lifted prototypes of the first `classes` classes, every attribute prompt and up to `images_per_class`
        test images of each of those classes, each at its own radius, with the curvature and each class's strongest
        attribute: what the report's Poincaré-disk picture draws."""
        self.eval()
        c = self.curvature
        chosen = list(range(min(classes, data.num_classes)))
        text = self.centred_text(data.text_features)
        side = self.text_side(text)
        keep = torch.cat([torch.nonzero(data.test_labels == k).flatten()[:images_per_class] for k in chosen])
        v, length = self.adapt_images(self.centred_images(data.test_features[keep]))
        categories = (self.class_radii(text, side, c) / c.sqrt())[:, None] * side.prototypes
        return {
            "curvature": float(c),
            "class_names": [data.class_names[k] for k in chosen],
            "categories": categories[chosen].cpu(),
            "attributes": self.lift(ATTRIBUTE, side.attributes, self.attribute_lengths()).cpu(),
            "images": self.lift(IMAGE, v, length).cpu(),
            "image_labels": data.test_labels[keep].cpu(),
            "strongest_attribute": side.weights[chosen].argmax(dim=1).cpu(),
        }

    # --- inference (docs/method.md, step 7) ---

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.inferred(*self.scores(features, text_features, hyper=self.options.infer != "euclid"))

    def logits_over(self, features: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """`logits` of the training classes `columns` alone: both scores are sliced before `fused` takes their
        softmaxes, so each softmax runs over those classes, as in a classifier of the subset."""
        euclid, hyper = self.scores(features, hyper=self.options.infer != "euclid")
        return self.inferred(euclid[:, columns], None if hyper is None else hyper[:, columns])

    def inferred(self, euclid: torch.Tensor, hyper: torch.Tensor | None) -> torch.Tensor:
        """The scores of `infer` from both kinds (`scores`): `euclid`, `hyper`, or `fused`, the sum of their softmax
        probabilities over the classes scored."""
        if hyper is None:
            return euclid
        if self.options.infer == "hyper":
            return hyper
        return torch.softmax(euclid, dim=-1) + torch.softmax(hyper, dim=-1)

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """`infer=fused` scores are already the sum of two softmaxes: their mean, the fused class probabilities;
        `euclid` and `hyper` scores are the logits of their cross-entropy terms, softmaxed."""
        if self.options.infer == "fused":
            return scores / 2
        return torch.softmax(scores, dim=-1)

    def scores(self, features: torch.Tensor, text_features: torch.Tensor | None = None, hyper: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Both scores of `infer`: the Euclidean logits `100 <v, p>` and (with `hyper`) the hyperbolic ones,
        `−d(h^v, h^c) / τ_h`, or with `hyp_metric=euclid` their twin `<v, p> / τ_h`. Inputs are centred here."""
        text = self.text_features if text_features is None else self.centred_text(text_features)
        v, length = self.adapt_images(self.centred_images(features))
        side = self.text_side(text)
        cosines = v @ side.prototypes.t()
        euclid = LOGIT_SCALE * cosines
        if not hyper:
            return euclid, None
        if self.options.hyp_metric == "euclid":
            return euclid, cosines * torch.exp(-self.log_tau_hyp)
        c = self.curvature
        distances = radial_distance(self.scaled_radii(IMAGE, v, length, c)[:, None],
                                    self.class_radii(text, side, c)[None, :], cosines, c)
        return euclid, self.hyperbolic_logits(distances)

    def unread(self, given: dict[str, Any]) -> list[str]:
        """The hierarchy options set by the user that change nothing in training, only the run's key (and, for K, κ and
        the cones' parent, its `hier.*` diagnostics), a sentence each: all of `HIERARCHY_ONLY` at λ_hier = 0, else
        those of the form of L_hier that `hier` does not choose (`FORM_ONLY`)."""
        o = self.options
        if o.lambda_hier == 0:
            names, why = HIERARCHY_ONLY, "lambda_hier=0 turns the hierarchy term off, so {name}"
            advice = "set lambda_hier > 0 to train with it"
        else:
            other = next(form for form in FORM_ONLY if form != o.hier)
            names = FORM_ONLY[other]
            why = f"hier={o.hier!r} trains without {{name}} (only hier={other} reads it), so it"
            advice = f"set hier={other} to train with it"
        return [f"{why.format(name=name)} changes nothing in training"
                f"{' (the hier.* diagnostics read it)' if name in DIAGNOSED else ''}; {advice}"
                for name in given if name in names]

    def diagnostics(self, train_data: FewShotData) -> dict[str, Any]:
        """The hierarchy's diagnostics of the trained model (`diagnostics.hierarchy_diagnostics`)."""
        return hierarchy_diagnostics(self, train_data)
