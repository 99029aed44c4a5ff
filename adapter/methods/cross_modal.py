"""Cross-modal linear probing (Lin, Yu, Kuang, Pathak, Ramanan, "Multimodality Helps Unimodality: Cross-Modal
Few-Shot Learning with Multimodal Models", CVPR 2023): a linear head started from the class text features and trained
on the few-shot image features and, as extra samples of their class, the class text features.

Follows the official code, github.com/linzhiqiu/cross_modal_adaptation (read at ac9077e), as its README's
cross-modal linear-probing command runs it (`train.py --modality cross_modal --classifier_head linear
--classifier_init zeroshot --logit 4.60517 --hyperparams linear --text-augmentation hand_crafted`):

- the head (`engine/model/logit.py`, `LogitHead`; `engine/model/head.py`, `make_classifier_head`): `ℓ = e^4.60517
  x̂ Wᵀ` (≈ 99.99998 x̂ Wᵀ), the input normalised, W free (not normalised), no bias, the scale fixed (not learned);
  `classifier=adapter` (`--classifier_head adapter`, `adapter.sh`): the same head after the official `Adapter` on the
  normalised input, `ℓ = e^4.60517 (0.8 x̂ + 0.2 relu(relu(x̂ A₁ᵀ) A₂ᵀ)) Wᵀ` (A₁ [D/4, D], A₂ [D, D/4], no bias, no
  renormalisation after it), applied to the text samples as to the images, with `HYPER_DICT["adapter"]`'s values
  (lr ∈ {1e-4, 1e-5, 1e-6, 1e-7}, weight decay ∈ {0, 1e-3, 1e-5}, batch 8; defaults the first, lr 1e-4);
- W₀ (`init=zeroshot`, `get_zero_shot_weights`): per class, the mean of the raw text features of the `hand_crafted`
  templates (`engine/templates/hand_crafted.py`, Tip-Adapter's: on ImageNet the 7 `IMAGENET_TEMPLATES_SELECT` ones,
  elsewhere the dataset's CoOp template), normalised; `init=random` (`--classifier_init random`, `linear_probe.sh`
  since ac9077e): torch's `nn.Linear` default, U(−1/√D, 1/√D). The random values (W under `init=random`, then the
  adapter's A₁ and A₂, each torch's default `nn.Linear` init, in the order `make_classifier_head` builds them) are
  drawn from the global generator that the run seeds, before the text order; the official code also draws the W
  that `zeroshot` overwrites, which is not drawn here (so the default draws what it drew before these options);
- the text samples (`features.py`, `extract_text_features`): one per class and template (7 a class on ImageNet, 1
  elsewhere), normalised by the head as the images are;
- the batches (`train.py`, `train`, `CROSS_MODAL_BATCH_RATIO` 0.5): every step the loss is the cross-entropy's mean
  over `int(b/2)` text samples and `b − int(b/2)` images, each drawn by its own shuffled loader that drops its last
  partial batch and starts again when exhausted; here the images are the trainer's batch (`batch_size`) and the texts
  (`text_batch`, default as many) are the official text loader's (`text_order`: its draws from the global
  generator, which the run seeds: a new permutation each pass, cut into full batches);
- the optimiser and schedule (`engine/optimizer/default.py`, `HYPER_DICT["linear"]`; `optim.py`; `scheduler.py`):
  AdamW (β 0.9, 0.999), lr ∈ {1e-3, 1e-4}, weight decay ∈ {0, 1e-2, 1e-4}, batch ∈ {8, 32} (halved between the two
  modalities), 12,800 iterations, 50 warm-up steps (the first at 1e-5, then linear) and a cosine over 12,800
  (`warmup-cosine-step`; the steps that the trainer's whole epochs add beyond 12,800 run at lr 0). The defaults are
  lr 1e-3, no weight decay and batch 8 (4 + 4: batch 32 needs more than 16 classes, `get_valid_batch_sizes`); the
  official grid over the three is a `--tune` grid.

Not here: the few-shot val search (`train.py` keeps the best of every 100th iteration's checkpoints, `eval.py` the
best grid point per seed) is the protocol's (`--select val`, per epoch; `--tune`), not the method's; the official
pool of images is the centre crop and its mirror (`--image-augmentation flip`), the trainer's is one cached view per
image an epoch (`--train-views all` adds the clean view); the partial fine-tuning of the encoders and the WiSE-FT
head are out of reach of cached features. Novel classes are not scored, as for `linear-probe`. `text_samples=false`
trains the same head on the same image batches alone (the official `--modality uni_modal` fills the whole batch of 8
with images: `batch_size=8` for it).
`recipe=shared`: ZS-LP's shared form (`100 x Wᵀ + b`, W₀ = T, b₀ = 0, the unit features of `--text` as the text
samples) and the shared recipe; there `init=random` starts W as above and b₀ = 0, and `classifier=adapter` is the
official adapter head with the shared recipe's values. docs/baselines.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lathadapter.adapter.methods.base import (
    LOGIT_SCALE,
    Adapter,
    Method,
    imagenet_select_rows,
    mean_cross_entropy,
    mix,
    normalize,
)
from lathadapter.adapter.options import OptionError, RecipeTrainOptions, option
from lathadapter.adapter.recipes import RecipeFacts, TrainRecipe, dataset_key, fill, recipe_from, training_values
from lathadapter.adapter.registry import register
from lathadapter.cache.store import FewShotData

CLASSIFIERS = ("linear", "affine", "adapter")
INITS = ("zeroshot", "random")
TEXTS = ("hand-crafted", "unit")
OFFICIAL_LOGIT_SCALE = math.exp(4.60517)  # train.py's --logit 4.60517 (log 100 rounded), exponentiated
ADAPTER_REDUCTION, ADAPTER_RATIO = 4, 0.2  # head.py: Adapter(in_features, reduction=4, residual_ratio=0.2)
OFFICIAL_RECIPE = TrainRecipe(name="official", optimizer="adamw", lr=1e-3, weight_decay=0.0, eps=1e-8, epochs=1,
                              min_steps=12800, batch_size=4, drop_last=True, schedule="warmup-cosine-step",
                              warmup_steps=50, warmup_lr=1e-5)
# HYPER_DICT["adapter"]: lr {1e-4, 1e-5, 1e-6, 1e-7}, weight decay {0, 1e-3, 1e-5}, batch 8, the rest as "linear"
OFFICIAL_ADAPTER_RECIPE = dataclasses.replace(OFFICIAL_RECIPE, lr=1e-4)


@dataclass(frozen=True)
class CrossModalOptions(RecipeTrainOptions):
    """The training values (`batch_size`: the images of a step), the classifier and its start, the texts and their
    share."""

    # not `head`: linear-probe's option of that name has other values, and a second declaration would rename its
    # results column (`catalog.ambiguous_options`)
    classifier: str = option(None, "linear: e^4.60517 x̂ Wᵀ, W free, no bias (official); affine: 100 x Wᵀ + b, "
                                   "b₀ = 0; adapter: the official cross-modal adapter, e^4.60517 (0.8 x̂ + 0.2 "
                                   "relu(relu(x̂ A₁ᵀ) A₂ᵀ)) Wᵀ, D → D/4 → D, its official lr 1e-4 (default: the "
                                   "recipe's; official linear, shared affine)", choices=CLASSIFIERS)
    init: str = option("zeroshot", "W₀: zeroshot (the class text of `texts`), random (torch's nn.Linear default "
                                   "U(−1/√D, 1/√D), drawn from the run's seed; b₀ = 0)", choices=INITS,
                       before="zeroshot")
    texts: str = option(None, "the text samples and W₀ (init=zeroshot): hand-crafted (the official templates: "
                              "ImageNet's 7 select ones, 7 samples a class, W₀ their normalised raw mean; elsewhere "
                              "the CoOp template), unit (the unit feature of --text) (default: the recipe's; official "
                              "hand-crafted, shared unit)", choices=TEXTS)
    text_samples: bool = option(True, "train on the class text features as extra samples (false: the same image "
                                      "batches alone; the official uni_modal ablation takes batch_size=8)")
    text_batch: int = option(0, "text samples per step (0: as many as the step's images, at most all of them)",
                             least=0)


def hand_crafted(data: FewShotData, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """The official text samples [L, D] (unit), their labels [L], W₀ [C, D] and their name for `chosen`: on ImageNet
    the 7 `IMAGENET_TEMPLATES_SELECT` templates' features (class by class) and the normalised mean of their raw
    features; elsewhere the CoOp template's unit feature. A cache lacking the per-template features: `--text`'s."""
    classes = torch.arange(data.num_classes, device=data.text_features.device)
    if dataset_key(data.dataset) == "imagenet":
        rows = imagenet_select_rows(data, method, "the official text samples are the 7 IMAGENET_TEMPLATES_SELECT "
                                    "templates", "the per-template raw features", "the features of --text are used",
                                    stacklevel=3)
        if rows is not None:
            raw = data.template_raw[rows].transpose(0, 1)  # [C, 7, D]
            return (normalize(raw).reshape(-1, raw.shape[-1]), classes.repeat_interleave(len(rows)),
                    normalize(raw.mean(dim=1)), "imagenet-select")
        return data.text_features, classes, data.text_features, "unit"
    if data.template_raw is None:
        return data.text_features, classes, data.text_features, "unit"
    coop = normalize(data.template_raw[0])
    return coop, classes, coop, "coop"


def official_recipe(classifier: str | None) -> TrainRecipe:
    """The official values of `classifier`'s `--hyperparams` (`HYPER_DICT`): `adapter`'s for the adapter, else
    `linear`'s."""
    return OFFICIAL_ADAPTER_RECIPE if classifier == "adapter" else OFFICIAL_RECIPE


def random_weight(rows: int, columns: int) -> torch.Tensor:
    """A [rows, columns] weight as torch's `nn.Linear(columns, rows)` starts it (kaiming-uniform with a = √5:
    U(−1/√columns, 1/√columns)), float32 on the CPU from the global generator: the same under any device and dtype."""
    return nn.init.kaiming_uniform_(torch.empty(rows, columns), a=math.sqrt(5))


def text_order(samples: int, batch: int, steps: int) -> torch.Tensor:
    """The text samples of every step, [steps · batch], as the official text loader draws them from the global
    generator (the run's seed): a `DataLoader(shuffle=True, drop_last=True)` iterated anew whenever it is exhausted.
    Each pass draws the loader iterator's base seed (unused without workers), then its sampler's seed, whose generator
    permutes the samples; the pass is that permutation's first `samples // batch` full batches."""
    per_pass = samples // batch
    passes = []
    for _ in range(math.ceil(steps / per_pass)):
        torch.empty((), dtype=torch.int64).random_()  # `_BaseDataLoaderIter`'s base seed
        seed = int(torch.empty((), dtype=torch.int64).random_().item())  # `RandomSampler.__iter__`'s
        passes.append(torch.randperm(samples, generator=torch.Generator().manual_seed(seed))[:per_pass * batch])
    return torch.cat(passes)[:steps * batch]


@register("cross-modal", CrossModalOptions)
class CrossModal(Method):
    """The head (linear, affine, or the adapter and the linear head) and its text samples. The text order is a
    buffer and the step a device counter that `loss` advances, so that a stacked (vmapped) or captured step draws its
    texts without a host read."""

    stackable = True
    scores_new_classes = False

    @classmethod
    def resolve(cls, options: CrossModalOptions, facts: RecipeFacts) -> CrossModalOptions:
        official = official_recipe(options.classifier)
        return fill(options, {**training_values(official), "classifier": "linear", "texts": "hand-crafted"},
                    {**training_values(TrainRecipe()), "classifier": "affine", "texts": "unit"})

    def __init__(self, options: CrossModalOptions, data: FewShotData) -> None:
        super().__init__(options, data)
        options = self.options  # resolved
        self.classifier, self.init = options.classifier, options.init
        self.recipe = recipe_from(options, official_recipe(self.classifier))
        if options.texts == "hand-crafted":
            samples, labels, start, self.texts_kind = hand_crafted(data, self.name)
        else:
            samples, labels, start, self.texts_kind = data.text_features, torch.arange(
                data.num_classes, device=data.text_features.device), data.text_features, "unit"
        if self.init == "random":  # drawn before the adapter, as make_classifier_head builds them
            start = random_weight(data.num_classes, start.shape[1]).to(start)
        self.weight = nn.Parameter(start.clone())
        if self.classifier == "affine":
            self.bias = nn.Parameter(torch.zeros(data.num_classes, device=start.device, dtype=start.dtype))
        else:
            self.register_parameter("bias", None)
        # the official Adapter: torch's default nn.Linear init of each layer, drawn on the CPU as float32
        self.adapter = Adapter(start.shape[1], ADAPTER_REDUCTION).to(start) if self.classifier == "adapter" else None
        n = len(data.train_labels)
        self.text_batch = self._text_batch(options, len(labels), min(self.recipe.batch_size, n))
        if self.text_batch:
            steps = self.recipe.epochs_for(n) * self.recipe.steps_per_epoch(n) if n else 1
            # not in state_dict: the kept (select=val) states hold the head alone
            self.register_buffer("text_samples", samples.clone(), persistent=False)
            self.register_buffer("text_labels", labels.clone(), persistent=False)
            order = text_order(len(labels), self.text_batch, steps).to(start.device)
            self.register_buffer("text_order", order.view(steps, self.text_batch), persistent=False)
            self.register_buffer("text_step", torch.zeros((), dtype=torch.long, device=start.device),
                                 persistent=False)

    def _text_batch(self, options: CrossModalOptions, samples: int, images: int) -> int:
        """Text samples per step: 0 without them; `text_batch`, or as many as the step's images, at most `samples`."""
        if not options.text_samples:
            return 0
        if options.text_batch > samples:
            raise OptionError(f"option text_batch={options.text_batch} of {self.name} is not valid: this data has "
                              f"{samples} text samples (texts={options.texts}); choose 1..{samples}, or 0 for as "
                              "many as the step's images")
        return options.text_batch or min(images, samples)

    def train_recipe(self) -> TrainRecipe:
        return self.recipe

    def settings(self) -> dict[str, Any]:
        # `init` is never the recipe's to fill: its column is `opt.init` alone (one name per concept)
        return {**self.recipe.record(), "recipe.classifier": self.classifier, "recipe.texts": self.texts_kind,
                "cross-modal.text_batch": self.text_batch}

    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:
            self._require_new_classes()
        if self.classifier == "affine":
            return LOGIT_SCALE * features @ self.weight.t() + self.bias
        unit = F.normalize(features, dim=-1)
        return OFFICIAL_LOGIT_SCALE * (unit if self.adapter is None else self.adapted(unit)) @ self.weight.t()

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        """The official `Adapter` on rows x: `(1 − 0.2) x + 0.2 relu(relu(x A₁ᵀ) A₂ᵀ)`; in a captured step as one
        node (`base.adapter_mix`)."""
        return mix(x, self.adapter, ADAPTER_RATIO, node=self.fixed_shapes, final_relu=True)

    def text_batch_now(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's text samples and labels; advances the step counter (in place, on the device)."""
        order = self.text_order.index_select(0, (self.text_step % len(self.text_order)).view(1))[0]
        self.text_step.add_(1)
        return self.text_samples.index_select(0, order), self.text_labels.index_select(0, order)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The cross-entropy's mean over the step's images and its text samples together (`train.py`, `train`)."""
        if self.text_batch:
            texts, text_labels = self.text_batch_now()
            features, labels = torch.cat([features, texts.to(features.dtype)]), torch.cat([labels, text_labels])
        cross_entropy = mean_cross_entropy if self.fixed_form() else F.cross_entropy
        loss = cross_entropy(self.logits(features), labels)
        return loss, {"ce": loss.detach()}
