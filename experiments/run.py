"""One run: a typed configuration, training and evaluation on a loaded few-shot set, and the run directory."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import numbers
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from lathadapter.adapter.batched import Member, lockstep_key, train_together
from lathadapter.adapter.catalog import (
    build_method,
    make_options,
    method_class,
    method_names,
    option_names,
    resolve_options,
)
from lathadapter.adapter.evaluate import NaNScores, Scores, evaluate, harmonic_mean
from lathadapter.adapter.methods.base import Method, warn_unread_options
from lathadapter.adapter.options import OptionError, StateError, changed_fields, unkeyed
from lathadapter.adapter.recipes import RecipeFacts, filled_by_recipe
from lathadapter.adapter.trainer import SELECTIONS, TRAIN_VIEWS, DivergedError, TrainResult, train
from lathadapter.cache.store import CacheError, CacheReader, FewShotData, resolve_cache, seed_error
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.machine import resolve_device
from lathadapter.kernels.dispatch import backend as kernels_backend
from lathadapter.version import __version__

CLASS_PROTOCOLS = ("all", "base")
TEXT_FEATURES = ("coop", "ensemble")


def _integer(name: str, value: Any, what: str) -> int:
    """`value` of field `name` (`what` it is) as an int, a NumPy integer too; a string, float, bool or list (the
    Python API's mistakes, which failed deep in a comparison or found no few-shot set) refused naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        grid = "; several values are a grid's axis (experiments.spec.GridSpec)" if isinstance(
            value, list | tuple | set | range) else ""
        raise OptionError(f"{name}={value!r}: expected an integer, {what}{grid}")
    return int(value)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result, given the cache; `options` is the method's typed options
    dataclass (its defaults when not given). Built once where a run is described, then passed unchanged."""

    method: str = "lathadapter"
    shots: int = 4
    seed: int = 1
    classes: str = "all"
    text: str = "coop"
    select: str = "last"
    options: Any = None
    train_views: str = "augmented"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shots", _integer("shots", self.shots, "the shots per class, e.g. 4"))
        object.__setattr__(self, "seed", _integer("seed", self.seed, "the few-shot set's seed, e.g. 1"))
        if self.shots < 1:
            raise OptionError(f"--shots {self.shots}: shots per class must be at least 1 (papers use 1, 2, 4, 8, 16)")
        if problem := seed_error("--seed", [self.seed]):  # the Python API's too (`fit(seed=-1)`)
            raise OptionError(problem)
        for name, value, valid in (("classes", self.classes, CLASS_PROTOCOLS), ("text", self.text, TEXT_FEATURES),
                                   ("select", self.select, SELECTIONS), ("train_views", self.train_views, TRAIN_VIEWS)):
            if value not in valid:
                raise OptionError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")
        defaults = make_options(self.method)  # an unknown method fails here, before any work
        if self.options is None:
            object.__setattr__(self, "options", defaults)
        elif type(self.options) is not type(defaults):
            raise OptionError(f"method {self.method!r} takes {type(defaults).__name__}, "
                              f"not {type(self.options).__name__}")

    @classmethod
    def create(cls, method: str, shots: int, seed: int, classes: str = "all", text: str = "coop",
               select: str = "last", overrides: dict[str, Any] | None = None, train_views: str = "augmented"
               ) -> RunConfig:
        """The configuration with the method's options parsed from `overrides` (strings or Python values)."""
        return cls(method, shots, seed, classes, text, select, make_options(method, overrides), train_views)

    def identity(self) -> dict[str, Any]:
        """The configuration as plain JSON values: every option of the method, defaults included."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"},
                "options": dataclasses.asdict(self.options)}

    def keyed(self) -> dict[str, Any]:
        """`identity` less what runs trained before a setting existed did not hash (`train_views=augmented`, an
        option at its `before` value: `options.unkeyed`): what run keys and tuning group ids hash."""
        identity = self.identity()
        if self.train_views == "augmented":  # as before the setting existed: earlier grids' runs keep their keys
            del identity["train_views"]
        left_out = unkeyed(self.options)
        identity["options"] = {k: v for k, v in identity["options"].items() if k not in left_out}
        return identity

    def key(self, fingerprint: str) -> str:
        """A hash of the full configuration and the cache fingerprint: the run's identity in grids."""
        payload = {**self.keyed(), "fingerprint": fingerprint}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class RunOutcome:
    """A trained method, its metrics, and the lifted points it exports for pictures (None for most methods)."""

    method: Method
    metrics: dict[str, Any]
    train: TrainResult
    points: dict[str, Any] | None = None


def split_classes(data: FewShotData, classes: str) -> tuple[FewShotData, FewShotData | None]:
    """The training view of `data` and, for base-to-novel, the novel view (both relabelled from 0)."""
    if classes == "all":
        return data, None
    return data.base_novel()


def run(config: RunConfig, data: FewShotData, progress: Progress | None = None, graphs: bool | None = None
        ) -> RunOutcome:
    """Train and evaluate one configuration on an already loaded few-shot set (the grid calls this directly);
    `progress` shows the epochs; `graphs`: as `trainer.train`'s."""
    train_data, novel_data = split_classes(data, config.classes)
    method = build(config, train_data)
    result = train(method, train_data, seed=config.seed, select=config.select, progress=progress,
                   train_views=config.train_views, graphs=graphs)
    return evaluated(config, method, result, train_data, novel_data)


def resolved_options(config: RunConfig, train_data: FewShotData) -> Any:
    """The configuration's options with every option left to the method's training recipe (None) set to the value
    the recipe gives on this training view (dataset, shots): what the run trains with. The run's key stays that of
    the options as requested."""
    return resolve_options(config.method, config.options, RecipeFacts.of(train_data))


# Held while a method is seeded and built: the global generator is one for the process, and a grid's trainer threads
# (`local.InProcess`) build their runs' methods at the same time.
GLOBAL_GENERATOR = threading.Lock()


def build(config: RunConfig, train_data: FewShotData) -> Method:
    """The configuration's method on its training view, from its resolved options (`resolved_options`), initialised
    from the global generator seeded by the run's seed (so the same run starts alike alone or trained together); a
    `ProtocolWarning` names the options set that change nothing in its training (`warn_unread_options`: its recipe's
    unread ones, `Method.unread`'s), once a process for the same text (Python's default warning filter, so a grid says
    it once, not once a run)."""
    options = resolved_options(config, train_data)
    with GLOBAL_GENERATOR:
        torch.manual_seed(config.seed)
        method = build_method(config.method, options, train_data)
    warn_unread_options(method, changed_fields(config.options), stacklevel=2)
    return method


def run_together(configs: list[RunConfig], datas: list[FewShotData], stack: bool | None = None,
                 graphs: bool | None = None) -> list[RunOutcome]:
    """Train and evaluate several configurations, those that can (same method, samples and recipe steps:
    `batched.lockstep_key`) trained together in one loop (`batched.train_together`; as one stacked model where the
    method's loss vmaps), each with its own data, seed, options and optimiser state; the rest alone. Each outcome is
    `run`'s for that configuration, within float rounding (bit for bit when nothing is stacked), and its metrics say
    how many runs trained together (`batch_runs`). `stack` and `graphs`: as `batched.train_together`'s."""
    splits = [split_classes(data, c.classes) for c, data in zip(configs, datas, strict=True)]
    members = [Member(build(c, train_data), train_data, c.seed) for c, (train_data, _) in zip(configs, splits,
                                                                                                strict=True)]
    groups: dict[Any, list[int]] = {}
    results: dict[int, TrainResult] = {}
    for i, (c, member) in enumerate(zip(configs, members, strict=True)):
        key = lockstep_key(member, c.select, c.train_views)
        if key is None:  # nothing for the trainer to optimise
            results[i] = train(member.method, member.data, c.seed, c.select, train_views=c.train_views,
                               graphs=graphs)
        else:
            groups.setdefault(key, []).append(i)
    for indices in groups.values():
        c = configs[indices[0]]
        trained = train_together([members[i] for i in indices], c.select, c.train_views, stack=stack,
                                 graphs=graphs)
        results.update(zip(indices, trained, strict=True))
    return [evaluated(c, member.method, results[i], train_data, novel_data)
            for i, (c, member, (train_data, novel_data)) in enumerate(zip(configs, members, splits, strict=True))]


def evaluated(config: RunConfig, method: Method, result: TrainResult, train_data: FewShotData,
              novel_data: FewShotData | None) -> RunOutcome:
    """A trained method's outcome: test accuracy, ECE and its bins (`reliability`; base and novel for base-to-novel),
    training facts, lifted points. A diverged run (NaN or infinite loss or parameters, or NaN scores) has no accuracy
    or ECE (None) and says why in `diverged`."""
    start = time.perf_counter()
    diverged = result.diverged
    scores: dict[str, Scores | None] = {"all": None} if novel_data is None else {"base": None, "novel": None}
    if diverged is None:
        try:
            scores = test_scores(method, train_data, novel_data)
        except NaNScores as error:
            diverged = str(error)
    accuracy = {k: None if s is None else s.accuracy for k, s in scores.items()}
    metrics = {
        "accuracy": accuracy,
        "ece": {k: None if s is None else s.ece for k, s in scores.items()},
        "reliability": {k: None if s is None else s.reliability.record() for k, s in scores.items()},
        "hm": harmonic_mean(accuracy.get("base"), accuracy.get("novel")),
        "diverged": diverged,
        "train_seconds": result.seconds,
        "eval_seconds": time.perf_counter() - start,
        "trained_parameters": sum(p.numel() for p in method.parameters() if p.requires_grad) if method.trains else 0,
        "steps": result.steps,
        "epochs": result.epochs,
        "selected_epoch": result.selected_epoch,
        "val_accuracy": result.val_accuracy,
        "chosen": result.chosen,
        # the options the recipe filled and their values (written into config.json, not metrics.json: `save_run`)
        "resolved": filled_by_recipe(config.options, method.options),
        "history": result.history,  # last-batch loss and its parts, per epoch
        "batch_runs": result.batch_runs,  # runs trained together, this one included (`grid --batch-runs`)
        "batch_mode": result.batch_mode,
        "cuda_graph": result.cuda_graph,  # steps replayed from captured CUDA graphs (`adapter.graphed`)
        "threads": torch.get_num_threads(),  # CPU float sums may round differently with another thread count
    }
    if diverged is not None:
        return RunOutcome(method, metrics, result, None)
    diagnostics = method.diagnostics(train_data)
    if diagnostics is not None:
        metrics["hierarchy"] = diagnostics
    return RunOutcome(method, metrics, result, method.lifted_points(train_data))


def as_diverged(outcome: RunOutcome, trained: dict[str, Any], reason: str) -> RunOutcome:
    """`outcome` counted as diverged (`reason`) after it scored NaN past its test set (on val or a transfer target):
    the metrics it had when trained (`trained`) with no accuracy, ECE, HM, diagnostics or lifted points, as `evaluated`
    gives a run whose test scores are NaN."""
    metrics = {**trained, "accuracy": dict.fromkeys(trained["accuracy"]), "ece": dict.fromkeys(trained["accuracy"]),
               "reliability": dict.fromkeys(trained["accuracy"]), "hm": None, "diverged": reason}
    metrics.pop("hierarchy", None)
    return RunOutcome(outcome.method, metrics, outcome.train, None)


def test_scores(method: Method, train_data: FewShotData, novel_data: FewShotData | None
                ) -> dict[str, Scores | None]:
    """Test accuracy and ECE (%) over the training classes (`all`), or `base` and `novel` for base-to-novel (novel
    images against the novel classes' text features only)."""
    if novel_data is None:
        return {"all": evaluate(method, train_data.test_features, train_data.test_labels)}
    return {"base": evaluate(method, train_data.test_features, train_data.test_labels),
            "novel": evaluate(method, novel_data.test_features, novel_data.test_labels, novel_data.text_features)}


def tune_val_accuracy(config: RunConfig, method: Method, data: FewShotData) -> float | None:
    """The trained `method`'s accuracy (%) on `data`'s val set (the few-shot val subset, or the whole val split that
    `search_view` put in its place), whatever `select` kept: what fair tuning chooses by. It is the training view's
    val set (`split_classes`), so base-to-novel uses the base classes' val images only; None when that set is empty
    (ImageNet has no few-shot val subset). Never reads the test set."""
    train_data, _ = split_classes(blind(data), config.classes)
    if len(train_data.val_labels) == 0:
        return None
    return accuracy_on(method, train_data.val_features, train_data.val_labels)


def accuracy_on(method: Method, features: torch.Tensor, labels: torch.Tensor,
                text_features: torch.Tensor | None = None) -> float | None:
    """`evaluate`'s accuracy alone (None: not applicable), what tuning scores by."""
    scores = evaluate(method, features, labels, text_features)
    return None if scores is None else scores.accuracy


# What fair tuning chooses by (`--tune-score`): `val`, the trained run's accuracy on its few-shot val set; `val_hm`, the
# HM of a pseudo-base/pseudo-novel split of the run's training classes (`pseudo_novel_accuracies`).
TUNE_SCORES = ("val", "val_hm")
# Which val images those scores read (`--tune-set`): `subset`, the run's few-shot val subset (CoOp: min(shots, 4) a
# class); `split`, the cache's whole val split (a cache built with `--val split`), so that one image cannot decide.
# The names `cache build --val` and the baselines' `search_set` give them; `fewshot`, its name before stop 27, is
# still read (command line, grid files, results tables and metrics.json written before).
TUNE_SETS = ("subset", "split")
TUNE_SETS_BEFORE = {"fewshot": "subset"}


def search_view(data: FewShotData, tune_set: str) -> FewShotData:
    """`data` whose val set is the one tuning scores on (`TUNE_SETS`): itself, or with the cache's whole val split in
    place of the few-shot val subset. Training never reads the val set, so only the scores change."""
    if tune_set not in TUNE_SETS:
        raise OptionError(f"--tune-set {tune_set}: choose one of {', '.join(TUNE_SETS)}")
    if tune_set == "subset":
        return data
    if data.search_features is None or data.search_labels is None:
        raise CacheError("--tune-set split scores on the whole val split, which this cache does not hold; rebuild "
                         "it with `lathadapter cache build --val split`, or use --tune-set subset")
    return dataclasses.replace(data, val_features=data.search_features, val_labels=data.search_labels)


def blind(data: FewShotData) -> FewShotData:
    """`data` with its test set dropped (empty arrays), so whatever is computed from it cannot read a test image.
    The test tensors are replaced, never read (not even indexed)."""
    dim = data.val_features.shape[-1]
    return dataclasses.replace(data, test_features=data.val_features.new_zeros((0, dim)),
                               test_labels=data.val_labels.new_zeros((0,)))


def pseudo_split(config: RunConfig, data: FewShotData) -> tuple[FewShotData, FewShotData]:
    """The run's training view (`split_classes`: the base classes for base-to-novel) without its test set, split
    into a pseudo-base and a pseudo-novel half by the rule the protocol splits all classes with (`base_novel`: sorted
    labels, the first ceil(n/2) pseudo-base), each relabelled from 0."""
    train_data, _ = split_classes(blind(data), config.classes)
    if train_data.num_classes < 2:
        raise OptionError(f"--tune-score val_hm splits the training classes in two; classes={config.classes} leaves "
                          f"{train_data.num_classes}; use --tune-score val")
    return train_data.base_novel()


def pseudo_novel_accuracies(config: RunConfig, data: FewShotData) -> dict[str, Any]:
    """A fresh copy of the run's method (same configuration and seed) trained on the pseudo-base half of its training
    classes (`pseudo_split`), and its val accuracy (%) on each half: `base` against the pseudo-base classes, `novel`
    against the pseudo-novel classes' text features only, as novel classes are scored. None where a half has no val
    image or the method cannot score unseen classes. One training; never reads the test set."""
    pseudo_base, pseudo_novel = pseudo_split(config, data)
    method = build(config, pseudo_base)
    result = train(method, pseudo_base, seed=config.seed, select=config.select, train_views=config.train_views)
    if result.diverged is not None:  # no score: a tuning group keeps it only when every candidate diverged
        return {"base": None, "novel": None, "diverged": result.diverged}
    try:
        base = (accuracy_on(method, pseudo_base.val_features, pseudo_base.val_labels)
                if len(pseudo_base.val_labels) else None)
        novel = (accuracy_on(method, pseudo_novel.val_features, pseudo_novel.val_labels, pseudo_novel.text_features)
                 if len(pseudo_novel.val_labels) else None)
    except NaNScores as error:  # a finite training whose scores overflow: no score either
        return {"base": None, "novel": None, "diverged": str(error)}
    return {"base": base, "novel": novel}


def scores_new_classes(method: str) -> bool:
    """Whether `method` can score classes it was not trained on (else its novel accuracy is not applicable)."""
    return bool(method_class(method).scores_new_classes)


def tune_val_score(config: RunConfig, method: Method | None, data: FewShotData, score: str = "val"
                   ) -> float | None:
    """The score fair tuning chooses by (`TUNE_SCORES`), from `data`'s val set only (as `tune_val_accuracy`): `val` is
    `tune_val_accuracy` of the trained `method` (None: trained here, as `run` would); `val_hm` trains a pseudo-base
    copy itself (`pseudo_novel_accuracies`, one training; `method` is not used) and returns the HM of its
    pseudo-base and pseudo-novel val accuracy, None where a half has no val image or the method cannot score unseen
    classes (the grid tunes such methods by `val`). Never reads the test set."""
    if score not in TUNE_SCORES:
        raise OptionError(f"--tune-score {score}: choose one of {', '.join(TUNE_SCORES)}")
    if score == "val_hm":
        if not scores_new_classes(config.method):
            return None
        accuracies = pseudo_novel_accuracies(config, data)
        return harmonic_mean(accuracies["base"], accuracies["novel"])
    if method is None:
        train_data, _ = split_classes(blind(data), config.classes)
        method = build(config, train_data)
        train(method, train_data, seed=config.seed, select=config.select, train_views=config.train_views)
    return tune_val_accuracy(config, method, blind(data))


def option_in_effect(config: RunConfig, data: FewShotData, name: str) -> Any:
    """The value option `name` takes in this run: its own when set; when left at None to the method's training recipe
    (official recipes vary by dataset and shots), the recipe's on the run's training view (`resolved_options`; no
    method is built). Fair tuning's presets scale it."""
    value = getattr(config.options, name)
    if value is not None:
        return value
    train_data, _ = split_classes(data, config.classes)
    value = getattr(resolved_options(config, train_data), name)
    if value is None:
        raise OptionError(f"option {name} of {config.method} is left unset and its training recipe gives no value "
                          "to scale; set it, or tune it with explicit values (--tune)")
    return value


def write_atomic(path: Path, write: Any) -> None:
    """Call `write(temporary_path)`, then move the file into place: readers never see half a file. A failed write
    names `path` (a write(2) error carries no file name: a full disk or `ulimit -f` said only "[Errno 27] File too
    large")."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        if error.filename is not None or not error.errno:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        temporary.unlink(missing_ok=True)


def forget_stale(folder: Path, written: list[Path], listing: str) -> None:
    """Remove the files an earlier command into `folder` wrote (its `listing` file, a JSON list of names) that this
    one did not (`written`): a dataset no longer in a report's results, a target not given to `inspect` again, another
    run's plots, which would look current. Then record this one's. Only names the list holds are removed; a folder's
    other files stay."""
    names = sorted({p.name for p in written})
    try:
        earlier = json.loads((folder / listing).read_text())
    except (OSError, ValueError):
        earlier = []  # nothing written here before (or before the list was kept)
    for name in set(earlier if isinstance(earlier, list) else []) - set(names):
        if isinstance(name, str) and name == Path(name).name and (folder / name).is_file():
            (folder / name).unlink()
    write_atomic(folder / listing, lambda temporary: temporary.write_text(json.dumps(names, indent=1)))


def check_replaceable(path: Path, flag: str, starts: bytes, what: str) -> None:
    """Refuse an output file `path` (given as `flag`) that exists, is not empty and does not start as the files that
    option writes do (`starts`, `what` they are): a run's metrics.json or a grid's results.csv given by mistake was
    overwritten, and the work lost. A file the option wrote before is written again. A folder (`.`, or `''`, which
    reads as `.`) is refused before any work, not after it."""
    if path.is_dir():
        raise OptionError(f"{flag} {path}: cannot write there: it is a folder, where a file is written; choose a file "
                          f"name as {flag}")
    if not path.is_file():  # nothing there, or no regular file to replace (a FIFO would block a read)
        return
    with path.open("rb") as f:
        first = f.read(len(starts))
    if first and first != starts:
        raise OptionError(f"{flag} {path}: the file exists and is not {what}, which {flag} writes; choose another "
                          f"{flag}, or delete the file first")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(payload, indent=2, default=str) + "\n"))


def run_record(config: RunConfig, key: str, cache: Path, fingerprint: str, fingerprint_fields: dict[str, Any],
               device: str, resolved: dict[str, Any] | None = None, execution: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """`config.json`: the full typed configuration as requested (what the key hashes), what differs from the
    method's defaults, the values the training recipe gave the options left to it (`resolved`), and provenance (with
    `execution`, how the run trained: `Execution.record`)."""
    record = {
        "key": key,
        **config.identity(),
        "overrides": changed_fields(config.options),
        "resolved": resolved or {},
        "device": device,
        "cache": str(cache),
        "cache_fingerprint": fingerprint,
        "cache_fields": fingerprint_fields,
        "lathadapter_version": __version__,
        "torch_version": torch.__version__,
    }
    if execution is not None:
        record["execution"] = execution
    return record


def torch_bytes(value: Any) -> bytes:
    """`torch.save` of `value` in memory: written with `write_bytes`, a full disk is an OSError naming the file
    (torch.save onto a file raised a bare RuntimeError "basic_ios::clear")."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def save_run(folder: Path, config: RunConfig, outcome: RunOutcome, cache: Path, fingerprint: str,
             fingerprint_fields: dict[str, Any], device: str, key: str | None = None,
             execution: dict[str, Any] | None = None) -> None:
    """Write `config.json`, `weights.pt`, `points.pt` (when the method exports lifted points) and `metrics.json`
    into `folder`, each file atomically and the metrics last (a run is finished once they exist). The metrics'
    `resolved` (the options the recipe filled) goes into `config.json`."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    metrics = dict(outcome.metrics)
    resolved = metrics.pop("resolved", None)
    try:
        write_json(folder / "config.json", run_record(config, key or config.key(fingerprint), cache, fingerprint,
                                                      fingerprint_fields, device, resolved, execution))
        weights = {k: v.detach().cpu() for k, v in outcome.method.state_dict().items()}
        write_atomic(folder / "weights.pt", lambda p: p.write_bytes(torch_bytes(weights)))
        if outcome.points is not None:
            write_atomic(folder / "points.pt", lambda p: p.write_bytes(torch_bytes(outcome.points)))
        write_json(folder / "metrics.json", metrics)
    except OSError:  # e.g. a full disk: no half-written run folder
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def fit(cache: str | Path | None = None, method: str = "lathadapter", shots: int = 4, seed: int = 1, *,
        classes: str = "all", text: str = "coop", select: str = "last", train_views: str = "augmented",
        device: str | None = None, out: str | Path | None = "runs", force: bool = False, **options: Any
        ) -> dict[str, Any]:
    """Train `method` on the (`shots`, `seed`) few-shot set of a cache, evaluate it, and return its metrics.

    `options` are the method's options (`lathadapter list options METHOD`). With `out`, the run is written to
    `out/<dataset>-<method>-<classes>-<shots>shot-seed<seed>-<key>/`; the metrics gain `run_dir`. A finished run
    directory is never overwritten unless `force`. `cache` is the cache file, as `--cache` and `load`'s `cache`
    name it (`cache_path=`, its earlier name, is still taken).
    """
    if "cache_path" in options:  # the keyword's name before stop 26: scripts written then still run
        if cache is not None:
            raise OptionError("fit(): cache and cache_path name one argument (the cache file); give cache alone")
        cache = options.pop("cache_path")
    check_fit_arguments(cache, method, out, force, options)
    config = RunConfig.create(method, shots, seed, classes, text, select, options, train_views)
    return fit_config(config, cache, device=device, out=out, force=force)


def check_fit_arguments(cache: Any, method: Any, out: Any, force: Any, options: dict[str, Any]) -> None:
    """`fit`'s own arguments checked where pathlib or a truth test would take them silently or fail without naming
    them: the paths, `force` (`force="no"` overwrote a finished run) and a keyword that is neither an argument of
    `fit` nor an option of `method` (a misspelt argument read as an option of the method)."""
    for name, value in (("cache", cache), ("out", out)):
        if value is not None and not isinstance(value, str | os.PathLike):
            raise OptionError(f"{name}={value!r}: expected a path (str or pathlib.Path) or None")
    if not isinstance(force, bool):
        raise OptionError(f"force={force!r}: expected True or False")
    if isinstance(method, str) and method in method_names():
        valid = option_names(method)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            arguments = [name for name, p in inspect.signature(fit).parameters.items() if p.kind != p.VAR_KEYWORD]
            raise OptionError(f"fit(): unknown keyword(s) {', '.join(unknown)}: neither an argument of fit "
                              f"({', '.join(arguments)}) nor an option of {method} "
                              f"({'valid options: ' + ', '.join(valid) if valid else 'it has none'})")


def run_folder(out: Path, dataset: str, config: RunConfig, key: str) -> Path:
    """`out/<dataset>-<method>-<classes>-<shots>shot-seed<seed>-<key>`: a plain fit's run directory."""
    return out / f"{dataset}-{config.method}-{config.classes}-{config.shots}shot-seed{config.seed}-{key}"


def check_out(out: Path, folder: Path, force: bool) -> None:
    """Refuse, before any work, an output path that is a file and a run directory that is finished already."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise StateError(f"--out {out}: {path} is a file, not a folder; choose a folder for the run directories")
    if (folder / "metrics.json").exists() and not force:
        raise StateError(f"{folder} holds a finished run of this configuration (metrics.json); it is left as it is. "
                          "Pass --force (in Python: force=True) to train it again and overwrite it")


def fit_config(config: RunConfig, cache_path: str | Path | None = None, *, device: str | None = None,
               out: str | Path | None = "runs", force: bool = False, progress: Progress | None = None,
               execution: Execution | None = None) -> dict[str, Any]:
    """`fit` of a configuration built already (the command line parses its options into one); `execution` (default:
    `device`, and the process's kernels backend) is where it trains, recorded in `config.json`."""
    execution = execution or Execution(device=resolve_device(device), trainers=1)
    device = execution.device or "cpu"
    cache = resolve_cache(cache_path)
    with CacheReader(cache) as reader:
        info = reader.info()
        dataset = str(info.fields.get("dataset", cache.stem))
        key = config.key(info.fingerprint)
        folder = run_folder(Path(out), dataset, config, key) if out is not None else None
        if folder is not None:
            check_out(Path(out), folder, force)
        data = reader.load(config.shots, config.seed, text=config.text, device=device)
    with kernels_backend(execution.kernels):
        outcome = run(config, data, progress, graphs=execution.captures(device))
    if outcome.metrics["diverged"] is not None:  # no accuracy to report, and no run directory written
        raise DivergedError(outcome.metrics["diverged"])
    metrics = {"method": config.method, "dataset": dataset, "shots": config.shots, "seed": config.seed,
               "classes": config.classes, **outcome.metrics}
    if folder is not None:
        outcome.metrics = metrics
        record = execution.record(device, outcome.metrics.get("threads"), outcome.metrics.get("batch_mode"))
        save_run(folder, config, outcome, cache, info.fingerprint, info.fields, device, key, record)
        metrics["run_dir"] = str(folder)
    return metrics
