"""One run: load a few-shot set from a cache, train a method, evaluate it, and write the run directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lathadapter import __version__
from lathadapter.adapter.evaluate import evaluate, harmonic_mean
from lathadapter.adapter.methods.base import Method
from lathadapter.adapter.registry import create_method, make_options
from lathadapter.adapter.trainer import SELECTIONS, TrainResult, train
from lathadapter.cache.sampling import base_novel_classes
from lathadapter.cache.store import CacheReader, FewShotData, resolve_cache

CLASS_PROTOCOLS = ("all", "base")
TEXT_FEATURES = ("coop", "ensemble")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result, given the cache."""

    method: str = "lathadapter"
    shots: int = 4
    seed: int = 1
    classes: str = "all"
    text: str = "coop"
    select: str = "last"
    options: tuple[tuple[str, Any], ...] = ()  # method option overrides, sorted by name

    def validate(self) -> None:
        for name, value, valid in (("classes", self.classes, CLASS_PROTOCOLS), ("text", self.text, TEXT_FEATURES),
                                   ("select", self.select, SELECTIONS)):
            if value not in valid:
                raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")
        make_options(self.method, dict(self.options))  # unknown methods and options fail here, before any work

    def resolved_options(self) -> dict[str, Any]:
        """Every option of the method, defaults included."""
        return dataclasses.asdict(make_options(self.method, dict(self.options)))

    def key(self, fingerprint: str) -> str:
        """A hash of the full configuration and the cache fingerprint: the run's identity in grids."""
        payload = {**dataclasses.asdict(self), "options": self.resolved_options(), "fingerprint": fingerprint}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class RunOutcome:
    """A trained method and its metrics."""

    method: Method
    metrics: dict[str, Any]
    train: TrainResult


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def split_classes(data: FewShotData, classes: str) -> tuple[FewShotData, FewShotData | None]:
    """The training view of `data` and, for base-to-novel, the novel view (both relabelled from 0)."""
    if classes == "all":
        return data, None
    base, novel = base_novel_classes(range(data.num_classes))
    return data.select_classes(base), data.select_classes(novel)


def run(config: RunConfig, data: FewShotData) -> RunOutcome:
    """Train and evaluate one configuration on an already loaded few-shot set (the grid calls this directly)."""
    config.validate()
    train_data, novel_data = split_classes(data, config.classes)
    torch.manual_seed(config.seed)
    method = create_method(config.method, train_data, **dict(config.options))
    result = train(method, train_data, seed=config.seed, select=config.select)
    start = time.perf_counter()
    if novel_data is None:
        accuracy: dict[str, float | None] = {"all": evaluate(method, train_data.test_features, train_data.test_labels)}
        hm = None
    else:
        base = evaluate(method, train_data.test_features, train_data.test_labels)
        novel = evaluate(method, novel_data.test_features, novel_data.test_labels, novel_data.text_features)
        accuracy = {"base": base, "novel": novel}
        hm = harmonic_mean(base, novel)
    metrics = {
        "accuracy": accuracy,
        "hm": hm,
        "train_seconds": result.seconds,
        "eval_seconds": time.perf_counter() - start,
        "trained_parameters": sum(p.numel() for p in method.parameters() if p.requires_grad) if method.trains else 0,
        "steps": result.steps,
        "epochs": result.epochs,
        "selected_epoch": result.selected_epoch,
        "val_accuracy": result.val_accuracy,
        "chosen": result.chosen,
        "history": result.history,  # last-batch loss and its parts, per epoch
    }
    return RunOutcome(method, metrics, result)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def save_run(folder: Path, config: RunConfig, outcome: RunOutcome, cache: Path, fingerprint: str,
             fingerprint_fields: dict[str, Any], device: str, key: str | None = None) -> None:
    """Write `config.json`, `metrics.json` and `weights.pt` into `folder` (each file atomically, metrics last)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", {
        "key": key or config.key(fingerprint),
        **{k: v for k, v in dataclasses.asdict(config).items() if k != "options"},
        "options": config.resolved_options(),
        "overrides": dict(config.options),
        "device": device,
        "cache": str(cache),
        "cache_fingerprint": fingerprint,
        "cache_fields": fingerprint_fields,
        "lathadapter_version": __version__,
        "torch_version": torch.__version__,
    })
    weights = folder / "weights.pt"
    torch.save({k: v.detach().cpu() for k, v in outcome.method.state_dict().items()}, weights.with_suffix(".pt.tmp"))
    os.replace(weights.with_suffix(".pt.tmp"), weights)
    _write_json(folder / "metrics.json", outcome.metrics)


def fit(cache_path: str | Path | None = None, method: str = "lathadapter", shots: int = 4, seed: int = 1, *,
        classes: str = "all", text: str = "coop", select: str = "last", device: str | None = None,
        out: str | Path | None = "runs", **options: Any) -> dict[str, Any]:
    """Train `method` on the (`shots`, `seed`) few-shot set of a cache, evaluate it, and return its metrics.

    `options` are the method's options (see `lathadapter.adapter.registry.option_names`). With `out`, the run is
    written to `out/<dataset>-<method>-<classes>-<shots>shot-seed<seed>-<key>/`; the metrics gain `run_dir`.
    """
    config = RunConfig(method, shots, seed, classes, text, select, tuple(sorted(options.items())))
    config.validate()
    device = device or default_device()
    cache = resolve_cache(cache_path)
    with CacheReader(cache) as reader:
        info = reader.info()
        data = reader.load(shots, seed, text=text, device=device)
    outcome = run(config, data)
    metrics = {"method": method, "dataset": info.fields.get("dataset", cache.stem), "shots": shots, "seed": seed,
               "classes": classes, **outcome.metrics}
    if out is not None:
        name = f"{metrics['dataset']}-{method}-{classes}-{shots}shot-seed{seed}-{config.key(info.fingerprint)}"
        folder = Path(out) / name
        outcome.metrics = metrics
        save_run(folder, config, outcome, cache, info.fingerprint, info.fields, device)
        metrics["run_dir"] = str(folder)
    return metrics
