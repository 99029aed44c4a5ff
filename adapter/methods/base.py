"""The interface every method implements: built from a few-shot set, scores images against class text features."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lathadapter.adapter.options import OptionError, TrainOptions
from lathadapter.adapter.recipes import (
    RecipeFacts,
    TrainRecipe,
    build_optimizer,
    build_scheduler,
    dataset_key,
    require_raw,
    unread_options,
)
from lathadapter.cache.store import FewShotData

NORM_EPS = 1e-12  # as F.normalize
LOGIT_SCALE = 100.0  # CLIP's learned temperature, fixed at its converged value


def unit_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x / max(|x|, eps)` over the last dim, and that length (what `normalize_backward` needs)."""
    length = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(NORM_EPS)
    return x / length, length


def normalize_backward(grad: torch.Tensor, unit: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """The two-term backward of a normalisation, `(g − y <g, y>) / |x|` (written into a new tensor)."""
    return torch.addcmul(grad, unit, (grad * unit).sum(-1, keepdim=True), value=-1).div_(length)


class _Normalize(torch.autograd.Function):
    """`x / max(|x|, eps)` over the last dim with the two-term backward `(g − y <g, y>) / |x|` (autograd's own
    backward of F.normalize takes about four times as many passes over the tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y, length = unit_rows(x)
        ctx.save_for_backward(y, length)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return normalize_backward(grad, *ctx.saved_tensors)


def vmapped() -> bool:
    """Whether the code runs under a torch.func transform (vmap over stacked runs, `adapter.batched`)."""
    return torch._C._functorch.maybe_current_level() is not None


def mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`F.cross_entropy(logits, labels)` (the batch mean, no label ignored) in the fixed-shape form of stacked and
    captured steps: under vmap, forward and backward take 12 operations where F.cross_entropy's handling of
    `ignore_index` takes 23 (each one a kernel of the captured step on a GPU)."""
    return -logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).mean()


class _NormalizeVmap(torch.autograd.Function):
    """`_Normalize` in the form `torch.func.vmap` takes (forward without ctx, `setup_context`, a generated vmap rule).
    Used only under vmap: `apply` of this form binds default arguments through `inspect`, 0.1 ms a call."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return unit_rows(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*output)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # the length's gradient stays None, not a tensor of zeros (a kernel)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, _: torch.Tensor | None) -> torch.Tensor | None:
        return None if grad is None else normalize_backward(grad, *ctx.saved_tensors)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit L2 norm along the last dimension."""
    return _NormalizeVmap.apply(x)[0] if vmapped() else _Normalize.apply(x)


class _Cosines(torch.autograd.Function):
    """`normalize(x) @ normalize(y)ᵀ` as `(x @ yᵀ) / (|x| |y|ᵀ)`: no normalised copy of either side is made, which
    saves the passes over [N, D] and [M, D] of two normalisations and their backward passes. With `unit_y` the rows
    of y are taken as unit already: the product is `(x @ yᵀ) / |x|` and y's gradient that of the plain product (the
    normalisation that made y projects it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, unit_y: bool) -> torch.Tensor:
        out, x_length, y_length = cosines_forward(x, y, unit_y)
        ctx.save_for_backward(x, y, x_length, y_length, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return *cosines_backward(grad, *ctx.saved_tensors, ctx.needs_input_grad), None


def cosines_forward(x: torch.Tensor, y: torch.Tensor, unit_y: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`_Cosines`' forward: the cosines and the norms its backward needs (|y| None with `unit_y`)."""
    x_length = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(NORM_EPS)  # [N, 1]
    out = (x @ y.t()).div_(x_length)
    y_length = None
    if not unit_y:
        y_length = torch.linalg.vector_norm(y, dim=-1).clamp_min_(NORM_EPS)  # [M]
        out.div_(y_length)
    return out, x_length, y_length


def cosines_backward(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, x_length: torch.Tensor,
                     y_length: torch.Tensor | None, out: torch.Tensor, needs: tuple[bool, ...]
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`_Cosines`' backward: ∂/∂x_i = Σ_j g_ij y_j / (|x_i| |y_j|) − x_i Σ_j g_ij out_ij / |x_i|², likewise y_j."""
    weighted = grad * out
    scaled = grad / x_length
    if y_length is not None:
        scaled = scaled / y_length
    grad_x = grad_y = None
    if needs[0]:
        grad_x = torch.addcmul(scaled @ y, x, weighted.sum(1, keepdim=True).div_(x_length.square()), value=-1)
    if needs[1]:
        grad_y = scaled.t() @ x
        if y_length is not None:
            grad_y = torch.addcmul(grad_y, y, weighted.sum(0).div_(y_length.square())[:, None], value=-1)
    return grad_x, grad_y


class _CosinesVmap(torch.autograd.Function):
    """`_Cosines` in the form `torch.func.vmap` takes (see `_NormalizeVmap`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, y: torch.Tensor, unit_y: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return cosines_forward(x, y, unit_y)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        out, x_length, y_length = output
        ctx.save_for_backward(inputs[0], inputs[1], x_length, y_length, out)
        ctx.mark_non_differentiable(*(t for t in (x_length, y_length) if t is not None))
        ctx.set_materialize_grads(False)  # the lengths' gradients stay None, not tensors of zeros (kernels)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, *_: torch.Tensor | None):
        if grad is None:  # nothing reached the cosines (`set_materialize_grads(False)`)
            return None, None, None
        return *cosines_backward(grad, *ctx.saved_tensors, ctx.needs_input_grad), None


def cosines(x: torch.Tensor, y: torch.Tensor, unit_y: bool = False) -> torch.Tensor:
    """Cosines [N, M] of the rows of x [N, D] with the rows of y [M, D]: `normalize(x) @ normalize(y)ᵀ`; `unit_y`
    says y's rows are unit vectors already (made by a normalisation upstream), so their norms are not divided out."""
    return _CosinesVmap.apply(x, y, unit_y)[0] if vmapped() else _Cosines.apply(x, y, unit_y)


class ProtocolWarning(UserWarning):
    """A step of the protocol could not run as asked (e.g. a search on a val set the cache does not have)."""


class NotApplicable(RuntimeError):
    """The method cannot score classes it was not trained on (novel or cross-dataset classes)."""


def search_set_data(data: FewShotData, search_set: str, method: str, searched: str
                    ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The val images a choice made after training reads (option `search_set`, `SEARCH_SETS`) and which set they are:
    `split`, the cache's whole val split (`cache build --val split`; the official search set of Tip-Adapter and GDA);
    `shots`, LP++'s own K-shot val set (stored with the whole split); `subset`, the few-shot val subset; `none` when
    that subset is empty (ImageNet's). Asked for a set the cache lacks: the subset, with a `ProtocolWarning` that
    names the rebuild (`searched` says what is chosen, as "α and β are searched"; the warning points at the caller's
    line) — none for `shots` at K ≤ 4, where the subset is the same draw (docs/baselines.md)."""
    subset = (data.val_features, data.val_labels, "subset" if len(data.val_labels) else "none")
    if search_set == "subset":
        return subset
    if search_set == "split" and data.search_features is not None and data.search_labels is not None \
            and len(data.search_labels):
        return data.search_features, data.search_labels, "split"
    if search_set == "shots" and data.val_shots_features is not None and data.val_shots_labels is not None \
            and len(data.val_shots_labels):
        return data.val_shots_features, data.val_shots_labels, "shots"
    if len(data.val_labels) and (search_set == "split" or data.shots > 4):
        wanted = ("the whole val split" if search_set == "split" else
                  f"{data.shots} val images a class drawn from the whole val split")
        warnings.warn(f"{method}: the official code reads {wanted}, but this cache holds only the few-shot val "
                      f"subsets: {searched} on the few-shot val subset ({len(data.val_labels)} images). Rebuild the "
                      "cache with `lathadapter cache build ... --val split --force` to choose as the official code "
                      "does", ProtocolWarning, stacklevel=2)
    return subset


def warn_no_val_subset(method: str, consequence: str, stacklevel: int, select_val: bool = False) -> None:
    """Say (`ProtocolWarning`) that the cache has no few-shot val subset (ImageNet's has none) and what `method` does
    instead (`consequence`, from its punctuation on: ", so α is not searched ..."): the test set never stands in.
    `select_val` names `--select val` as what asked for one; `stacklevel` is the caller's, as for `warnings.warn`."""
    asked = "--select val, but " if select_val else ""
    warnings.warn(f"{method}: {asked}the cache has no few-shot val subset (as ImageNet's){consequence}",
                  ProtocolWarning, stacklevel=stacklevel + 1)


def warn_unread_options(method: Method, given: dict[str, Any], stacklevel: int) -> None:
    """Say (`ProtocolWarning`, one per option) which options the user set (`given`, the run's `overrides`) change
    nothing in training: training options the recipe `method` trains with does not read (`recipes.unread_options`; as
    `eps` under SGD), and the method's own that its other settings switch off (`Method.unread`). Each text names the
    option, not its value, so a grid sweeping it says it once. A warning, not an error, so that an unscoped
    `--set eps=…` stays valid in a grid of methods with different optimisers. `stacklevel`: the caller's."""
    if method.trains and isinstance(method.options, TrainOptions):  # LP++ trains by its own loop
        recipe = f" (recipe={method.options.recipe})" if hasattr(method.options, "recipe") else ""
        for said in unread_options(given, method.train_recipe()):
            warnings.warn(f"{method.name}{recipe} {said}", ProtocolWarning, stacklevel=stacklevel + 1)
    for said in method.unread(given):
        warnings.warn(f"{method.name}: {said}", ProtocolWarning, stacklevel=stacklevel + 1)


# The base text of TaskRes and ZS-LP (`base_text`): `official`, the official `_get_base_text_features` (TaskRes's, and
# CLAP's copy of it for ZS-LP), whatever `--text`; `raw`, the raw feature of `--text`; `unit`, its unit feature.
BASE_TEXTS = ("official", "raw", "unit")
# trainers/imagenet_templates.py: the templates `_get_base_text_features` puts before the CoOp template on ImageNet
IMAGENET_TEMPLATES_SELECT = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                             "a {} in a video game.", "art of the {}.", "a photo of the small {}.")


def base_text(data: FewShotData, kind: str, method: str) -> tuple[torch.Tensor, str]:
    """The class text features [C, D] a method starts from (`kind`, one of `BASE_TEXTS`) and what they are, for
    `chosen`: `coop` or `imagenet-select+coop` (official), `raw`, `unit`."""
    if kind == "official":
        return official_base_text(data, method)
    if kind == "raw":
        return require_raw(data.text_raw, method, "the raw text features (base_text=raw)"), "raw"
    return data.text_features, "unit"


def imagenet_select_rows(data: FewShotData, method: str, purpose: str, lacking: str, instead: str,
                         stacklevel: int) -> list[int] | None:
    """The rows of `data.template_raw` holding the 7 `IMAGENET_TEMPLATES_SELECT` templates, in their order; None,
    with a `ProtocolWarning` (`purpose`, what is `lacking`, what is used `instead`; it points `stacklevel` frames up,
    at the method building itself), when the data lacks one of them or the per-template features."""
    missing = [t for t in IMAGENET_TEMPLATES_SELECT if t not in data.templates]
    if data.template_raw is None or missing:
        warnings.warn(f"{method}: {purpose}, but this data lacks {', '.join(repr(t) for t in missing) or lacking}: "
                      f"{instead} (a cache built by `lathadapter cache build` stores them all)", ProtocolWarning,
                      stacklevel=stacklevel + 1)
        return None
    return [data.templates.index(t) for t in IMAGENET_TEMPLATES_SELECT]


def zero_shot_base_text(data: FewShotData, kind: str, method: str) -> tuple[torch.Tensor, str]:
    """The unit class text features [C, D] of a zero-shot term `100 x Tᵀ` (Tip-Adapter(-F), GDA, LP++, APE(-T):
    option `base_text`, one of `options.ZERO_SHOT_BASE_TEXTS`) and what they are, for `chosen`. `official`: on
    ImageNet the official code's classifier whatever `--text` (Tip-Adapter's `clip_classifier` over
    `imagenet_templates`, which ICLR24 and LP++ reuse): the normalised mean of the unit features of the 7 simple
    templates, without CoOp's (`imagenet-select`); elsewhere `--text`'s features, as the official one template a
    dataset is CoOp's (`--text coop`). `unit`: `--text`'s features everywhere. A cache lacking one of the 7 gives
    ImageNet `--text`'s features, with a `ProtocolWarning`."""
    if kind == "unit" or dataset_key(data.dataset) != "imagenet":
        return data.text_features, "unit"
    rows = imagenet_select_rows(data, method, "the official ImageNet text classifier averages the 7 simple templates "
                                "(IMAGENET_TEMPLATES_SELECT)", "the per-template features",
                                "it uses the features of --text", stacklevel=3)
    if rows is None:
        return data.text_features, "unit"
    return normalize(normalize(data.template_raw[rows]).mean(dim=0)), "imagenet-select"


def official_base_text(data: FewShotData, method: str) -> tuple[torch.Tensor, str]:
    """`_get_base_text_features`' base for `data`'s dataset from the cache's raw per-template features, and its name
    for `chosen` (`coop` or `imagenet-select+coop`): on ImageNet the mean of the raw features of the 7
    `IMAGENET_TEMPLATES_SELECT` templates and the CoOp template, elsewhere the CoOp template's; a cache lacking one
    of the 7 gives ImageNet the CoOp template alone, with a `ProtocolWarning`."""
    coop = require_raw(data.template_raw[0] if data.template_raw is not None else data.text_raw, method,
                       "the raw text features (its base is the unnormalised text feature)")
    if dataset_key(data.dataset) != "imagenet":
        return coop, "coop"
    rows = imagenet_select_rows(data, method, "the official ImageNet base text averages the raw features of the 7 "
                                "IMAGENET_TEMPLATES_SELECT templates and the CoOp template",
                                "the raw per-template features", "the base is the CoOp template's raw feature alone",
                                stacklevel=4)
    if rows is None:
        return coop, "coop"
    return data.template_raw[rows + [0]].mean(dim=0), "imagenet-select+coop"  # the official order: select, CoOp


class Method(nn.Module):
    """A few-shot method over cached features.

    `logits(features)` scores the training classes; `logits(features, text_features)` scores another class set
    (novel or cross-dataset classes), or raises `NotApplicable` when `scores_new_classes` is false;
    `logits_over(features, columns)` scores a subset of the training classes as a classifier of that subset.
    """

    name: ClassVar[str]
    scores_new_classes: ClassVar[bool] = True
    trains: ClassVar[bool] = True
    # Whether `loss` can be vmapped over runs stacked along a leading dimension (`adapter.batched`): no host reads,
    # no data-dependent shapes, custom autograd Functions with vmap rules.
    stackable: ClassVar[bool] = False
    # Set on a method trained by a captured step (`adapter.graphed`): its `loss` then takes the same fixed-shape form
    # as under vmap (no host reads, no data-dependent shapes), which a CUDA graph can capture, built of the nodes that
    # launch the fewest kernels (vmappable Functions with hand-written backward passes: each costs more host time per
    # call, about 0.5 ms under vmap on a 2-core CPU, which a captured step pays once, at its capture, and an uncaptured
    # stacked step would pay at every step).
    fixed_shapes: bool = False

    def __init__(self, options: Any, data: FewShotData) -> None:
        super().__init__()
        self.options = type(self).resolve(options, RecipeFacts.of(data))
        self.register_buffer("text_features", data.text_features.clone())

    @classmethod
    def resolve(cls, options: Any, facts: RecipeFacts) -> Any:
        """`options` with every option left to the training recipe (None) set to the recipe's value for `facts`
        (dataset, shots): what a run trains with. No method is built. Unchanged for a method without a recipe
        (options that are set are never changed; resolving twice changes nothing)."""
        return options

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """The class probabilities of `scores` that `logits` gave, whose top one is a prediction's confidence (the
        ECE, `evaluate`): their softmax, as the training cross-entropy (or the official classifier) takes them."""
        return torch.softmax(scores, dim=-1)

    def logits_over(self, features: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Scores of the training classes `columns` alone (column j: training class `columns[j]`), as a classifier of
        those classes only gives them (domain generalisation onto ImageNet-A/R's 200 of 1000 classes): whatever a
        method normalises over the classes is normalised over `columns` (LatHAdapter's fused softmaxes). A method
        whose class scores do not depend on one another's, as every linear-logit method here, slices its logits."""
        return self.logits(features)[:, columns]

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss on a batch and its named parts (for logging); cross-entropy on the logits by default (in its
        fixed-shape form when stacked or captured)."""
        cross_entropy = mean_cross_entropy if self.fixed_form() else F.cross_entropy
        loss = cross_entropy(self.logits(features), labels)
        return loss, {"ce": loss.detach()}

    def fixed_form(self) -> bool:
        """Whether the loss runs in its fixed-shape form: under vmap (stacked runs) or in a captured step."""
        return self.fixed_shapes or vmapped()

    def after_training(self, data: FewShotData) -> dict[str, Any]:
        """Work done once training ends (e.g. hyper-parameter search on the few-shot val set); returns what it chose."""
        return {}

    def unread(self, given: dict[str, Any]) -> list[str]:
        """What to say, a sentence per option naming it (not its value), of the options the user set (`given`, by
        name) that change nothing in this method's training at its other settings (LatHAdapter's hierarchy options at
        λ_hier = 0); empty when every one is read."""
        return []

    def train_recipe(self) -> TrainRecipe:
        """How the trainer optimises this method; by default the shared recipe from its `TrainOptions`."""
        o = self.options
        return TrainRecipe(lr=o.lr, weight_decay=o.weight_decay, eps=o.eps, epochs=o.epochs, min_steps=o.min_steps,
                           batch_size=o.batch_size)

    def optimizer(self, params: list[nn.Parameter], recipe: TrainRecipe) -> torch.optim.Optimizer:
        """The optimiser `recipe` names over `params` (`recipes.build_optimizer`, which also serves runs trained
        together)."""
        return build_optimizer([(params, recipe)])

    def scheduler(self, optimizer: torch.optim.Optimizer, recipe: TrainRecipe, epochs: int, steps_per_epoch: int
                  ) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule `recipe` names, stepped by the trainer after every optimiser step."""
        return build_scheduler(optimizer, [recipe], epochs, steps_per_epoch)

    def settings(self) -> dict[str, Any]:
        """The values this run used that its options left to the recipe (per dataset and shots), recorded in the
        run's `chosen`; none by default."""
        return {}

    def lifted_points(self, data: FewShotData) -> dict[str, Any] | None:
        """Points worth drawing, saved with the run (`points.pt`) so that reports never reopen a cache; None when
        the method has none (only LatHAdapter lifts points into a ball)."""
        return None

    def diagnostics(self, train_data: FewShotData) -> dict[str, Any] | None:
        """Facts about the trained model worth recording with its metrics (`metrics.json`, results columns
        `hier.*`), computed after training on its training view; None when the method has none (LatHAdapter reports
        its hierarchy)."""
        return None

    def _require_new_classes(self) -> None:
        if not self.scores_new_classes:
            raise NotApplicable(f"{self.name} cannot score classes it was not trained on")


class Searched:
    """Mixin (before `Method`) of a method whose `after_training` search sets plain numbers that `logits` reads (the
    attribute names in `searched`, as Tip-Adapter's α and β): they are saved in its state dict as `_extra_state`, a
    float64 tensor, so that `load_state_dict` of a saved run restores the model that was scored, not its start."""

    searched: ClassVar[tuple[str, ...]] = ()

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([float(getattr(self, name)) for name in self.searched], dtype=torch.float64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        values = state.tolist()
        if len(values) != len(self.searched):
            raise ValueError(f"the saved searched values {values} do not match {', '.join(self.searched)}")
        for name, value in zip(self.searched, values, strict=True):
            setattr(self, name, value)


class Adapter(nn.Module):
    """The CLIP-Adapter bottleneck `D → D/r → D` with a ReLU between and no bias."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = dim // reduction
        if hidden < 1:
            raise OptionError(f"option reduction={reduction} is larger than the feature width {dim}: the adapter "
                              f"D → D/r → D needs 1 <= reduction <= {dim}")
        self.net = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mix_with(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, ratio: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden layer `relu(x W1ᵀ)` and `(1 − α) x + α relu(x W1ᵀ) W2ᵀ` for rows x and the adapter's weights; the
    second product, both scalings and the sum are one `addmm` (no extra pass over [N, D])."""
    hidden = torch.relu(x @ first.t())
    return hidden, torch.addmm(x, hidden, second.t(), beta=1 - ratio, alpha=ratio)


class _AdapterMix(torch.autograd.Function):
    """`mix_with`'s blend `(1 − α) x + α g(x)` (with `final_relu`, CLIP-Adapter's `g(x) = relu(relu(x W1ᵀ) W2ᵀ)`) as
    one node, in the form `torch.func.vmap` takes: a captured step's form (`Method.fixed_shapes`), stacked or not. Its
    backward takes each weight's gradient as `gᵀ h` in the weight's own layout, where autograd's transposed product is
    copied into it (with runs stacked, the batched product's layout no longer matches): one kernel less per layer."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, ratio: float, final_relu: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = torch.relu(x @ first.t())
        adapted = hidden @ second.t()
        if final_relu:
            adapted = torch.relu(adapted)
        return torch.lerp(x, adapted, ratio), hidden, adapted  # x + α (g(x) − x): one kernel for the blend

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, first, second, ctx.ratio, ctx.final_relu = inputs
        _, hidden, adapted = output
        ctx.save_for_backward(x, first, second, hidden, adapted)
        ctx.mark_non_differentiable(hidden, adapted)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, *_: torch.Tensor | None):
        if grad is None:  # nothing reached the blend (`set_materialize_grads(False)`)
            return None, None, None, None, None
        x, first, second, hidden, adapted = ctx.saved_tensors
        needs = ctx.needs_input_grad
        adapted_grad = grad * ctx.ratio
        if ctx.final_relu:
            adapted_grad = torch.ops.aten.threshold_backward(adapted_grad, adapted, 0)
        hidden_grad = torch.ops.aten.threshold_backward(adapted_grad @ second, hidden, 0)
        return (torch.addmm(grad, hidden_grad, first, beta=1 - ctx.ratio) if needs[0] else None,
                hidden_grad.t() @ x if needs[1] else None,
                adapted_grad.t() @ hidden if needs[2] else None, None, None)


def adapter_mix(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, ratio: float, final_relu: bool = False
                ) -> torch.Tensor:
    """`(1 − α) x + α g(x)` for rows x [N, D] as one node (`_AdapterMix`), a captured step's form."""
    return _AdapterMix.apply(x, first, second, ratio, final_relu)[0]


def mix(x: torch.Tensor, adapter: Adapter, ratio: float, node: bool = False, final_relu: bool = False
        ) -> torch.Tensor:
    """`(1 − α) x + α g(x)`, the residual blend before its renormalisation; `final_relu`: a ReLU after g's second
    layer (CLIP-Adapter's official code, the cross-modal adapter); `node`: as one node (`adapter_mix`, a captured
    step's form: fewer kernels, more host time per call)."""
    first, _, second = adapter.net
    rows = x.reshape(-1, x.shape[-1])
    if node:
        return adapter_mix(rows, first.weight, second.weight, ratio, final_relu).reshape(x.shape)
    if not final_relu:
        return mix_with(rows, first.weight, second.weight, ratio)[1].reshape(x.shape)
    adapted = torch.relu(torch.relu(rows @ first.weight.t()) @ second.weight.t())
    return torch.add(rows * (1 - ratio), adapted, alpha=ratio).reshape(x.shape)
