"""Pre-train the bundled tiny CLIP on the synthetic captioned corpus with open_clip_train, on the CPU.

One command reproduces the committed assets (`demo/assets/`): `python -m lathadapter.demo.pretrain`.
It writes the corpus, registers the model config, runs open_clip_train's `main`, keeps only the final model weights
(fp16 when that keeps zero-shot accuracy), evaluates zero-shot on the demo test set and writes the model card.
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

from lathadapter.demo.corpus import CAPTION_TEMPLATES, write_corpus
from lathadapter.demo.dataset import (
    BASE_CLASSES,
    COUNTS,
    DATASET_NAME,
    HELD_OUT_COLOURS,
    IMAGE_SIZE,
    NOVEL_CLASSES,
    TEMPLATE,
    novel_test_subsets,
    write_demo_dataset,
)
from lathadapter.demo.evaluate import zero_shot_accuracy
from lathadapter.demo.model import ASSETS, MODEL_NAME
from lathadapter.demo.synthetic import BACKGROUNDS, COLOURS, FAMILIES, SIZES, TEXTURES

FP16_TOLERANCE = 0.005  # largest drop of zero-shot accuracy (all classes) accepted for the fp16 checkpoint


@dataclass(frozen=True)
class PretrainSettings:
    """Corpus and optimisation settings of one pre-training run; the defaults made the committed checkpoint."""

    corpus_size: int = 20000
    corpus_seed: int = 0
    epochs: int = 4
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
    tokenizer, subsets = open_clip.get_tokenizer(MODEL_NAME), novel_test_subsets(split_file)
    return zero_shot_accuracy(model, preprocess, tokenizer, split_file, TEMPLATE, subsets=subsets)


def _describe_vision(vision: dict) -> str:
    """One line on the image tower of an open_clip config: a ResNet when `layers` is a list, else a ViT."""
    if isinstance(vision["layers"], list):
        return (f"open_clip's CLIP ResNet (ModifiedResNet: 3-conv stem, bottleneck stages {vision['layers']}, "
                f"attention pooling), width {vision['width']}, {vision['image_size']} px input")
    return (f"ViT, {vision['layers']} layers, width {vision['width']}, patch {vision['patch_size']}, "
            f"{vision['image_size']} px input")


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def write_card(path: Path, settings: PretrainSettings, facts: dict, scores: dict, command: str) -> None:
    """The model card: what the model is, what it was trained on and how, and its zero-shot accuracy."""
    config = json.loads((ASSETS / f"{MODEL_NAME}.json").read_text())
    held_out = "; ".join(f"{shape}: {', '.join(colours)}" for shape, colours in HELD_OUT_COLOURS.items())
    families = "; ".join(f"{family}: {', '.join(shapes)}" for family, shapes in FAMILIES.items())
    sizes, novel = facts["images"], f"{len(NOVEL_CLASSES)} novel"
    lines = [
        f"# {MODEL_NAME}",
        "",
        "A tiny CLIP (open_clip image and text towers) trained from scratch, contrastively, on a "
        "synthetic captioned corpus of rendered shapes. It exists so that the demo has a model whose image and text "
        "towers really are aligned; it knows nothing outside this synthetic world.",
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
        "## Training data",
        "",
        f"- {settings.corpus_size} images at {IMAGE_SIZE} px (corpus seed {settings.corpus_seed}), the 12 shapes in "
        f"turn. Families and shapes: {families}.",
        f"- Attributes drawn at random per image: colour ({', '.join(sorted(COLOURS))}), texture "
        f"({', '.join(TEXTURES)}), size ({', '.join(SIZES)}), background ({', '.join(sorted(BACKGROUNDS))}).",
        f"- Held out of the corpus: the novel classes of the demo dataset never appear in these colours ({held_out}). "
        "Their names do appear, so they are zero-shot recognisable; these looks of them are new to the model.",
        f"- Captions: {len(CAPTION_TEMPLATES)} phrasings (for example `a photo of a small red striped circle.`, "
        "`a ring on a dark background.`, `a round shape: a blue ring.`), always naming the shape, each of size, "
        "colour and texture with probability 1/2, sometimes the family or the background.",
        "",
        "## Training",
        "",
        f"- open_clip_train {open_clip.__version__} `main`, CSV mode, CPU, fp32, 0 workers: {settings.epochs} epochs, "
        f"batch {settings.batch_size}, AdamW lr {settings.lr}, weight decay {settings.wd}, {settings.warmup} warm-up "
        f"steps then cosine, seed {settings.seed}, {settings.threads} torch thread(s), default open_clip train "
        "augmentation.",
        f"- Wall time of the training run: {facts['train_seconds'] / 60:.1f} min ({facts['samples_per_second']:.0f} "
        f"samples/s) on {facts['machine']}; writing the corpus took {facts['corpus_seconds']:.0f} s.",
        f"- Command (from the repository root): `{command}`",
        "",
        "## Zero-shot accuracy on the demo test set",
        "",
        f"Dataset `{DATASET_NAME}` as written by `lathadapter.demo.write_demo_dataset` ({COUNTS[2]} test images per "
        f"class, {scores['images']} in all, every attribute combination, the held-out ones included), prompt "
        f"`{TEMPLATE}`. Base classes: {', '.join(BASE_CLASSES)}. Novel classes: {', '.join(NOVEL_CLASSES)}.",
        "",
        "| test images | images | classes scored | top-1 | chance |",
        "| --- | --- | --- | --- | --- |",
        f"| all | {scores['images']} | all {len(BASE_CLASSES) + len(NOVEL_CLASSES)} | {_percent(scores['all'])} | "
        f"{_percent(scores['chance'])} |",
        f"| base | {sizes['base']} | {len(BASE_CLASSES)} base | {_percent(scores['base'])} | "
        f"{_percent(scores['chance_base'])} |",
        f"| novel | {sizes['novel']} | {novel} | {_percent(scores['novel'])} | "
        f"{_percent(scores['chance_novel'])} |",
        f"| harmonic mean of base and novel | | | {_percent(scores['hm'])} | |",
        f"| novel, in colours the corpus showed for their class | {sizes['novel_corpus_colours']} | {novel} | "
        f"{_percent(scores['novel_corpus_colours'])} | {_percent(scores['chance_novel'])} |",
        f"| novel, in colours held out of the corpus | {sizes['novel_held_out_colours']} | {novel} | "
        f"{_percent(scores['novel_held_out_colours'])} | {_percent(scores['chance_novel'])} |",
        "",
        "The last two rows show what base-to-novel asks of this model: how well it names novel shapes in the looks "
        "its corpus showed, against colours held out of it. An adapter trained on base classes, which the corpus "
        "showed in every colour, may or may not carry colour invariance over to the novel ones.",
        "",
        f"The fp32 weights scored {_percent(facts['fp32_all'])} on all test images; the shipped {facts['dtype']} "
        f"weights {_percent(scores['all'])} (fp16 is kept when it loses at most {100 * FP16_TOLERANCE:.1f} points).",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """Write the corpus, pre-train, export the weights, evaluate zero-shot and write the card."""
    defaults = PretrainSettings()
    parser = argparse.ArgumentParser(prog="python -m lathadapter.demo.pretrain", description=__doc__)
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--workdir", type=Path, default=Path("demo-output/pretrain"),
                        help="scratch folder; its corpus/, logs/ and dataset/ are replaced")
    parser.add_argument("--out", type=Path, default=ASSETS, help="where the weights and the card go")
    parsed = parser.parse_args(argv)
    settings = PretrainSettings(**{field: getattr(parsed, field) for field in asdict(defaults)})
    argv = sys.argv[1:] if argv is None else argv
    niceness = os.nice(0)
    command = shlex.join([*(["nice", "-n", str(niceness)] if niceness else []),
                          ".venv/bin/python", "-m", "lathadapter.demo.pretrain", *argv])

    workdir: Path = parsed.workdir.resolve()
    for previous in ("corpus", "logs", "dataset"):  # only what an earlier run of this script wrote there
        shutil.rmtree(workdir / previous, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    open_clip.add_model_config(ASSETS / f"{MODEL_NAME}.json")

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
    steps = (settings.corpus_size // settings.batch_size) * settings.epochs
    facts = {
        "dtype": "fp16" if half else "fp32",
        "checkpoint_mb": target.stat().st_size / 2**20,
        "parameters": sum(v.numel() for v in torch.load(target, map_location="cpu").values()),
        "train_seconds": train_seconds,
        "corpus_seconds": corpus_seconds,
        "samples_per_second": steps * settings.batch_size / train_seconds,
        "machine": f"{os.cpu_count()} CPU cores shared with other jobs ({platform.machine()}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), niceness {niceness})",
        "fp32_all": fp32_scores["all"],
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "images": {"base": COUNTS[2] * len(BASE_CLASSES), "novel": COUNTS[2] * len(NOVEL_CLASSES),
                   **{name: len(paths) for name, paths in novel_test_subsets(split_file).items()}},
    }
    write_card(parsed.out / "MODEL_CARD.md", settings, facts, scores, command)
    print(json.dumps({"weights": str(target), "scores": scores, "fp32_scores": fp32_scores, **facts}, indent=2))


if __name__ == "__main__":
    main()
