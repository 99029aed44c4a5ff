"""Behaviours that a ninth mutation campaign (stop 27) found untested, in the baselines' own modules (zero-shot,
linear probe, CLIP-Adapter, Tip-Adapter and Tip-Adapter-F, TaskRes, GDA, LP++, CLAP, cross-modal, the registry):
each test here fails on a mutant that the rest of the suite let pass, and checks the code against an independent
oracle (an official value or rule restated from docs/baselines.md or the official code, a hand-built input with a
known answer)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from test_baseline_recipes import few_shot, step_cosine_lrs, trace

from lathadapter.adapter.catalog import create_method, make_options, resolve_options
from lathadapter.adapter.methods.zeroshot import ZeroShot, ZeroShotOptions
from lathadapter.adapter.options import OptionError
from lathadapter.adapter.recipes import RecipeFacts
from lathadapter.adapter.registry import register, registered
from lathadapter.adapter.trainer import train

# ------------------------------------------------------------------------------------------ the batches of an epoch


def test_tip_adapter_f_steps_every_batch_and_its_cosine_over_steps() -> None:
    """Tip-Adapter-F (`main.py`, `run_tip_adapter_F`): a loader of batch 256 that keeps its last partial batch, and a
    CosineAnnealingLR over `train_epoch × len(train_loader_F)` steps: with 300 images, 2 steps an epoch (256 + 44)
    and the cosine over 40 steps, not one per epoch."""
    data = few_shot("caltech101", classes=20, shots=15)  # 300 images
    method = create_method("tip-adapter-f", data)
    seen = trace(method)
    result = train(method, data, seed=1)
    steps = 20 * math.ceil(300 / 256)
    assert result.steps == steps and seen["batches"] == [256, 44] * 20
    assert seen["lrs"] == pytest.approx(step_cosine_lrs(1e-3, steps), rel=1e-6, abs=1e-12)


# ------------------------------------------------------------------------------------------ official values


@pytest.mark.parametrize("method", ["tip-adapter", "tip-adapter-f"])
def test_tip_adapter_on_a_dataset_without_a_config_takes_imagenet_yaml(method: str) -> None:
    """docs/baselines.md: a dataset outside the official configs gets `configs/imagenet.yaml`'s values (search scale
    [7, 3], init_alpha 1.17, train_epoch 20)."""
    resolved = resolve_options(method, make_options(method), RecipeFacts("my_leaves", 4))
    assert (resolved.search_beta_max, resolved.search_alpha_max, resolved.alpha, resolved.beta) == (7.0, 3.0, 1.17, 1.0)
    if method == "tip-adapter-f":
        assert resolved.epochs == 20


# ------------------------------------------------------------------------------------------ the logits' scale


def test_taskres_novel_classes_get_zero_shot_clip_s_logits() -> None:
    """Classes without a residual fall back to zero-shot CLIP: `100 <x, t_c>`, the logit scale included."""
    data = few_shot("caltech101", dim=4)
    method = create_method("taskres", data)
    x = torch.tensor([[0.6, 0.8, 0.0, 0.0]])
    text = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(method.logits(x, text), torch.tensor([[60.0, 80.0, 0.0]]))



# ------------------------------------------------------------------------------------------ cross-modal's texts


def test_cross_modal_takes_as_many_texts_a_step_as_there_are_text_samples_and_no_more() -> None:
    """`text_batch` is valid from 1 to the number of text samples (here one a class, 4): 4 is a step of every text
    sample, 5 is refused in one line."""
    data = few_shot("dtd", classes=4, shots=4)
    assert create_method("cross-modal", data, text_batch=4).settings()["cross-modal.text_batch"] == 4
    with pytest.raises(OptionError, match="text_batch=5"):
        create_method("cross-modal", data, text_batch=5)


# ------------------------------------------------------------------------------------------ the registry


def test_a_name_registers_one_class_and_the_same_class_may_register_again() -> None:
    """`register`: a second class under a taken name is refused (the first stays registered); the class already
    registered under it registers again without error (a module imported twice)."""

    class Other(ZeroShot):
        pass

    with pytest.raises(ValueError, match="'zeroshot' is registered twice"):
        register("zeroshot", ZeroShotOptions)(Other)
    assert registered()["zeroshot"] is ZeroShot
    assert register("zeroshot", ZeroShotOptions)(ZeroShot) is ZeroShot
    assert registered()["zeroshot"] is ZeroShot and ZeroShot.name == "zeroshot"


OUTSIDE = """
from lathadapter.adapter.catalog import method_names
from lathadapter.adapter.methods.zeroshot import ZeroShot, ZeroShotOptions
from lathadapter.adapter.registry import register, registered
for name in ("zz-first", "aa-second"):
    register(name, ZeroShotOptions)(type(name, (ZeroShot,), {}))
print(list(registered())[-2:], method_names()[-2:])
"""


def test_methods_from_outside_keep_the_order_they_registered_in() -> None:
    """`registered()` and `method_names()` list the methods registered from outside the package after the catalog's,
    in the order they registered (not by name); in a child process, so that this one's registry stays as it is."""
    out = subprocess.run([sys.executable, "-c", OUTSIDE], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['zz-first',", "'aa-second']", "['zz-first',", "'aa-second']"]
