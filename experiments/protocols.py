"""The field's four evaluation protocols (docs/data.md), each a grid with fixed axes over caches the user has built.

1. few-shot: all classes, shots 1/2/4/8/16, per dataset cache.
2. base-to-novel: 16 shots on the base half, base / novel / HM per dataset cache.
3. cross-dataset: fit on a source cache (16 shots, all classes), score each target's test set against the target's
   own class names; methods tied to the source classes report not applicable.
4. domain generalisation: fit on ImageNet, score ImageNet variants against the source classes their wnids (or
   names) map to, so the 200-class -A and -R sets use the matching 200 columns.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from lathadapter.adapter.evaluate import evaluate, evaluate_mapped
from lathadapter.cache.store import CacheError, CacheReader, FewShotData
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch
from lathadapter.experiments.run import RunOutcome
from lathadapter.experiments.spec import GridRun, GridSpec

PROTOCOLS = ("few-shot", "base-to-novel", "cross-dataset", "domain")
ALL_SHOTS = [1, 2, 4, 8, 16]


def _name(text: str) -> str:
    return text.replace("_", " ").strip().lower()


def class_mapping(source: FewShotData, target: FewShotData, target_path: str) -> list[int]:
    """For each target class, the index of the same source class: by wnid when both caches have wnids, else by name."""
    if source.wnids and target.wnids:
        keys_source, keys_target, by = source.wnids, target.wnids, "wnid"
    else:
        keys_source = [_name(n) for n in source.class_names]
        keys_target, by = [_name(n) for n in target.class_names], "name"
    lookup = {key: i for i, key in enumerate(keys_source)}
    missing = [key for key in keys_target if key not in lookup]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CacheError(f"{target_path}: {len(missing)} classes have no source class with the same {by}: {shown}")
    return [lookup[key] for key in keys_target]


def targets_salt(paths: list[str], mapped: bool) -> str:
    """What the target caches add to each run key (a hash of their fingerprints, and whether classes are mapped): a
    changed target set is a different run. Reads each cache's fingerprint only."""
    if not paths:
        raise CacheError("the protocol needs at least one --target cache")
    fingerprints = []
    for path in paths:
        with CacheReader(path) as reader:
            fingerprints.append(reader.fingerprint)
    return "|" + hashlib.sha256("|".join(fingerprints).encode()).hexdigest()[:12] + ("m" if mapped else "")


class Targets:
    """Target caches' test sets, loaded once where runs train, and the evaluation of a trained method on each."""

    def __init__(self, paths: list[str], device: str, mapped: bool) -> None:
        self.mapped = mapped
        self.sets: dict[str, FewShotData] = {}
        self.names: dict[str, str] = {}
        for path in paths:
            with CacheReader(path) as reader:
                self.sets[path] = reader.load_test(device=device)
                self.names[path] = str(reader.info().fields.get("dataset", Path(path).stem))

    def __call__(self, grid_run: GridRun, outcome: RunOutcome, source: FewShotData) -> dict[str, Any]:
        targets: dict[str, float | None] = {}
        for path, target in self.sets.items():
            if self.mapped:
                columns = class_mapping(source, target, path)
                targets[self.names[path]] = evaluate_mapped(outcome.method, target.test_features,
                                                            target.test_labels, columns)
            else:
                targets[self.names[path]] = evaluate(outcome.method, target.test_features, target.test_labels,
                                                     target.text_features)
        return {"targets": {"source": outcome.metrics["accuracy"]["all"], **targets}}


def protocol_spec(protocol: str, caches: list[str], methods: list[str], seeds: list[int],
                  options: dict[str, list[str]], text: str = "coop", shots: list[int] | None = None,
                  tune: dict[str, list[str]] | None = None, tune_preset: str | None = None,
                  train_views: str = "augmented", tune_score: str = "auto", tune_set: str = "fewshot") -> GridSpec:
    """The grid axes a protocol fixes; `tune`, `tune_preset` and `tune_score` tune options as a grid does
    (`GridSpec`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if not caches:
        raise CacheError(f"protocol {protocol} needs at least one cache")
    tuning = {"tune": dict(tune or {}), "tune_preset": tune_preset, "train_views": [train_views],
              "tune_score": tune_score, "tune_set": tune_set}
    if protocol == "few-shot":
        return GridSpec(caches, methods, shots or ALL_SHOTS, seeds, ["all"], [text], ["last"], options, **tuning)
    if protocol == "base-to-novel":
        return GridSpec(caches, methods, shots or [16], seeds, ["base"], [text], ["last"], options, **tuning)
    if len(caches) != 1:
        raise CacheError(f"protocol {protocol} trains on one source cache; got {len(caches)}")
    return GridSpec(caches, methods, shots or [16], seeds, ["all"], [text], ["last"], options, **tuning)


def run_protocol(protocol: str, caches: list[str], out: Path, methods: list[str], seeds: list[int],
                 targets: list[str] | None = None, options: dict[str, list[str]] | None = None,
                 text: str = "coop", shots: list[int] | None = None, execution: Execution | None = None,
                 progress: bool = True, tune: dict[str, list[str]] | None = None,
                 tune_preset: str | None = None, train_views: str = "augmented", tune_score: str = "auto",
                 tune_set: str = "fewshot") -> dict[str, Any]:
    """Run (or resume) one protocol into `out` under `execution` (`launch.launch`, as a grid); its results table is
    `out/results.csv`. Returns the counts of runs done, skipped (finished before) and left to another process
    (elsewhere), as a grid does. With `tune` or `tune_preset`, the tuned options are chosen per cell on the few-shot
    val set by `tune_score` (auto: the HM of a pseudo-base/pseudo-novel split of the base classes for base-to-novel,
    val accuracy otherwise) over the val images of `tune_set` (`run.TUNE_SETS`), a preset's grid extended past its
    edges (`launch.with_extensions`). Cross-dataset and domain runs are scored on the `targets` too, which every
    process that trains loads itself."""
    spec = protocol_spec(protocol, caches, methods, seeds, options or {}, text, shots, tune, tune_preset, train_views,
                         tune_score, tune_set)
    salt, factory = "", None
    if protocol in ("cross-dataset", "domain"):
        mapped = protocol == "domain"
        salt = targets_salt(list(targets or []), mapped)
        factory = functools.partial(Targets, list(targets or []), mapped=mapped)
    summary = launch(spec, out, execution, progress=progress, extra_factory=factory, key_salt=salt)
    return {"protocol": protocol, **{k: v for k, v in summary.items() if k != "seconds"}}
