"""No path from held-out data into training or choices: every method's training, post-training searches, epoch
selection and both tuning scores are unchanged when the test set (and, for base-to-novel, everything of the novel
classes) is replaced by noise. The oracle is the run on the intact data: a leak would make them differ."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lathadapter.adapter.catalog import method_names
from lathadapter.cache.store import CacheReader, FewShotData
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.run import RunConfig, run, tune_val_score

CLASSES = 8  # base: the first ceil(8 / 2) = 4 (docs/data.md), novel: 4..7


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> FewShotData:
    path = write_synthetic_cache(tmp_path_factory.mktemp("leak") / "leak.h5", num_classes=CLASSES, dim=16, views=2,
                                 shots=(4,), seeds=(1,), train_per_class=6, val_per_class=4, test_per_class=5)
    with CacheReader(path) as reader:
        return reader.load(4, 1)


def noise_like(features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(features.shape, generator=generator)
    return noise / noise.norm(dim=-1, keepdim=True)


def held_out_replaced(data: FewShotData) -> FewShotData:
    """`data` with its test images and labels, and the novel classes' train, view, val, val-split and LP++ val
    images and text features, replaced by noise (the base classes' data untouched)."""
    g = torch.Generator().manual_seed(7)
    novel = math.ceil(CLASSES / 2)

    def novel_rows(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = features.clone()
        out[labels >= novel] = noise_like(features[labels >= novel], g)
        return out

    text = data.text_features.clone()
    text[novel:] = noise_like(text[novel:], g)
    assert data.search_features is not None and data.search_labels is not None
    assert data.val_shots_features is not None and data.val_shots_labels is not None
    assert data.text_raw is not None and data.template_raw is not None
    text_raw, template_raw = data.text_raw.clone(), data.template_raw.clone()
    text_raw[novel:] = 9.0 * noise_like(text_raw[novel:], g)
    template_raw[:, novel:] = 9.0 * noise_like(template_raw[:, novel:], g)
    return dataclasses.replace(
        data, test_features=noise_like(data.test_features, g),
        test_labels=data.test_labels[torch.randperm(len(data.test_labels), generator=g)],
        train_features=novel_rows(data.train_features, data.train_labels),
        train_augmented=novel_rows(data.train_augmented, data.train_labels),
        val_features=novel_rows(data.val_features, data.val_labels),
        search_features=novel_rows(data.search_features, data.search_labels),
        val_shots_features=novel_rows(data.val_shots_features, data.val_shots_labels), text_features=text,
        text_raw=text_raw, template_raw=template_raw)


@pytest.mark.parametrize("method", method_names())
def test_base_to_novel_training_and_tuning_never_read_the_test_set_or_novel_classes(data: FewShotData,
                                                                                      method: str) -> None:
    intact = data
    replaced = held_out_replaced(data)
    assert not torch.equal(intact.test_features, replaced.test_features)
    fields = dataclasses.asdict(RunConfig.create(method, 4, 1).options)
    short = {name: value for name, value in (("epochs", 3), ("min_steps", 0)) if name in fields}  # a few steps
    config = RunConfig.create(method, 4, 1, "base", select="val", overrides=short)
    first, second = run(config, intact), run(config, replaced)
    for name in ("val_accuracy", "selected_epoch", "chosen", "history", "steps"):
        assert first.metrics[name] == second.metrics[name], name
    weights = second.method.state_dict()
    for name, value in first.method.state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)
    for score in ("val", "val_hm"):
        assert tune_val_score(config, None, intact, score) == tune_val_score(config, None, replaced, score), score


def test_the_replaced_copy_is_a_different_test_set(data: FewShotData) -> None:
    """The oracle is not vacuous: zero-shot test accuracy on the replaced copy differs from the intact one."""
    intact, replaced = run(RunConfig.create("zeroshot", 4, 1), data), run(RunConfig.create("zeroshot", 4, 1),
                                                                          held_out_replaced(data))
    assert intact.metrics["accuracy"]["all"] != replaced.metrics["accuracy"]["all"]
