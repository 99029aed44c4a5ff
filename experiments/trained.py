"""A finished run directory loaded back (`load`): its configuration, its trained method on the cache it trained on
(and a transfer run's target caches, scored as its protocol scored them), and what a researcher asks of it after the
fact: logits, predictions, per-class accuracy, the confusion matrix."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lathadapter.adapter.catalog import build_method, make_options, method_class, method_names
from lathadapter.adapter.evaluate import CHUNK, Scores, evaluate
from lathadapter.adapter.methods.base import Method, NotApplicable
from lathadapter.adapter.options import OptionError, StateError, before_values
from lathadapter.adapter.temperature import TemperatureScaled, temperature_scaled
from lathadapter.cache.store import CacheReader, FewShotData
from lathadapter.experiments.machine import resolve_device
from lathadapter.experiments.run import GLOBAL_GENERATOR, RunConfig, check_replaceable, split_classes, write_atomic
from lathadapter.experiments.table import DAMAGED, malformed_run

if TYPE_CHECKING:  # imported in `load_targets` alone: the grid driver (`launch`) comes with it, 75-90 ms of import
    from lathadapter.experiments.protocols import Targets

RUN_FILES = ("config.json", "metrics.json", "weights.pt")
PLOTS_WRITTEN = ".inspect_plots.json"  # in an `inspect --plots` folder: the plots the last inspect drew there


@dataclass(frozen=True)
class ClassAccuracy:
    """One class's test images: how many, how many the run classified right, and the accuracy (%; None: no image)."""

    label: int
    name: str
    correct: int
    count: int

    @property
    def accuracy(self) -> float | None:
        return 100.0 * self.correct / self.count if self.count else None


@dataclass(frozen=True)
class TrainedRun:
    """A trained run as it was scored: its configuration, its method (weights loaded, eval mode), the training view
    of its few-shot set (`data`: the base classes, relabelled from 0, for base-to-novel), the novel view (`novel`,
    base-to-novel only), its `metrics.json` and `config.json` as read, and a transfer run's target caches given to
    `load` (`transfer`; None: none). Features are the cache's (unit vectors)."""

    folder: Path
    config: RunConfig
    method: Method
    data: FewShotData
    novel: FewShotData | None
    metrics: dict[str, Any]
    record: dict[str, Any]
    transfer: Targets | None = None

    @property
    def class_names(self) -> list[str]:
        """The classes the run was trained on, in label order."""
        return self.data.class_names

    @property
    def parts(self) -> tuple[str, ...]:
        """The class sets the run was scored on, as `metrics.json`'s `accuracy` names them: `all`, or `base` and
        `novel`."""
        return ("all",) if self.novel is None else ("base", "novel")

    @property
    def targets(self) -> tuple[str, ...]:
        """The target datasets given to `load` (a transfer run's), by dataset name as `metrics.json`'s `targets`
        names them, in the order given."""
        return () if self.transfer is None else tuple(self.transfer.names.values())

    @torch.no_grad()
    def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None,
               columns: list[int] | None = None) -> torch.Tensor:
        """The method's scores [N, C] of `features` [N, D] against its training classes, against `text_features`
        [C', D] (novel or cross-dataset classes; `NotApplicable` for a method that cannot score them), or over the
        training classes `columns` alone (a domain target's, `Method.logits_over`), in the chunks evaluation takes."""
        device = self.data.text_features.device
        features = torch.as_tensor(features, device=device)
        dim = self.data.text_features.shape[1]
        if features.dim() != 2 or features.shape[1] != dim:
            raise OptionError(f"features of shape {list(features.shape)}: expected [N, {dim}], N unit feature vectors "
                              "of the run's cache")
        text_features = None if text_features is None else text_features.to(device)
        index = None if columns is None else torch.as_tensor(columns, device=device)
        chunks = [self.method.logits(features[start:start + CHUNK], text_features) if index is None
                  else self.method.logits_over(features[start:start + CHUNK], index)
                  for start in range(0, max(len(features), 1), CHUNK)]  # no row: one empty chunk, [0, C]
        return torch.cat(chunks)

    def predict(self, features: torch.Tensor, text_features: torch.Tensor | None = None,
                columns: list[int] | None = None) -> torch.Tensor:
        """The predicted label of each row of `features` (the argmax of `logits`)."""
        return self.logits(features, text_features, columns).argmax(dim=-1)

    def test_set(self, part: str | None = None, target: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, FewShotData]:
        """The test features and labels of class set `part` (one of `parts`; default the first), or of the loaded
        target dataset `target` (one of `targets`), and its view."""
        if target is not None:
            return self._target(target, part)
        part = part or self.parts[0]
        if part not in self.parts:
            raise OptionError(f"class set {part!r}: run {self.folder.name} was scored on {', '.join(self.parts)}")
        view = self.novel if part == "novel" else self.data
        assert view is not None
        return view.test_features, view.test_labels, view

    def _target(self, target: str, part: str | None) -> tuple[torch.Tensor, torch.Tensor, FewShotData]:
        """`test_set` of a loaded target: its test set with its classes' text features of the run's `--text`."""
        if part is not None:
            raise OptionError(f"class set {part!r} and target {target!r}: give one (a target is scored on its classes)")
        if target not in self.targets:
            loaded = ", ".join(self.targets) or "none (load(..., targets=[PATH]); inspect --target PATH)"
            raise OptionError(f"target {target!r}: the targets loaded for run {self.folder.name} are {loaded}")
        assert self.transfer is not None
        view = self.transfer.target(self._target_path(target), self.config.text)
        return view.test_features, view.test_labels, view

    def _target_path(self, target: str) -> str:
        assert self.transfer is not None
        return next(path for path, name in self.transfer.names.items() if name == target)

    def against(self, part: str | None = None, target: str | None = None
                ) -> tuple[torch.Tensor | None, list[int] | None]:
        """What the test images of `part` or `target` are scored against, as `logits`' `text_features` and `columns`:
        the training classes (None, None), the novel classes' or a cross-dataset target's text features, or the source
        classes a domain target's classes map to (`protocols.Targets.columns`)."""
        view = self.test_set(part, target)[2]
        if target is not None:
            assert self.transfer is not None
            columns = self.transfer.columns(self._target_path(target), self.data, self.config.text,
                                            self.record["cache"])
            return (view.text_features if columns is None else None), columns
        return (view.text_features if view is self.novel else None), None

    def confusion(self, part: str | None = None, target: str | None = None) -> torch.Tensor:
        """The confusion matrix [C, C] (int64, on the CPU) of the test images of `part` or `target`: row = true
        class, column = predicted class, over that set's classes in label order."""
        features, labels, view = self.test_set(part, target)
        predicted = self.predict(features, *self.against(part, target)).cpu()
        size = view.num_classes
        return torch.bincount(labels.cpu() * size + predicted, minlength=size * size).reshape(size, size)

    def temperature_scaled(self, part: str | None = None, target: str | None = None) -> TemperatureScaled | None:
        """Test accuracy and ECE of class set `part` or loaded target `target` after post-hoc temperature scaling
        (`adapter.temperature`): T fitted on the run's few-shot val images, of its training classes (the base
        classes for base-to-novel, the source's for a transfer run); None where the method cannot score the set, or
        without val or test images."""
        features, labels, _ = self.test_set(part, target)
        try:
            test_scores = self.logits(features, *self.against(part, target))
        except NotApplicable:
            return None
        return temperature_scaled(self.method, self.logits(self.data.val_features), self.data.val_labels,
                                  test_scores, labels)

    def per_class_accuracy(self, part: str | None = None, target: str | None = None) -> list[ClassAccuracy]:
        """Each class's test accuracy over class set `part` (`parts`; default the first) or loaded target `target`
        (`targets`), in label order: the diagonal of `confusion` over its row sums."""
        return class_accuracies(self.confusion(part, target), self.test_set(part, target)[2].class_names)

    def scores(self, part: str | None = None, target: str | None = None) -> Scores | None:
        """Test accuracy and ECE (%) over `part` as the run was evaluated (`adapter.evaluate`), or over `target` as
        its protocol scored it (`protocols.Targets.scores`); None where the method cannot score those classes or the
        set has no test image."""
        features, labels, view = self.test_set(part, target)
        if len(labels) == 0:
            return None
        if target is not None:
            assert self.transfer is not None
            return self.transfer.scores(self._target_path(target), self.method, self.data, self.config.text,
                                        self.record["cache"])
        return evaluate(self.method, features, labels, view.text_features if view is self.novel else None)

    def accuracy(self, part: str | None = None, target: str | None = None) -> float | None:
        """Test accuracy (%) over `part` or `target` as `metrics.json` records it (correct / images); None where the
        method cannot score those classes (or the set has no test image)."""
        try:
            matrix = self.confusion(part, target)
        except NotApplicable:
            return None
        return 100.0 * int(matrix.trace()) / int(matrix.sum()) if int(matrix.sum()) else None


def load(run_dir: str | Path, cache: str | Path | None = None, device: str | None = None,
         targets: list[str | Path] | None = None) -> TrainedRun:
    """Load a finished run directory (a `fit` run's, or a grid's `runs/<key>/`) back as it was scored: its
    configuration rebuilt from `config.json` (checked against the run's key), its method built on the few-shot set
    it trained on, with the recipe values it trained with and `weights.pt` loaded. `cache`: the cache file, when it
    moved from the path `config.json` records (its fingerprint must be the run's); `device` as `fit`'s; `targets`: a
    transfer run's target caches to score (`load_targets`). A run or cache that cannot be loaded is a `StateError`
    (runtime: `inspect` exits 1, as for a missing or corrupt cache)."""
    check_load_arguments(run_dir, cache, targets)
    folder = Path(run_dir)
    record, metrics = read_run(folder)
    config = run_config(folder, record)
    path = Path(cache) if cache is not None else Path(record["cache"])
    if cache is not None and not path.is_file():
        raise StateError(f"cache {path} (given for run {folder}) is not a file")
    if not path.is_file():
        where = "" if path.is_absolute() else " from this folder (config.json records the path as given, relative to " \
            "the folder the run was trained from)"
        raise StateError(f"run {folder} was trained on cache {path}, which is not a file{where}; pass the moved file "
                         "as cache= (--cache PATH)")
    check_key(folder, record, metrics, config)
    device = resolve_device(device)
    with CacheReader(path) as reader:
        if reader.fingerprint != record["cache_fingerprint"]:
            raise StateError(f"cache {path} (fingerprint {reader.fingerprint}) is not the cache run {folder} was "
                             f"trained on (fingerprint {record['cache_fingerprint']}, {record['cache']})")
        data = reader.load(config.shots, config.seed, text=config.text, device=device)
    transfer = load_targets(folder, metrics, [str(t) for t in targets], device, config.text) if targets else None
    train_data, novel = split_classes(data, config.classes)
    method = trained_method(folder, config, record, metrics, train_data)
    return TrainedRun(folder, config, method, train_data, novel, metrics, record, transfer)


def check_load_arguments(run_dir: Any, cache: Any, targets: Any) -> None:
    """`load`'s paths checked where pathlib would fail without naming them, and `targets` a list: one path given
    alone was read letter by letter (`target cache t ... is not a file`)."""
    for name, value in (("run_dir", run_dir), ("cache", cache)):
        if not isinstance(value, str | os.PathLike) and (name == "run_dir" or value is not None):
            raise OptionError(f"{name}={value!r}: expected a path (str or pathlib.Path)"
                              + (" or None" if name == "cache" else ""))
    if isinstance(targets, str | os.PathLike) or not (targets is None or isinstance(targets, list | tuple) and all(
            isinstance(t, str | os.PathLike) for t in targets)):
        raise OptionError(f"targets={targets!r}: expected a list of target cache paths, e.g. "
                          "targets=['caches/dtd.h5'], or None")


def load_targets(folder: Path, metrics: dict[str, Any], paths: list[str], device: str, text: str) -> Targets:
    """Target caches `paths` of transfer run `folder`, loaded as its protocol loaded them (`protocols.Targets`, the
    run's `text` features), each refused unless its dataset is one `metrics.json`'s `targets` records and its
    fingerprint the one recorded for it (`targets_fingerprint`)."""
    from lathadapter.experiments.protocols import Targets, check_target_names, target_name

    recorded = [name for name in metrics.get("targets") or {} if name != "source"]
    if not recorded:
        raise StateError(f"run {folder} is no transfer run (its metrics.json records no targets); --target scores the "
                         "target caches of a cross-dataset or domain protocol's run")
    fingerprints, caches = metrics.get("targets_fingerprint"), metrics.get("targets_cache") or {}
    if not isinstance(fingerprints, dict):
        raise StateError(f"run {folder} was saved before metrics.json recorded its targets' fingerprints (lathadapter "
                         "before stop 23), so a target cache cannot be checked against it; rerun its protocol into "
                         "a new folder to score targets with --target")
    for path in paths:
        if not Path(path).is_file():
            raise StateError(f"target cache {path} (given for run {folder}) is not a file")
        name = target_name(path)
        if name not in recorded:
            raise StateError(f"target cache {path} is dataset {name!r}; run {folder} was scored on targets "
                             f"{', '.join(recorded)} (metrics.json)")
        with CacheReader(path) as reader:
            fingerprint = reader.fingerprint
        if fingerprint != fingerprints.get(name):
            raise StateError(f"target cache {path} (fingerprint {fingerprint}) is not the {name} cache run {folder} "
                             f"was scored on (fingerprint {fingerprints.get(name)}, {caches.get(name, '?')})")
    check_target_names(paths)
    return Targets(paths, device, mapped=metrics.get("protocol") == "domain", texts=(text,))


def read_run(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`config.json` and `metrics.json` of a finished run that did not diverge; a clear error otherwise."""
    if not folder.is_dir():
        raise StateError(f"run directory {folder} does not exist (or is not a folder)")
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise StateError(f"{folder} is not a finished run directory: it has no {', '.join(missing)} (a run is "
                         f"finished once it holds {', '.join(RUN_FILES)})")
    try:
        record = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as error:
        raise StateError(f"{folder}: unreadable run files ({error})") from None
    not_objects = [f"{name} holds {type(value).__name__}, not an object" for name, value in
             (("config.json", record), ("metrics.json", metrics)) if not isinstance(value, dict)]
    if problem := "; ".join(not_objects) or malformed_run(record, metrics):
        raise StateError(f"{folder}: {problem}{DAMAGED}")
    if metrics.get("diverged") is not None:
        raise StateError(f"run {folder} diverged ({metrics['diverged']}): it has no trained model to load")
    return record, metrics


def run_config(folder: Path, record: dict[str, Any]) -> RunConfig:
    """The run's configuration from `config.json`: every option as recorded (an option added since, declared with
    `before`, at that value, with which the run trained); an option this version does not know is an error, and so is
    a method this process has not registered (one outside the package, until the module registering it is imported)."""
    method = record.get("method")
    if isinstance(method, str) and method not in method_names():
        raise StateError(f"run {folder} is of method {method!r}, which this process has not registered: a method "
                         "outside the package loads once the module that registers it is imported (in Python, before "
                         "`lathadapter.load`; the `lathadapter` command knows only its own methods)")
    try:
        options = {**before_values(method_class(record["method"]).Options), **record["options"]}
        options = {name: value for name, value in options.items() if value is not None}  # None: the recipe's
        fields = {f.name: record[f.name] for f in dataclasses.fields(RunConfig)
                  if f.name in record and f.name != "options"}
        return RunConfig(**fields, options=make_options(record["method"], options))
    except (KeyError, TypeError) as error:
        raise StateError(f"{folder}/config.json lacks {error} or holds a malformed value") from None
    except OptionError as error:
        raise StateError(f"run {folder} was written by lathadapter {record.get('lathadapter_version', '?')}, whose "
                         f"options this version cannot read: {error}") from None


def salted(metrics: dict[str, Any]) -> bool:
    """Whether the grid salted the run's key beyond its configuration and cache (a tuning candidate's key hashes its
    group's candidates; a transfer run's, the targets' fingerprints), which the run directory alone cannot rebuild."""
    return "tune" in metrics or "targets" in metrics


def check_key(folder: Path, record: dict[str, Any], metrics: dict[str, Any], config: RunConfig) -> None:
    """Refuse a run whose configuration, as this version reads it, is not the one its key hashed (a run written by
    a version whose options changed). A salted key (`salted`) is not recomputed: there, every option the key hashes
    must be one `config.json` records (an option added since without a `before` value changes the key)."""
    if salted(metrics):
        hashed = set(config.keyed()["options"])
        unrecorded = sorted(hashed - set(record["options"]))
        if unrecorded:
            raise StateError(f"run {folder} was written by lathadapter {record.get('lathadapter_version', '?')}, "
                             f"before option(s) {', '.join(unrecorded)} existed; this version cannot rebuild its "
                             "configuration")
        return
    key = config.key(record["cache_fingerprint"])
    if key != record.get("key"):
        raise StateError(f"run {folder} has key {record.get('key')}, but its config.json read by this version keys "
                         f"as {key} (written by lathadapter {record.get('lathadapter_version', '?')}, whose options "
                         "differ); load it with that version")


def trained_method(folder: Path, config: RunConfig, record: dict[str, Any], metrics: dict[str, Any],
                   train_data: FewShotData) -> Method:
    """The run's method on its training view with the options it trained with (those left to the recipe at the
    values `config.json`'s `resolved` records) and `weights.pt` loaded, in eval mode. Searched values (α, β) of a
    run saved before they were in the state dict are taken from its `chosen`."""
    requested = {name: value for name, value in dataclasses.asdict(config.options).items() if value is not None}
    options = make_options(config.method, {**requested, **record.get("resolved", {})})
    with GLOBAL_GENERATOR:  # nothing random survives the loaded weights; seeded as `run.build` for the rest
        torch.manual_seed(config.seed)
        method = build_method(config.method, options, train_data)
    try:
        weights = torch.load(folder / "weights.pt", map_location=train_data.text_features.device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise StateError(f"{folder}/weights.pt is not a readable state dict ({error})") from None
    searched = getattr(method, "searched", ())
    if searched and "_extra_state" not in weights:  # saved before the searched values were in the state dict
        chosen = metrics.get("chosen") or {}
        if all(name in chosen for name in searched):
            weights["_extra_state"] = torch.tensor([chosen[name] for name in searched], dtype=torch.float64)
    try:
        method.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise StateError(f"{folder}/weights.pt does not fit {config.method} built from its config.json: "
                         f"{' '.join(line.strip() for line in first)}") from None
    return method.eval()


def class_accuracies(matrix: torch.Tensor, names: list[str]) -> list[ClassAccuracy]:
    """Each class's accuracy from a confusion matrix (rows true, columns predicted) over classes `names`, in label
    order: its diagonal over its row sums."""
    return [ClassAccuracy(c, names[c], int(matrix[c, c]), int(matrix[c].sum())) for c in range(len(names))]


def ranked(classes: list[ClassAccuracy]) -> list[ClassAccuracy]:
    """The classes that have test images, worst first (ties in label order)."""
    return sorted((c for c in classes if c.count), key=lambda c: (c.correct / c.count, c.label))


# `classes`: the class set (`all`, `base`, `novel`; a target's: `all`, its own classes); `target`: as results.csv's,
# empty for a run without targets, `source` for a transfer run's own test set, else the target's dataset
CSV_COLUMNS = ("classes", "label", "class", "correct", "count", "accuracy", "target")


def per_class_rows(per_class: dict[tuple[str, str], list[ClassAccuracy]]) -> list[dict[str, Any]]:
    """Each test set's per-class accuracy (`TrainedRun.per_class_accuracy`, by class set and target; a set the
    method cannot score left out) as rows (`CSV_COLUMNS`)."""
    return [{"classes": part, "label": c.label, "class": c.name, "correct": c.correct, "count": c.count,
             "accuracy": "" if c.accuracy is None else f"{c.accuracy:.4f}", "target": target}
            for (part, target), classes in per_class.items() for c in classes]


def check_per_class_out(path: Path) -> None:
    """Refuse an `--out` that is an existing file other than a per-class CSV (`check_replaceable`; its header's first
    six columns, as the CSV had before it gained `target`)."""
    check_replaceable(path, "--out", ",".join(CSV_COLUMNS[:6]).encode(),
                      f"a per-class CSV (header {','.join(CSV_COLUMNS)})")


def write_per_class(path: Path, rows: list[dict[str, Any]]) -> None:
    """`rows` as a CSV file (`CSV_COLUMNS`), written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, lambda p: p.write_text(text.getvalue()))
