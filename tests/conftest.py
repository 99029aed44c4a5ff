"""Shared fixtures: a tiny open_clip model loaded from a checkpoint file, small CoOp-layout datasets on disk, and the
small synthetic cache the baselines' end-to-end tests run on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.demo.synthetic import write_coop_dataset

# The test problems are tiny: one thread avoids OpenMP's spin-wait overhead, which on a loaded 2-core machine makes
# small matrix products ten times slower. Subprocesses started by tests inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

DATA = Path(__file__).parent / "data"
TINY_CONFIG = DATA / "lathadapter-tiny-test.json"

# Two families and their shapes give the test dataset a real category hierarchy; colour, texture, size and
# background are attributes that vary inside every class.
TEST_CLASSES = ["circle", "ring", "ellipse", "triangle", "square", "hexagon", "star", "cross"]


@dataclass(frozen=True)
class TinyClip:
    """A tiny open_clip model saved as a checkpoint file, as a user would pass it with `--pretrained PATH`."""

    config: Path
    name: str
    checkpoint: Path
    model: open_clip.model.CLIP
    preprocess: object
    tokenizer: object


@dataclass(frozen=True)
class CoopDataset:
    """A generated dataset in the CoOp layout: images on disk and a `split_zhou_*.json`."""

    folder: Path
    split_file: Path
    classes: list[str]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    """Build the tiny model from its JSON config, save it, and load it back through `pretrained=<path>`."""
    open_clip.add_model_config(TINY_CONFIG)
    name = TINY_CONFIG.stem
    torch.manual_seed(0)
    built = open_clip.create_model(name)
    checkpoint = tmp_path_factory.mktemp("tiny_clip") / "tiny.pt"
    torch.save(built.state_dict(), checkpoint)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))
    model.eval()
    return TinyClip(TINY_CONFIG, name, checkpoint, model, preprocess, open_clip.get_tokenizer(name))


@pytest.fixture(scope="session")
def coop_dataset(tmp_path_factory: pytest.TempPathFactory) -> CoopDataset:
    """Eight shape classes from three families, 20 train / 6 val / 8 test images each, 32 px."""
    folder = tmp_path_factory.mktemp("shapes")
    split = write_coop_dataset(folder, "Shapes", TEST_CLASSES, counts=(20, 6, 8), seed=0)
    return CoopDataset(folder, split, [c.replace(" ", "_") for c in TEST_CLASSES])


@pytest.fixture(scope="session")
def baseline_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic cache of 8 classes (D = 16, 3 views, shots 2 and 4, seed 1) that the baselines' fit, grid, protocol
    and CLI tests read (never write)."""
    return write_synthetic_cache(tmp_path_factory.mktemp("baselines") / "synthetic.h5", num_classes=8, dim=16, views=3,
                                 shots=(2, 4), seeds=(1,))
