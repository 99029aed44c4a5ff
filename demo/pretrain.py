"""Pre-train the bundled tiny CLIP on the synthetic captioned corpus with open_clip_train, on the CPU.

One command reproduces the committed assets (`demo/assets/`): `python -m lathadapter.demo.pretrain`.
It writes the corpus, registers the model config, runs open_clip_train's `main`, keeps only the final model weights
(fp16 when that keeps zero-shot accuracy), measures the demo world's figures (zero-shot, a full-train linear probe,
the trained methods at 16 shots) on a cache of the demo dataset and writes the model card. `--evaluate-only` redoes
the last part from the run in `--workdir` (after a change of the demo dataset, say).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from open_clip_train.main import main as open_clip_train_main
from torchvision.transforms import Compose, InterpolationMode, RandomHorizontalFlip, RandomResizedCrop

from lathadapter.cache.build import build
from lathadapter.demo.corpus import CAPTION_TEMPLATES, FULL_NAME_PROBABILITY, write_corpus
from lathadapter.demo.dataset import (
    BASE_CLASSES,
    COUNTS,
    DATASET_NAME,
    IMAGE_SIZE,
    NOVEL_CLASSES,
    SHIFT,
    TEMPLATE,
    VIEW_CROP_RATIO,
    VIEW_CROP_SCALE,
    VIEW_FLIP,
    write_demo_dataset,
)
from lathadapter.demo.evaluate import zero_shot_accuracy
from lathadapter.demo.figures import TRAINED_METHODS, few_shot, linear_probe, read_features, zero_shot
from lathadapter.demo.model import ASSETS, MODEL_NAME
from lathadapter.demo.synthetic import BACKGROUNDS, COLOURS, FAMILIES, SHAPES, SIZES, TEXTURES

FP16_TOLERANCE = 0.005  # largest drop of zero-shot accuracy (all classes) accepted for the fp16 checkpoint
FIGURE_SEEDS: tuple[int, ...] = (1, 2, 3)  # few-shot seeds of the card's 16-shot figure
# The figures' single training "view" is the whole image, unflipped: the methods train on clean features.


@dataclass(frozen=True)
class PretrainSettings:
    """Corpus and optimisation settings of one pre-training run; the defaults made the committed checkpoint."""

    corpus_size: int = 20000
    corpus_seed: int = 0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    wd: float = 0.1
    warmup: int = 100
    seed: int = 0
    threads: int = 1  # on a shared CPU, two threads contending with other processes ran 10-40x slower than one


def train_arguments(settings: PretrainSettings, tsv: Path, logs: Path) -> list[str]:
    """open_clip_train's command-line arguments for a CPU run in CSV mode (fp32, no workers, final checkpoint only)."""
    return [
        "--model", MODEL_NAME,
        "--train-data", str(tsv),
        "--dataset-type", "csv",
        "--csv-separator", "\t",
        "--csv-img-key", "filepath",
        "--csv-caption-key", "title",
        "--device", "cpu",
        "--workers", "0",
        "--precision", "fp32",
        "--batch-size", str(settings.batch_size),
        "--epochs", str(settings.epochs),
        "--lr", str(settings.lr),
        "--wd", str(settings.wd),
        "--warmup", str(settings.warmup),
        "--seed", str(settings.seed),
        "--save-frequency", "0",
        "--log-every-n-steps", "50",
        "--logs", str(logs),
        "--name", "run",
        "--report-to", "",
    ]


def export_weights(checkpoint: Path, out: Path, half: bool) -> Path:
    """Save the model's state dict alone (no optimizer state) from an open_clip_train checkpoint, fp16 if `half`."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if half:
        state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    torch.save(state, out)
    return out


def evaluate_weights(weights: Path, split_file: Path) -> dict:
    """Zero-shot accuracy of the weights loaded as a user loads them (`pretrained=<path>`) on the demo test set."""
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(weights))
    model.eval()
    return zero_shot_accuracy(model, preprocess, open_clip.get_tokenizer(MODEL_NAME), split_file, TEMPLATE)


def view_zero_shot(weights: Path, split_file: Path) -> list[dict]:
    """Zero-shot accuracy (all classes) on augmented views of the test images, for the demo's view settings and the
    field's: whether the views that adapters train on keep the images recognisable."""
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(weights))
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    rows = []
    field = ((0.5, 1.0), (3 / 4, 4 / 3))
    for scale, ratio, flip in ((VIEW_CROP_SCALE, VIEW_CROP_RATIO, VIEW_FLIP), (*field, 0.0), (*field, 0.5),
                               ((1.0, 1.0), (1.0, 1.0), 1.0)):
        crop = RandomResizedCrop(IMAGE_SIZE, scale=scale, ratio=ratio, interpolation=InterpolationMode.BICUBIC)
        view = Compose([crop, RandomHorizontalFlip(flip)])
        torch.manual_seed(0)
        score = zero_shot_accuracy(model, lambda image, view=view: preprocess(view(image.convert("RGB"))),
                                   tokenizer, split_file, TEMPLATE)["all"]
        rows.append({"scale": scale, "ratio": ratio, "flip": flip, "all": score})
    return rows


def world_figures(weights: Path, split_file: Path, cache: Path, seeds: tuple[int, ...] = FIGURE_SEEDS) -> dict:
    """The demo world's figures with `weights`, from a cache of the demo dataset (clean views, all train images):
    zero-shot over all classes and of novel images among novel classes, a linear probe trained on all training
    images, and each trained method's mean 16-shot accuracy over `seeds` (all in [0, 1])."""
    start = time.perf_counter()
    build(None, f"split:{split_file}", cache, model=str(ASSETS / f"{MODEL_NAME}.json"), pretrained=str(weights),
          template=TEMPLATE, views=0, shots=(16,), seeds=seeds, device="cpu", workers=0,
          full_train=True, force=True, progress=False, log=lambda message: None)
    build_seconds = time.perf_counter() - start
    features = read_features(cache)
    overall, novel = zero_shot(features)
    methods = few_shot(cache, TRAINED_METHODS, shots=16, seeds=seeds)
    best = max(methods, key=methods.__getitem__)
    return {"zero_shot": overall, "novel_zero_shot": novel, "linear_probe": linear_probe(features),
            "few_shot": methods, "best_method": best, "best_few_shot": methods[best], "seeds": list(seeds),
            "build_seconds": build_seconds}


def _describe_vision(vision: dict) -> str:
    """One line on the image tower of an open_clip config: a ResNet when `layers` is a list, else a ViT."""
    if isinstance(vision["layers"], list):
        return (f"open_clip's CLIP ResNet (ModifiedResNet: 3-conv stem, bottleneck stages {vision['layers']}, "
                f"attention pooling), width {vision['width']}, {vision['image_size']} px input")
    return (f"ViT, {vision['layers']} layers, width {vision['width']}, patch {vision['patch_size']}, "
            f"{vision['image_size']} px input")


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def _check(condition: bool) -> str:
    return "met" if condition else "**missed**"


def write_card(path: Path, settings: PretrainSettings, facts: dict, scores: dict, figures: dict,
               views: list[dict]) -> None:
    """The model card: what the model is, what it was trained on and how, the shift to the demo dataset, and the
    demo world's figures."""
    config = json.loads((ASSETS / f"{MODEL_NAME}.json").read_text())
    families = "; ".join(f"{family}: {', '.join(shapes)}" for family, shapes in FAMILIES.items())
    zs, lp, best, novel = (figures["zero_shot"], figures["linear_probe"], figures["best_few_shot"],
                           figures["novel_zero_shot"])
    seeds = ", ".join(str(seed) for seed in figures["seeds"])
    per_method = ", ".join(f"{method} {_percent(value)}" for method, value in figures["few_shot"].items())
    lines = [
        f"# {MODEL_NAME}",
        "",
        "A tiny CLIP (open_clip image and text towers) trained from scratch, contrastively, on a "
        "synthetic captioned corpus of rendered shapes. It exists so that the demo has a model whose image and text "
        "towers really are aligned; it knows nothing outside this synthetic world. The demo dataset is drawn "
        "through a shifted camera, so that, as with real CLIP, zero-shot is fair and adaptation has room to gain.",
        "",
        "## Files",
        "",
        f"- `{MODEL_NAME}.json`: the open_clip model config (register it with `open_clip.add_model_config(path)`).",
        f"- `{MODEL_NAME}.pt`: the model's state dict only ({facts['dtype']}, {facts['checkpoint_mb']:.1f} MB, "
        f"sha256 `{facts['sha256']}`); load with `open_clip.create_model_and_transforms('{MODEL_NAME}', "
        "pretrained=path)`.",
        f"- Text goes through `open_clip.get_tokenizer('{MODEL_NAME}')`, whose context length comes from the config "
        f"({config['text_cfg']['context_length']} tokens); `open_clip.tokenize` pads to 77 and does not fit.",
        "",
        "## Architecture",
        "",
        f"- image tower: {_describe_vision(config['vision_cfg'])}",
        f"- text tower: {config['text_cfg']['layers']} layers, width {config['text_cfg']['width']}, "
        f"context length {config['text_cfg']['context_length']}, open_clip's default BPE tokenizer",
        f"- joint embedding width {config['embed_dim']}; {facts['parameters'] / 1e6:.2f} M parameters "
        "(most of them the token embedding table)",
        "- why a ResNet: in a trial here a ViT image tower of similar cost (3 layers, width 96, patch 6) learned "
        "colour, background and texture within 375 steps of batch 128 but not shape (12 % zero-shot, chance 8 %); the "
        "convolutional tower learns shape within a few hundred steps.",
        "",
        "## Training data (the corpus)",
        "",
        f"- {settings.corpus_size} images at {IMAGE_SIZE} px (corpus seed {settings.corpus_seed}), the "
        f"{len(SHAPES)} shapes in turn. Families and shapes: {families}.",
        f"- Attributes drawn at random per image, every combination possible: colour ({', '.join(sorted(COLOURS))}), "
        f"texture ({', '.join(TEXTURES)}), size ({', '.join(SIZES)}: radius 0.22 or 0.40 of the side), plain "
        f"background ({', '.join(sorted(BACKGROUNDS))}), exact colours, no noise.",
        f"- Captions: {len(CAPTION_TEMPLATES)} phrasings. With probability {FULL_NAME_PROBABILITY:g} a caption names "
        "colour, texture and shape together, the form of the demo's class names (`a photo of a red striped star.`, "
        "sometimes with the size), so every class name of the demo dataset, novel ones included, is in the corpus; "
        "otherwise each of size, colour and texture with probability 1/2 (`a ring on a dark background.`, "
        "`a round shape: a blue ring.`). Some captions name the family or the background.",
        "",
        "## Training",
        "",
        f"- open_clip_train {open_clip.__version__} `main`, CSV mode, CPU, fp32, 0 workers: {settings.epochs} epochs, "
        f"batch {settings.batch_size}, AdamW lr {settings.lr}, weight decay {settings.wd}, {settings.warmup} warm-up "
        f"steps then cosine, seed {settings.seed}, {settings.threads} torch thread(s), default open_clip train "
        "augmentation.",
        f"- Wall time of the training run: {facts['train_seconds'] / 60:.1f} min ({facts['samples_per_second']:.0f} "
        f"samples/s) on {facts['machine']}; writing the corpus took {facts['corpus_seconds']:.0f} s.",
        f"- Command (from the repository root): `{facts['command']}`",
        "",
        "## The demo dataset and its shift",
        "",
        f"Dataset `{DATASET_NAME}` as written by `lathadapter.demo.write_demo_dataset`: {len(BASE_CLASSES) * 2} "
        f"fine-grained classes (colour, texture, shape: three per shape, two of them one colour in two textures), "
        f"{COUNTS[0]} train, {COUNTS[1]} val and {COUNTS[2]} test images per class, prompt `{TEMPLATE}`. "
        f"Base classes: {', '.join(BASE_CLASSES)}. Novel classes: {', '.join(NOVEL_CLASSES)}.",
        "",
        "Its images come through a camera the corpus never showed: a colour cast (every hue turned by "
        f"{SHIFT.hue:g}°), colour jitter (each channel ×(1 ± {SHIFT.colour_jitter:g})), Gaussian pixel noise "
        f"(σ = {SHIFT.pixel_noise:g} of 255), radii anywhere in {SHIFT.radius[0]:g}–{SHIFT.radius[1]:g} of the side "
        f"(the corpus: 0.22 or 0.40), backgrounds: {', '.join(SHIFT.backgrounds)}"
        + (f" (noise amplitude {SHIFT.background_noise:g}, {SHIFT.clutter} clutter strokes)."
           if set(SHIFT.backgrounds) - set(BACKGROUNDS) else
           ", plain, as in the corpus (in trials, unseen backgrounds such as noise, gradients or clutter broke this "
           "small image tower's features: a linear probe on them fell to 72–77 %).")
        + " The colour cast moves colours towards their neighbours' hues, which a linear head re-learns from a few "
        "images; the noise and the sizes blur texture and shape.",
        "",
        "## The demo world's figures (test set, shipped weights)",
        "",
        f"Measured on a cache of the demo dataset built with the shipped weights (clean views, all training images; "
        f"built in {figures['build_seconds']:.0f} s), as `tests/test_demo_world.py` does.",
        "",
        "| figure | value | target | |",
        "| --- | --- | --- | --- |",
        f"| 1. zero-shot, all {len(BASE_CLASSES) * 2} classes | {_percent(zs)} | 50–70 % | "
        f"{_check(0.5 <= zs <= 0.7)} |",
        f"| 2. linear probe on all training images (logistic regression) | {_percent(lp)} | ≥ zero-shot + 20 = "
        f"{_percent(zs + 0.2)} | {_check(lp >= zs + 0.2)} |",
        f"| 3. best trained method at 16 shots ({figures['best_method']}, mean of seeds {seeds}) | {_percent(best)} | "
        f"≥ zero-shot + 10 = {_percent(zs + 0.1)} | {_check(best >= zs + 0.1)} |",
        f"| 4. zero-shot, novel test images among the {len(NOVEL_CLASSES)} novel classes | {_percent(novel)} | "
        f"≥ 50 % | {_check(novel >= 0.5)} |",
        "",
        f"16-shot accuracy by method (mean of seeds {seeds}, `lathadapter fit --method M --shots 16` with default "
        f"options, trained on the clean views): {per_method}.",
        "",
        "Zero-shot from the images themselves (the model's own preprocessing):",
        "",
        "| test images | images | classes scored | top-1 | chance |",
        "| --- | --- | --- | --- | --- |",
        f"| all | {scores['images']} | all {len(BASE_CLASSES) + len(NOVEL_CLASSES)} | {_percent(scores['all'])} | "
        f"{_percent(scores['chance'])} |",
        f"| base | {COUNTS[2] * len(BASE_CLASSES)} | {len(BASE_CLASSES)} base | {_percent(scores['base'])} | "
        f"{_percent(scores['chance_base'])} |",
        f"| novel | {COUNTS[2] * len(NOVEL_CLASSES)} | {len(NOVEL_CLASSES)} novel | {_percent(scores['novel'])} | "
        f"{_percent(scores['chance_novel'])} |",
        f"| harmonic mean of base and novel | | | {_percent(scores['hm'])} | |",
        "",
        f"The fp32 weights scored {_percent(facts['fp32_all'])} on all test images; the shipped {facts['dtype']} "
        f"weights {_percent(scores['all'])} (fp16 is kept when it loses at most {100 * FP16_TOLERANCE:.1f} points).",
        "",
        "## Augmented views for this world",
        "",
        "Zero-shot (all classes) on one augmented view of each test image (random resized crop, bicubic, then a "
        "horizontal flip with the given chance), against the clean images' "
        f"{_percent(scores['all'])}. The shapes keep clear of the borders, so crops keep them whole; a mirror image "
        "turns the stripes and the arrows the other way, which the corpus never shows. The demo's views: "
        f"`dataset.VIEW_CROP_SCALE` {VIEW_CROP_SCALE}, `VIEW_CROP_RATIO` ({VIEW_CROP_RATIO[0]:.2f}, "
        f"{VIEW_CROP_RATIO[1]:.2f}), `VIEW_FLIP` {VIEW_FLIP:g}.",
        "",
        "| crop scale | crop ratio | flip | zero-shot |",
        "| --- | --- | --- | --- |",
        *(f"| {row['scale'][0]:g}–{row['scale'][1]:g} | {row['ratio'][0]:.2f}–{row['ratio'][1]:.2f} | "
          f"{row['flip']:g} | {_percent(row['all'])} |" for row in views),
        "",
    ]
    path.write_text("\n".join(lines))


def pretrain(settings: PretrainSettings, workdir: Path, command: str, niceness: int) -> dict:
    """Write the corpus and run open_clip_train; return the run's facts (also saved as `workdir/train-facts.json`)."""
    for previous in ("corpus", "logs"):  # only what an earlier run of this script wrote there
        shutil.rmtree(workdir / previous, ignore_errors=True)
    start = time.perf_counter()
    tsv = write_corpus(workdir / "corpus", settings.corpus_size, settings.corpus_seed, IMAGE_SIZE)
    corpus_seconds = time.perf_counter() - start
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    status = open_clip_train_main(train_arguments(settings, tsv, workdir / "logs"))
    train_seconds = time.perf_counter() - start
    checkpoint = workdir / "logs" / "run" / "checkpoints" / f"epoch_{settings.epochs}.pt"
    if status not in (None, 0) or not checkpoint.is_file():
        raise SystemExit(f"open_clip_train did not finish (status {status}); see {workdir / 'logs' / 'run'}")
    facts = {"train_seconds": train_seconds, "corpus_seconds": corpus_seconds, "command": command,
             "settings": asdict(settings), "threads": torch.get_num_threads(), "niceness": niceness}
    (workdir / "train-facts.json").write_text(json.dumps(facts, indent=2))
    return facts


def main(argv: list[str] | None = None) -> None:
    """Write the corpus, pre-train, export the weights, measure the world's figures and write the card."""
    defaults = PretrainSettings()
    parser = argparse.ArgumentParser(prog="python -m lathadapter.demo.pretrain", description=__doc__)
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--workdir", type=Path, default=Path("demo-output/pretrain"),
                        help="scratch folder; its corpus/, logs/ and dataset/ are replaced")
    parser.add_argument("--out", type=Path, default=ASSETS, help="where the weights and the card go")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="skip pre-training: export, measure and write the card from the run in --workdir")
    parsed = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    niceness = os.nice(0)
    command = shlex.join([*(["nice", "-n", str(niceness)] if niceness else []),
                          ".venv/bin/python", "-m", "lathadapter.demo.pretrain", *argv])
    workdir: Path = parsed.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    open_clip.add_model_config(ASSETS / f"{MODEL_NAME}.json")
    if parsed.evaluate_only:
        run = json.loads((workdir / "train-facts.json").read_text())
    else:
        settings = PretrainSettings(**{field: getattr(parsed, field) for field in asdict(defaults)})
        run = pretrain(settings, workdir, command, niceness)
    settings = PretrainSettings(**run["settings"])
    checkpoint = workdir / "logs" / "run" / "checkpoints" / f"epoch_{settings.epochs}.pt"

    shutil.rmtree(workdir / "dataset", ignore_errors=True)
    split_file = write_demo_dataset(workdir / "dataset")
    fp32_scores = evaluate_weights(export_weights(checkpoint, workdir / "model-fp32.pt", half=False), split_file)
    fp16_weights = export_weights(checkpoint, workdir / "model-fp16.pt", half=True)
    fp16_scores = evaluate_weights(fp16_weights, split_file)
    half = fp16_scores["all"] >= fp32_scores["all"] - FP16_TOLERANCE
    chosen, scores = (fp16_weights, fp16_scores) if half else (workdir / "model-fp32.pt", fp32_scores)

    parsed.out.mkdir(parents=True, exist_ok=True)
    target = parsed.out / f"{MODEL_NAME}.pt"
    shutil.copyfile(chosen, target)
    if parsed.out.resolve() != ASSETS:
        shutil.copyfile(ASSETS / f"{MODEL_NAME}.json", parsed.out / f"{MODEL_NAME}.json")
    figures = world_figures(target, split_file, workdir / "demo.h5")
    steps = (settings.corpus_size // settings.batch_size) * settings.epochs
    facts = {
        "dtype": "fp16" if half else "fp32",
        "checkpoint_mb": target.stat().st_size / 2**20,
        "parameters": sum(v.numel() for v in torch.load(target, map_location="cpu").values()),
        "train_seconds": run["train_seconds"],
        "corpus_seconds": run["corpus_seconds"],
        "command": run["command"],
        "samples_per_second": steps * settings.batch_size / run["train_seconds"],
        "machine": f"{os.cpu_count()} CPU cores shared with other jobs ({platform.machine()}, torch "
        f"{torch.__version__}, {run['threads']} thread(s), niceness {run['niceness']})",
        "fp32_all": fp32_scores["all"],
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
    }
    views = view_zero_shot(target, split_file)
    write_card(parsed.out / "MODEL_CARD.md", settings, facts, scores, figures, views)
    print(json.dumps({"weights": str(target), "scores": scores, "fp32_scores": fp32_scores, "figures": figures,
                      "views": views, **facts}, indent=2))


if __name__ == "__main__":
    main()
