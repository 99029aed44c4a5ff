"""Ablation grids: the cartesian product of run axes, run in one process that loads each cache once, resumable.

Every run is keyed by a hash of its full configuration and its cache's fingerprint and written to
`OUT/runs/<key>/`; a run whose `metrics.json` exists is finished and skipped. `OUT/results.csv` (one row per run,
every option a column: `opt.NAME`, or `opt.METHOD.NAME` where methods mean different things by a name) is rewritten
from the run directories after each run (each batch, with `batch_runs`: `batches`, `adapter.batched`), so it is
always complete and consistent.

Several grid processes may share one output folder: each run is trained by the one process that holds its lock file
(`OUT/runs/<key>.lock`; the others skip it as running elsewhere), and `results.csv` is rewritten by one process at a
time (`OUT/.results.lock`).

Fair tuning (`tune`, `tune_preset`): every value (or combination) of the tuned options is an ordinary run, a
*candidate*; the candidates of one (cache, method, shots, seed, classes, text, select, other options) cell form a
*tuning group*. Each candidate records its group, its accuracy on the few-shot val set (`tune_val_accuracy`, base
classes only for base-to-novel) and the group's score (`tune_score`: that accuracy, or `val_hm`, the HM of a
pseudo-base copy's val accuracy on two halves of the training classes, `run.pseudo_novel_accuracies`) in
`metrics.json`; the results table marks, once every candidate of a group is finished, the one with the best score
(ties: the first in the order given) `tune.selected`. A preset's group whose best value is on an edge of its grid
grows by a step past it (`PRESET_EXTENSIONS`, `with_extensions`) and chooses again. The test set never enters the
choice.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import functools
import hashlib
import itertools
import json
import math
import os
import shutil
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lathadapter.adapter.catalog import ambiguous_options, make_options, method_names, option_names, option_owner
from lathadapter.adapter.options import OptionError, changed_fields, parse_assignments, split_list
from lathadapter.cache.store import CacheError, CacheInfo, CacheReader, FewShotData
from lathadapter.experiments.run import (
    TUNE_SCORES,
    TUNE_SETS,
    RunConfig,
    RunOutcome,
    harmonic_mean,
    option_in_effect,
    pseudo_novel_accuracies,
    run,
    run_together,
    save_run,
    scores_unseen_classes,
    search_view,
    tune_val_accuracy,
    write_atomic,
)
from lathadapter.progress import progress_display

RESULTS = "results.csv"
# `--tune-preset NAME`: the option tuned and the factors applied to each method's own default of it, in tie-break
# order (the default first: a tie on the val set keeps the method's own value).
TUNE_PRESETS: dict[str, tuple[str, tuple[float, ...]]] = {"lr": ("lr", (1.0, 0.1, 10.0))}
# A preset's extension (`Extension`): while a group chooses the top (bottom) value of its grid, one more candidate at
# that value × step (÷ step) is trained, at most `limit` per side.
PRESET_EXTENSIONS: dict[str, tuple[float, int]] = {"lr": (10.0, 2)}
# `--tune-score`: what tuning chooses by (`run.TUNE_SCORES`); auto: val_hm for base-to-novel cells, val otherwise.
TUNE_SCORE_CHOICES = ("auto", *TUNE_SCORES)


class ResultsError(ValueError):
    """A results table or run directory that is missing, empty or malformed."""


@dataclass
class GridSpec:
    """The axes of a grid. `options` maps `method.option` (one method) or `option` (every method of the grid that
    has it, provided they all mean the same thing by it) to the values to try, as strings or Python values: each
    method parses them into its typed options."""

    caches: list[str]
    methods: list[str] = field(default_factory=lambda: ["lathadapter"])
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    classes: list[str] = field(default_factory=lambda: ["all"])
    text: list[str] = field(default_factory=lambda: ["coop"])
    select: list[str] = field(default_factory=lambda: ["last"])
    options: dict[str, list[Any]] = field(default_factory=dict)
    # Tuned options, keyed as `options`: every value is trained and the best on the few-shot val set kept.
    tune: dict[str, list[Any]] = field(default_factory=dict)
    tune_preset: str | None = None  # a key of TUNE_PRESETS, e.g. "lr"
    tune_score: str = "auto"  # a TUNE_SCORE_CHOICES: what tuning chooses by (`resolve_score`)
    tune_set: str = "fewshot"  # a run.TUNE_SETS: the val images that score reads (`run.search_view`)
    train_views: list[str] = field(default_factory=lambda: ["augmented"])  # what training draws from (TRAIN_VIEWS)


@dataclass(frozen=True)
class Scaled:
    """A preset's candidate value: the method's own default of the option × `factor`. Used where that default is left
    to the method's training recipe (`None`; official recipes vary by dataset), so it is read when the run starts,
    from the method built on the run's data (`run.option_in_effect`); a numeric default is scaled at expansion."""

    factor: float

    def __str__(self) -> str:
        return f"default×{self.factor:g}"


@dataclass(frozen=True)
class Extension:
    """How a preset's grid grows past an edge (`PRESET_EXTENSIONS`): its option, the method's numeric default of it
    (None: left to the training recipe, so the values are `Scaled`), the factor of one step, the most steps per side."""

    name: str
    default: float | None
    step: float
    limit: int

    def value(self, factor: float) -> Any:
        """The option's value at `factor` × its default, as the preset's own candidates have it."""
        return Scaled(factor) if self.default is None else _preset_value(self.default, factor)


@dataclass(frozen=True)
class Tuning:
    """A candidate's place in its tuning group: the tuned option names, every original candidate's (typed, or
    `Scaled`) values in the order given (the tie-break order), this run's index among them, and the score the group
    chooses by. Of a preset's group (`extension`): the candidate's factor of the preset's option and, for a candidate
    added past an edge (index ≥ the originals'), its own values (`extra`) and the key of the original candidate it
    extends (`origin`)."""

    names: tuple[str, ...]
    candidates: tuple[tuple[Any, ...], ...]
    index: int
    score: str = "val"
    extension: Extension | None = None
    factor: float | None = None
    extra: tuple[Any, ...] | None = None
    origin: str | None = None
    val_set: str = "fewshot"  # the val images the score reads (`run.TUNE_SETS`)

    @property
    def values(self) -> dict[str, Any]:
        own = self.candidates[self.index] if self.extra is None else self.extra
        return dict(zip(self.names, own, strict=True))

    @property
    def scaled(self) -> dict[str, float]:
        """The options this candidate sets to their default × a factor, resolved when the run starts."""
        return {name: v.factor for name, v in self.values.items() if isinstance(v, Scaled)}

    def _digest(self, payload: Any) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def salt(self) -> str:
        """Joins the cache fingerprint in a candidate's key: a candidate is never a plain run of the same options, nor
        a candidate of another budget, so every finished run directory belongs to exactly one group; its own values
        are in it too (two `Scaled` candidates have the same options until they are resolved). An extension
        candidate's salt has its own values instead of an index (the same key whichever round adds it); a score other
        than `val` joins it (so the keys of `val` groups are those of grids before scores existed)."""
        payload: list[Any] = ([self.names, self.candidates, self.index] if self.extra is None
                              else [self.names, self.candidates, "extension", self.extra])
        if self.score != "val":
            payload.append(self.score)
        if self.val_set != "fewshot":
            payload.append(self.val_set)
        return "|tune:" + self._digest(payload)

    def group(self, config: RunConfig, fingerprint: str) -> str:
        """The group id: the configuration without the tuned options, the (salted) fingerprint and the budget."""
        identity = config.identity()
        identity["options"] = {k: v for k, v in identity["options"].items() if k not in self.names}
        payload = {**identity, "fingerprint": fingerprint, "tune": [self.names, self.candidates]}
        if self.score != "val":
            payload["score"] = self.score
        if self.val_set != "fewshot":
            payload["val_set"] = self.val_set
        return self._digest(payload)

    def record(self, group: str, config: RunConfig) -> dict[str, Any]:
        """What `metrics.json` keeps under `tune` (the results table is rebuilt from it); `config` is the one trained,
        whose tuned values are resolved."""
        record = {"group": group, "names": list(self.names),
                  "values": {name: getattr(config.options, name) for name in self.names},
                  "index": self.index, "candidates": len(self.candidates)}
        if self.scaled:
            record["scaled"] = self.scaled  # the factors of the default the values were resolved from
        record["score"] = self.score
        record["val_set"] = self.val_set
        if self.extension is not None:
            record["extension"] = {"factor": self.factor, "step": self.extension.step, "limit": self.extension.limit,
                                   "origin": self.origin}
        return record


@dataclass(frozen=True)
class GridRun:
    """One point of the grid: a cache and a run configuration; `tune` when it is a candidate of a tuning group."""

    cache: str
    config: RunConfig
    tune: Tuning | None = None


def load_spec_file(path: Path) -> dict[str, Any]:
    """Read grid axes from a YAML or TOML file (keys as the CLI options: caches, methods, shots, seeds, options...)."""
    if not path.is_file():
        raise OptionError(f"grid file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise OptionError(f"grid file {path}: expected a .yaml, .yml or .toml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise OptionError(f"grid file {path}: {_parse_error(error)}") from None
    valid = [f.name for f in dataclasses.fields(GridSpec)]
    if data is None:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise OptionError(f"grid file {path}: the top level must be a mapping with keys {', '.join(valid)}; "
                          f"got a {type(data).__name__}")
    unknown = set(data) - set(valid)
    if unknown:
        raise OptionError(
            f"grid file {path}: unknown keys {', '.join(sorted(unknown))}; valid: {', '.join(sorted(valid))}"
        )
    as_list = lambda v: v if isinstance(v, list) else split_list(v)  # noqa: E731
    mappings = ("options", "tune")
    spec = {k: as_list(v) for k, v in data.items() if k not in (*mappings, "tune_preset", "tune_score", "tune_set")}
    for key in mappings:
        values = data.get(key) or {}
        if not isinstance(values, dict):
            raise OptionError(f"grid file {path}: {key} must be a mapping of [METHOD.]OPTION to values; "
                              f"got a {type(values).__name__}")
        if key in data:
            spec[key] = {k: as_list(v) for k, v in values.items()}
    spec.setdefault("options", {})
    preset = data.get("tune_preset")
    if preset is not None:
        if not isinstance(preset, str):
            raise OptionError(f"grid file {path}: tune_preset must be one name ({', '.join(TUNE_PRESETS)}); "
                              f"got a {type(preset).__name__}")
        spec["tune_preset"] = preset
    val_set = data.get("tune_set")
    if val_set is not None:
        if val_set not in TUNE_SETS:
            raise OptionError(f"grid file {path}: tune_set {val_set!r}: choose one of {', '.join(TUNE_SETS)}")
        spec["tune_set"] = val_set
    score = data.get("tune_score")
    if score is not None:
        if score not in TUNE_SCORE_CHOICES:
            raise OptionError(f"grid file {path}: tune_score {score!r}: choose one of {', '.join(TUNE_SCORE_CHOICES)}")
        spec["tune_score"] = score
    return spec


def parse_tune(assignments: list[str]) -> dict[str, list[str]]:
    """`--tune [METHOD.]NAME=V1,V2,...` strings, parsed as `--set` axes are."""
    try:
        return parse_assignments(assignments)
    except OptionError as error:
        raise OptionError(str(error).replace("--set", "--tune", 1)) from None


def _parse_error(error: Exception) -> str:
    """A parser's complaint on one line, with its line and column (TOML's message already has them)."""
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.YAMLError) and mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {getattr(error, 'problem', error)}"
    return f"invalid {'YAML' if isinstance(error, yaml.YAMLError) else 'TOML'}: {error}"


def _check_option_axes(spec: GridSpec, axes: dict[str, list[Any]] | None = None, flag: str = "--set") -> None:
    """Every option axis (`spec.options`, or `axes` given with `flag`, e.g. the tuned options) names a method of the
    grid that has it; an unscoped name must mean one thing for every method of the grid that has it (else the error
    lists them and how to scope)."""
    for key in spec.options if axes is None else axes:
        scope, _, name = key.rpartition(".")
        if scope and scope not in spec.methods:
            raise OptionError(f"{flag} {key}: method {scope!r} is not in the grid's methods "
                              f"({', '.join(spec.methods)})")
        targets = [scope] if scope else spec.methods
        having = [m for m in targets if name in option_names(m)]
        if not having:
            valid = sorted({o for m in targets for o in option_names(m)})
            raise OptionError(f"{flag} {key}: no method of the grid has option {name!r}; valid: {', '.join(valid)}")
        if not scope and len({option_owner(m, name) for m in having}) > 1:
            scoped = " or ".join(f"{m}.{name}=..." for m in having)
            raise OptionError(f"{flag} {key}: {', '.join(having)} each have an option {name!r} of their own, with "
                              f"different meanings; scope it to one method: {scoped}")


def _preset_value(default: float, factor: float) -> float:
    """`default × factor` without binary noise (1e-3 × 0.1 is 0.0001, not 0.00010000000000000002)."""
    return float(f"{default * factor:.12g}")


def tune_axes(spec: GridSpec) -> dict[str, list[Any]]:
    """The tuned options of the grid: `spec.tune` and, with `spec.tune_preset`, the preset's option of every method
    of the grid that has it, scoped to the method, over its own default × the preset's factors. All checked before
    anything runs: scoping as `--set` axes, and no option both a `--set` axis and tuned."""
    _check_option_axes(spec, spec.tune, "--tune")
    tune = dict(spec.tune)
    if spec.tune_preset is not None:
        if spec.tune_preset not in TUNE_PRESETS:
            raise OptionError(f"--tune-preset {spec.tune_preset}: unknown preset; valid: {', '.join(TUNE_PRESETS)}")
        name, factors = TUNE_PRESETS[spec.tune_preset]
        for method in spec.methods:
            if name not in option_names(method):
                continue  # e.g. zeroshot and tip-adapter: nothing to tune, they run once
            given = [key for key, _ in _option_axes(method, spec.tune, keys=True) if key.rpartition(".")[2] == name]
            if given:
                raise OptionError(f"--tune-preset {spec.tune_preset} tunes {name} of {method} already; drop "
                                  f"--tune {given[0]}=... or the preset")
            default = getattr(make_options(method), name)
            tune[f"{method}.{name}"] = ([Scaled(f) for f in factors] if default is None
                                        else [_preset_value(default, f) for f in factors])
    for method in spec.methods:
        tuned = [key for key, _ in _option_axes(method, tune, ordered=False, keys=True)]
        names = [key.rpartition(".")[2] for key in tuned]
        twice = [name for name in names if names.count(name) > 1]
        if twice:
            keys = " and ".join(f"--tune {k}" for k, n in zip(tuned, names, strict=True) if n == twice[0])
            raise OptionError(f"{keys} both tune {twice[0]} of {method}; give it once")
        fixed = {name for name, _ in _option_axes(method, spec.options)}
        both = sorted(fixed & set(names))
        if both:
            raise OptionError(f"option {both[0]} of {method} is both a --set axis and tuned (--tune or "
                              "--tune-preset); give it one role")
    return tune


def _option_axes(method: str, options: dict[str, list[Any]], ordered: bool = True,
                 keys: bool = False) -> list[tuple[str, list[Any]]]:
    """The option axes that apply to `method`: its scoped ones and the unscoped ones it has (sorted by key, or in the
    order given; as (name, values), or (key, values) with `keys`)."""
    names = option_names(method)
    axes = []
    for key, values in sorted(options.items()) if ordered else options.items():
        scope, _, name = key.rpartition(".")
        if (scope == method or not scope) and name in names:
            axes.append((key if keys else name, values))
    return axes


def _candidates(method: str, fixed: dict[str, Any],
                tuned: list[tuple[str, list[Any]]]) -> list[tuple[Any, tuple[Any, ...]]]:
    """Each candidate's typed options and tuned values (the cartesian product of the tuned values, first name
    slowest, each in the order given; a `Scaled` value stays as it is, its option at its default until the run
    starts); values that parse to the same candidate are refused."""
    names = [n for n, _ in tuned]
    candidates: list[tuple[Any, tuple[Any, ...]]] = []
    seen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for values in itertools.product(*(v for _, v in tuned)):
        given = dict(zip(names, values, strict=True))
        options = make_options(method, {**fixed, **{n: v for n, v in given.items() if not isinstance(v, Scaled)}})
        typed = tuple(v if isinstance(v, Scaled) else getattr(options, n) for n, v in given.items())
        if typed in seen:
            raise OptionError(f"--tune {' '.join(names)} of {method}: the values {seen[typed]} and {values} are the "
                              "same candidate; give each value once")
        seen[typed] = values
        candidates.append((options, typed))
    return candidates


def resolve_score(requested: str, classes: str, method: str) -> str:
    """The score a tuning group of `method` chooses by: `requested` (`TUNE_SCORE_CHOICES`; auto: `val_hm` for
    base-to-novel cells, `val` otherwise), except that a method that cannot score unseen classes (its novel accuracy
    is not applicable, so `val_hm` is undefined) chooses by `val`, and its records say so."""
    if requested not in TUNE_SCORE_CHOICES:
        raise OptionError(f"--tune-score {requested}: choose one of {', '.join(TUNE_SCORE_CHOICES)}")
    score = ("val_hm" if classes == "base" else "val") if requested == "auto" else requested
    return score if score == "val" or scores_unseen_classes(method) else "val"


def _preset_extensions(spec: GridSpec) -> dict[str, tuple[Extension, list[Any], tuple[float, ...]]]:
    """Per method the preset tunes: its `Extension`, the preset's values of the option (as `tune_axes` gives them)
    and their factors, in order."""
    if spec.tune_preset is None or spec.tune_preset not in PRESET_EXTENSIONS:
        return {}
    name, factors = TUNE_PRESETS[spec.tune_preset]
    step, limit = PRESET_EXTENSIONS[spec.tune_preset]
    found = {}
    for method in spec.methods:
        if name in option_names(method):
            extension = Extension(name, getattr(make_options(method), name), step, limit)
            found[method] = (extension, [extension.value(f) for f in factors], factors)
    return found


def _tuning(names: tuple[str, ...], typed: tuple[tuple[Any, ...], ...], index: int, score: str,
            preset: tuple[Extension, list[Any], tuple[float, ...]] | None, val_set: str = "fewshot") -> Tuning:
    """Candidate `index`'s `Tuning`, with its factor of the preset's option when a preset tunes the method."""
    if preset is None:
        return Tuning(names, typed, index, score, val_set=val_set)
    extension, values, factors = preset
    factor = factors[values.index(typed[index][names.index(extension.name)])]
    return Tuning(names, typed, index, score, extension, factor, val_set=val_set)


def expand(spec: GridSpec) -> list[GridRun]:
    """The cartesian product of the axes, each method's options parsed and validated before anything runs; with
    tuning, each point of the product is a tuning group of candidates (consecutive runs)."""
    valid_methods = method_names()
    for method in spec.methods:
        if method not in valid_methods:
            raise OptionError(f"unknown method {method!r}; valid methods: {', '.join(valid_methods)}")
    _check_option_axes(spec)
    tune = tune_axes(spec)
    presets = _preset_extensions(spec)
    if spec.tune_score not in TUNE_SCORE_CHOICES:
        raise OptionError(f"--tune-score {spec.tune_score}: choose one of {', '.join(TUNE_SCORE_CHOICES)}")
    if spec.tune_set not in TUNE_SETS:
        raise OptionError(f"--tune-set {spec.tune_set}: choose one of {', '.join(TUNE_SETS)}")
    runs = []
    for cache, method, classes, text, select, train_views in itertools.product(
            spec.caches, spec.methods, spec.classes, spec.text, spec.select, spec.train_views):
        axes = _option_axes(method, spec.options)
        tuned = _option_axes(method, tune, ordered=False)
        names = tuple(n for n, _ in tuned)
        for values in itertools.product(*(v for _, v in axes)):
            fixed = dict(zip((n for n, _ in axes), values, strict=True))
            candidates = _candidates(method, fixed, tuned)
            typed = tuple(values for _, values in candidates)
            score = resolve_score(spec.tune_score, classes, method)
            for shots, seed in itertools.product(spec.shots, spec.seeds):
                for index, (options, _) in enumerate(candidates):
                    runs.append(GridRun(str(cache), RunConfig(method, int(shots), int(seed), classes, text, select,
                                                              options, train_views),
                                        _tuning(names, typed, index, score, presets.get(method), spec.tune_set)
                                        if names else None))
    return runs


@functools.cache
def _scoped_options() -> frozenset[str]:
    return frozenset(ambiguous_options())


def option_column(method: str, name: str) -> str:
    """The results-table column of an option: `opt.NAME`, or `opt.METHOD.NAME` for a name that several methods
    declare with different meanings (so Tip-Adapter's β and LatHAdapter's β never share a column)."""
    return f"opt.{method}.{name}" if name in _scoped_options() else f"opt.{name}"


def results_row(config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """One results-table row: identity, what post-training searches chose (`chosen.NAME`, e.g. Tip-Adapter's α and
    β), the hierarchy diagnostics (`hier.NAME`, LatHAdapter), every option (prefixed `opt.`), and the metrics."""
    accuracy = metrics.get("accuracy", {})
    row = {
        "key": config["key"], "cache": config["cache"], "dataset": config["cache_fields"].get("dataset", ""),
        "fingerprint": config["cache_fingerprint"], "method": config["method"], "shots": config["shots"],
        "seed": config["seed"], "classes": config["classes"], "text": config["text"], "select": config["select"],
        "train_views": config.get("train_views", "augmented"),
        "target": metrics.get("target", ""),
        "acc_all": accuracy.get("all"), "acc_base": accuracy.get("base"), "acc_novel": accuracy.get("novel"),
        "hm": metrics.get("hm"), "train_seconds": metrics.get("train_seconds"),
        "eval_seconds": metrics.get("eval_seconds"), "trained_parameters": metrics.get("trained_parameters"),
        "steps": metrics.get("steps"),
        "batch_runs": metrics.get("batch_runs", 1), "batch_mode": metrics.get("batch_mode", "alone"),
    }
    row.update({f"chosen.{k}": v for k, v in sorted((metrics.get("chosen") or {}).items())})
    row.update({f"hier.{k}": v for k, v in (metrics.get("hierarchy") or {}).items()})
    tune = metrics.get("tune")
    if tune:  # a tuning candidate; `tune.selected` is set once its whole group is known (select_tuned)
        extension = tune.get("extension") or {}
        pseudo = metrics.get("tune_pseudo") or {}
        row.update({"tune.group": tune["group"], "tune.names": " ".join(tune["names"]),
                    "tune.values": " ".join(f"{k}={v}" for k, v in tune["values"].items()),
                    "tune.index": tune["index"], "tune.candidates": tune["candidates"],
                    "tune.score": tune.get("score", "val"),  # grids before scores existed chose by val
                    "tune.set": tune.get("val_set", "fewshot"),
                    "tune.val_score": metrics.get("tune_val_score", metrics.get("tune_val_accuracy")),
                    "tune.val_accuracy": metrics.get("tune_val_accuracy"),
                    "tune.pseudo_base": pseudo.get("base"), "tune.pseudo_novel": pseudo.get("novel"),
                    "tune.factor": extension.get("factor"), "tune.step": extension.get("step"),
                    "tune.limit": extension.get("limit"), "tune.origin": extension.get("origin"),
                    "tune.selected": None, "tune.edge": None})
    row.update({option_column(config["method"], k): v for k, v in sorted(config["options"].items())})
    return row


@dataclass(frozen=True)
class Plan:
    """A tuning group's state: the key of its kept candidate (None while one is missing), whether that choice is still
    on an edge of a preset's grid after its extensions (`low`, `high`, or empty), and the extension candidate due
    (the key of the original candidate it extends, its factor, its index), if any; `joined`: the extension
    candidates finished and considered, likewise."""

    selected: str | None
    edge: str = ""
    pending: tuple[str, float, int] | None = None
    joined: tuple[tuple[str, float, int], ...] = ()


def _plan(candidates: dict[str, dict[str, Any]], originals: int) -> Plan:
    """Choose among a group's candidates (key → index, score, factor, step, limit, origin): the best score (ties: the
    lowest index) among the originals; then, in a preset's group, while the best is the highest (lowest) factor of
    those considered and fewer than `limit` steps were added on that side, the candidate one step beyond it (same
    other values, factor × step or ÷ step) joins, or is due when it has not run."""
    pool = {key: c for key, c in candidates.items() if c["index"] < originals}
    if len({c["index"] for c in pool.values()}) < originals:
        return Plan(None)
    added = {"high": 0, "low": 0}
    joined: list[tuple[str, float, int]] = []
    while True:
        best = min(pool, key=lambda key: (-(pool[key]["score"] if pool[key]["score"] is not None else -math.inf),
                                          pool[key]["index"]))
        chosen = pool[best]
        if chosen["step"] is None:
            return Plan(best)
        done = tuple(joined)
        factors = [c["factor"] for c in pool.values()]
        side = ("" if max(factors) == min(factors) else "high" if chosen["factor"] == max(factors)
                else "low" if chosen["factor"] == min(factors) else "")
        if not side:
            return Plan(best, joined=done)
        if added[side] >= chosen["limit"]:
            return Plan(best, side, joined=done)
        step = chosen["step"] if side == "high" else 1 / chosen["step"]
        factor = _preset_value(chosen["factor"], step)
        origin = chosen["origin"] or best
        beyond = [key for key, c in candidates.items() if c["origin"] == origin and c["factor"] == factor]
        if not beyond:
            return Plan(None, "", (origin, factor, originals + added[side]), done)
        pool[beyond[0]] = candidates[beyond[0]]
        joined.append((origin, factor, originals + added[side]))
        added[side] += 1


def tuning_plans(rows: list[dict[str, Any]]) -> dict[str, Plan]:
    """Each tuning group's `Plan`, from the results rows of its finished candidates (only their val scores, never
    test accuracy)."""
    groups: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    originals: dict[str, int] = {}
    number = lambda value: None if value in (None, "") else float(value)  # noqa: E731 — typed rows or the CSV's text
    for row in rows:
        if row.get("tune.group"):
            score = row.get("tune.val_score", row.get("tune.val_accuracy"))
            groups[row["tune.group"]][row["key"]] = {
                "index": int(row["tune.index"]), "score": number(score), "factor": number(row.get("tune.factor")),
                "step": number(row.get("tune.step")), "limit": int(number(row.get("tune.limit")) or 0),
                "origin": row.get("tune.origin") or None}
            originals[row["tune.group"]] = max(originals.get(row["tune.group"], 0), int(row["tune.candidates"]))
    return {group: _plan(candidates, originals[group]) for group, candidates in groups.items()}


def select_tuned(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark each tuning candidate's rows `tune.selected`: True for the candidate its group keeps (`tuning_plans`: the
    best val score, ties the lowest index, i.e. the first value given; a preset's group extended past its edges),
    False for the others, and `tune.edge` on the kept row. A group with candidates still unfinished or an extension
    due selects none yet (its cells read as no run). Only val scores are read, never test accuracy."""
    plans = tuning_plans(rows)
    for row in rows:
        if row.get("tune.group"):
            plan = plans[row["tune.group"]]
            row["tune.selected"] = row["key"] == plan.selected
            row["tune.edge"] = plan.edge if row["tune.selected"] else ""
    return rows


def pending_extensions(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, float, int], bool]]:
    """The extension candidates of the groups' plans, each (key of the original candidate extended, factor, index)
    with whether it is due (else finished and considered: `Plan.joined`)."""
    plans = tuning_plans(rows).values()
    return [(joined, False) for plan in plans for joined in plan.joined] + [
        (plan.pending, True) for plan in plans if plan.pending is not None]


def finished_runs(folder: Path) -> list[Path]:
    """The run directories directly under `folder` whose `metrics.json` exists (finished runs), sorted by name."""
    return sorted(path.parent for path in folder.glob("*/metrics.json"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ResultsError(f"{path}: expected the JSON file of a run directory ({error})") from None


# Rows already read, per run directory, with the size, mtime and inode of its two files: a grid rewrites results.csv
# after every run or batch, and re-reading every finished run's JSON each time made its rewrites quadratic (1.29 s
# per rewrite at 2,000 runs against 0.14 s with the rows kept; benchmarks/results_table.py).
_ROWS_READ: dict[Path, tuple[tuple[int, ...], list[dict[str, Any]]]] = {}


def _stamp(folder: Path) -> tuple[int, ...]:
    stats = [(folder / name).stat() for name in ("config.json", "metrics.json")]
    return tuple(v for st in stats for v in (st.st_size, st.st_mtime_ns, st.st_ino))


def _rows_of(folder: Path) -> list[dict[str, Any]]:
    """One run directory's rows (one per transfer target, else one), read again only when a file changed."""
    try:
        stamp = _stamp(folder)
    except OSError as error:
        raise ResultsError(f"{folder}: expected the JSON files of a run directory ({error})") from None
    known = _ROWS_READ.get(folder)
    if known is None or known[0] != stamp:
        config, metrics = _read_json(folder / "config.json"), _read_json(folder / "metrics.json")
        targets = metrics.get("targets")
        if targets:
            rows = [results_row(config, {**metrics, "accuracy": {"all": accuracy}, "target": name})
                    for name, accuracy in sorted(targets.items())]
        else:
            rows = [results_row(config, metrics)]
        known = _ROWS_READ[folder] = (stamp, rows)
    return [dict(row) for row in known[1]]


def run_rows(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """Results-table rows of run directories (`config.json` and `metrics.json`, as grids and `fit` write them),
    expanding per-target metrics to one row each."""
    return select_tuned([row for folder in run_dirs for row in _rows_of(folder.absolute())])


def collect_rows(out: Path) -> list[dict[str, Any]]:
    """Rows of every finished run of the grid in `out` (its run directories `out/runs/<key>/`, sorted by key)."""
    return run_rows(finished_runs(out / "runs"))


def as_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """The columns (in order of first appearance) and the rows as the CSV's strings: a value not applicable or a
    column a row lacks is empty."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return columns, [{k: "" if row.get(k) is None else str(row[k]) for k in columns} for row in rows]


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive `flock` on `path` (created if missing) for the block; with `wait=False` the block gets False
    at once, holding nothing, when another process holds it. Closing the file releases the lock."""
    while True:
        with path.open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            if not _same_file(f, path):
                continue  # its holder removed it while we waited: the lock is the file at `path` now
            yield True
            return


def _same_file(f: Any, path: Path) -> bool:
    """True when the open file `f` is still the file at `path`: a lock file removed by its holder (`sweep_stale`, a
    finished run) may still be open in another process, whose lock on it then guards nothing."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def sweep_stale(out: Path) -> int:
    """Remove what killed processes left in `out/runs`: lock files nobody holds (flock locks end with their process)
    and the folders of runs they had not finished (no `metrics.json`; a rerun trains them afresh). Locks held by a
    live process and the folders of finished runs stay. Returns how many lock files and folders were removed."""
    runs = out / "runs"
    removed = 0
    names = {p.stem for p in runs.glob("*.lock")} | {p.name for p in runs.iterdir() if p.is_dir()}
    for name in sorted(names):
        lock, folder = runs / f"{name}.lock", runs / name
        if (folder / "metrics.json").exists() and not lock.exists():
            continue
        with file_lock(lock, wait=False) as held:
            if not held:
                continue  # a live process trains or saves this run
            if folder.is_dir() and not (folder / "metrics.json").exists():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            lock.unlink(missing_ok=True)
            removed += 1
    return removed


def write_results(out: Path) -> Path:
    """Rewrite `out/results.csv` from the run directories, atomically and one process at a time: each rewrite reads
    every finished run, so the last one leaves the table complete."""
    path = out / RESULTS
    with file_lock(out / ".results.lock"):
        columns, rows = as_table(collect_rows(out))

        def write(temporary: Path) -> None:
            with temporary.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)

        write_atomic(path, write)
    return path


def _subsets_text(pairs: list[tuple[int, int]]) -> str:
    return ", ".join(f"shots={k} seed={s}" for k, s in pairs)


def check_caches(runs: list[GridRun]) -> dict[str, CacheInfo]:
    """Open each cache of the runs once and check that it holds what they ask for (their (shots, seed) subsets, two
    classes or more for base-to-novel) before anything runs; one error lists every problem. Returns each cache's
    info."""
    wanted: dict[str, set[tuple[int, int]]] = {}
    for grid_run in runs:
        wanted.setdefault(grid_run.cache, set()).add((grid_run.config.shots, grid_run.config.seed))
    base = {r.cache for r in runs if r.config.classes == "base"}
    infos, problems, unreadable = {}, [], []
    for cache, pairs in wanted.items():
        try:
            with CacheReader(cache) as reader:
                infos[cache] = info = reader.info()
        except CacheError as error:
            unreadable.append(str(error))
            continue
        missing = sorted(pairs - set(info.subsets))
        if missing:
            problems.append(f"{cache} holds no few-shot subset for {_subsets_text(missing)} (it holds: "
                            f"{_subsets_text(info.subsets) or 'none'}); rebuild it with `--shots`/`--seeds` that "
                            "include them")
        if cache in base and len(info.class_names) < 2:
            problems.append(f"{cache}: classes=base needs at least 2 classes; it has {len(info.class_names)}")
    if len(unreadable) == 1 and not problems:  # one missing or corrupt file: its own message, on one line
        raise CacheError(unreadable[0])
    problems = unreadable + problems
    if problems:
        raise CacheError("the grid asks for what its caches do not hold:\n  " + "\n  ".join(problems))
    return infos


def check_tuning(runs: list[GridRun]) -> None:
    """Tuning chooses on the few-shot val set: refuse, before anything runs, a tuned cache whose few-shot subsets
    hold no val images (ImageNet's have none), naming each; holding out train shots instead would change the very
    training set the table reports, so there is no fallback."""
    wanted: dict[str, set[tuple[int, int]]] = {}
    for grid_run in runs:
        if grid_run.tune is not None:
            wanted.setdefault(grid_run.cache, set()).add((grid_run.config.shots, grid_run.config.seed))
    problems = []
    for cache, pairs in wanted.items():
        with CacheReader(cache) as reader:
            empty = sorted(p for p in pairs if len(reader.subset_rows(*p)[1]) == 0)
            classes = len(reader.info().class_names)
            whole_val = reader.info().val_split
        if any(r.cache == cache and r.tune is not None and r.tune.val_set == "split" for r in runs):
            if not whole_val:
                raise CacheError(f"--tune-set split scores on the whole val split, which {cache} does not hold; "
                                 "rebuild it with `lathadapter cache build --val all`, or use --tune-set fewshot")
            empty = []  # the whole val split is scored, not the few-shot val subsets
        if empty:
            problems.append(f"{cache} holds no few-shot val images for {_subsets_text(empty)}")
        # val_hm splits the training classes (base: the first ceil(C/2)) into two halves
        few = {r.config.classes for r in runs if r.cache == cache and r.tune is not None and r.tune.score == "val_hm"
               and (math.ceil(classes / 2) if r.config.classes == "base" else classes) < 2}
        if few:
            raise OptionError(f"--tune-score val_hm splits the training classes in two; {cache} has {classes} "
                              f"classes, too few for classes={','.join(sorted(few))}; use --tune-score val")
    if problems:
        raise CacheError("tuning (--tune, --tune-preset) chooses each value on the few-shot val set, which these "
                         "caches lack (as ImageNet's):\n  " + "\n  ".join(problems) + "\n  run them without tuning, "
                         "or rebuild them with a val split")


class DataCache:
    """Loads each cache file once and each (shots, seed, text) few-shot set once per cache."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._path: str | None = None
        self._reader: CacheReader | None = None
        self._sets: dict[tuple[int, int, str], FewShotData] = {}

    def reader(self, path: str) -> CacheReader:
        if path != self._path:
            self.close()
            self._reader, self._path = CacheReader(path), path
        assert self._reader is not None
        return self._reader

    def load(self, path: str, shots: int, seed: int, text: str) -> FewShotData:
        reader = self.reader(path)
        key = (shots, seed, text)
        if key not in self._sets:
            self._sets[key] = reader.load(shots, seed, text=text, device=self.device)
        return self._sets[key]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader, self._path, self._sets = None, None, {}


def grid_progress() -> Progress:
    """The grid's progress bar, on stderr (stdout carries the results); plain lines where stderr is not a terminal
    (`progress.LogProgress`)."""
    return progress_display(lambda: Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("done {task.fields[done]} · skipped {task.fields[skipped]} · running elsewhere "
                   "{task.fields[elsewhere]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True)),
        unit="runs", template="done {done} · skipped {skipped} · running elsewhere {elsewhere}")


Evaluator = Callable[[GridRun, RunOutcome, FewShotData], dict[str, Any]]
STATES = ("done", "skipped", "elsewhere")


@dataclass(frozen=True)
class KeyedRun:
    """A grid run with its key (its run directory's name) and, for a tuning candidate, its group id."""

    run: GridRun
    key: str
    group: str | None = None


def prepare(runs: list[GridRun], out: Path, key_salt: str = "") -> tuple[dict[str, CacheInfo], list[KeyedRun]]:
    """Check the caches and tuning before anything runs, create `out/runs`, and key every run: the one bookkeeping
    both backends (this process, Ray) share."""
    infos = check_caches(runs)
    check_tuning(runs)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    sweep_stale(out)
    return infos, [keyed_run(grid_run, infos[grid_run.cache].fingerprint + key_salt) for grid_run in runs]


def keyed_run(grid_run: GridRun, fingerprint: str) -> KeyedRun:
    """A grid run with its key and tuning group, given its cache's fingerprint (with the grid's key salt)."""
    group = None
    if grid_run.tune is not None:
        group = grid_run.tune.group(grid_run.config, fingerprint)
        fingerprint += grid_run.tune.salt()
    return KeyedRun(grid_run, grid_run.config.key(fingerprint), group)


def extended(root: GridRun, origin: str, factor: float, index: int) -> GridRun:
    """The extension candidate of a preset's group: the original candidate `root` (key `origin`) with the preset's
    option at `factor` × its default, at `index` in the group's tie-break order."""
    tune = root.tune
    assert tune is not None and tune.extension is not None
    value = tune.extension.value(factor)
    name = tune.extension.name
    extra = tuple(value if n == name else v for n, v in zip(tune.names, tune.candidates[tune.index], strict=True))
    config = root.config
    if not isinstance(value, Scaled):
        options = make_options(config.method, {**changed_fields(config.options), name: value})
        config = dataclasses.replace(config, options=options)
    return dataclasses.replace(root, config=config, tune=dataclasses.replace(tune, index=index, factor=factor,
                                                                            extra=extra, origin=origin))


def with_extensions(runs: list[GridRun], out: Path, train_round: Callable[[list[GridRun]], list[str]],
                    key_salt: str = "") -> tuple[list[GridRun], list[str]]:
    """Run `runs` with `train_round` (a backend's resumable runner: each run's state), then, while a preset's tuning
    group of this grid has chosen a value on an edge of its grid and may still grow (`pending_extensions`), a round
    of the extension candidates due, until none is. Finished extension candidates are skipped like any run; one
    already tried in this call (left to another process) is not tried again. Returns every run and its state."""
    states = list(train_round(runs))
    every = list(runs)
    if not any(r.tune is not None and r.tune.extension is not None for r in runs):
        return every, states
    fingerprints = {cache: info.fingerprint + key_salt for cache, info in check_caches(runs).items()}
    known = {keyed_run(r, fingerprints[r.cache]).key: r for r in runs}
    while True:
        due = []
        for (origin, factor, index), pending in pending_extensions(collect_rows(out)):
            root = known.get(origin)
            if root is None or root.tune is None or root.tune.extension is None:
                continue  # a group of another grid sharing the folder
            grid_run = extended(root, origin, factor, index)
            key = keyed_run(grid_run, fingerprints[grid_run.cache]).key
            if key in known:
                continue
            known[key] = grid_run
            if pending:
                due.append(grid_run)
            else:  # finished before (a rerun): counted as the grid's, not trained
                every.append(grid_run)
                states.append("skipped")
        if not due:
            return every, states
        states += train_round(due)
        every += due


def iterate(runs: list[GridRun], out: Path, device: str, progress: bool = True, extra: Evaluator | None = None,
            key_salt: str = "", batch_runs: int = 1) -> Iterator[tuple[GridRun, str]]:
    """Check the caches, then run each unfinished run, yielding (run, "done" | "skipped" | "elsewhere").

    "skipped": finished before; "elsewhere": another process holds the run's lock and is training it. `extra` adds
    metrics after training (e.g. transfer targets); `key_salt` (e.g. the targets' fingerprints) joins the cache
    fingerprint in each run's key, so a changed target set is a different run. `batch_runs` > 1 trains up to that
    many compatible runs together (`batches`), each saved as it would be alone.
    """
    infos, keyed = prepare(runs, out, key_salt)
    data_cache = DataCache(device)
    counts = dict.fromkeys(STATES, 0)
    with grid_progress() as bar:
        task = bar.add_task("grid", total=len(runs), **counts, visible=progress)
        try:
            for batch in batches(keyed, batch_runs):
                states = _run_batch(batch, infos, out, data_cache, extra)
                if "done" in states:
                    write_results(out)
                for item, state in zip(batch, states, strict=True):
                    counts[state] += 1
                    bar.update(task, advance=1, **counts)
                    yield item.run, state
        finally:
            data_cache.close()
    write_results(out)


def batch_key(grid_run: GridRun) -> tuple[Any, ...]:
    """What runs trained together share (`batched.lockstep_key` checks the rest once they are built): cache, method,
    shots, classes, text features, selection and views. Runs that differ in seed, subset or options may share it."""
    c = grid_run.config
    return grid_run.cache, c.method, c.shots, c.classes, c.text, c.select, c.train_views


def batches(keyed: list[KeyedRun], batch_runs: int) -> list[list[KeyedRun]]:
    """The runs cut into batches of at most `batch_runs` with one `batch_key` each: runs of one key in grid order,
    the keys in order of first appearance (runs with equal options next to each other, as they stack); with
    `batch_runs=1`, every run alone in grid order."""
    if batch_runs < 1:
        raise OptionError(f"--batch-runs {batch_runs}: must be at least 1 (1: every run alone)")
    if batch_runs == 1:
        return [[item] for item in keyed]
    groups: dict[tuple[Any, ...], list[KeyedRun]] = {}
    for item in keyed:
        groups.setdefault(batch_key(item.run), []).append(item)
    cut = []
    for items in groups.values():
        items = sorted(items, key=lambda item: repr(item.run.config.options))  # stable: grid order among equals
        cut.extend(items[i:i + batch_runs] for i in range(0, len(items), batch_runs))
    return cut


def _resolve_scaled(config: RunConfig, data: FewShotData, scaled: dict[str, float]) -> RunConfig:
    """`config` with each option of `scaled` set to the value it takes in this run (its recipe's) × its factor."""
    values = {name: _preset_value(option_in_effect(config, data, name), f) for name, f in scaled.items()}
    options = make_options(config.method, {**changed_fields(config.options), **values})
    return dataclasses.replace(config, options=options)


def train_run(grid_run: GridRun, data: FewShotData, extra: Evaluator | None = None,
              group: str | None = None) -> tuple[RunConfig, RunOutcome]:
    """Train and evaluate one grid run on its loaded few-shot set, writing nothing: the one training path of both
    backends. Returns the configuration trained (a tuning candidate's `Scaled` values resolved) and its outcome, whose
    metrics hold `extra`'s, the tuning record and val accuracy (`group`: the candidate's group id) and
    `wall_seconds`."""
    return train_runs([grid_run], [data], extra, [group])[0]


def train_runs(grid_runs: list[GridRun], datas: list[FewShotData], extra: Evaluator | None = None,
               groups: list[str | None] | None = None) -> list[tuple[RunConfig, RunOutcome]]:
    """`train_run` of several grid runs, those that can trained together (`run.run_together`); one run alone is
    `run.run`. `wall_seconds` is the batch's wall time divided among its runs."""
    start = time.perf_counter()
    groups = groups or [None] * len(grid_runs)
    configs = []
    for grid_run, data in zip(grid_runs, datas, strict=True):
        c = grid_run.config
        if grid_run.tune is not None and grid_run.tune.scaled:
            c = _resolve_scaled(c, data, grid_run.tune.scaled)
        configs.append(c)
    outcomes = [run(configs[0], datas[0])] if len(configs) == 1 else run_together(configs, datas)
    for grid_run, c, data, group, outcome in zip(grid_runs, configs, datas, groups, outcomes, strict=True):
        if extra is not None:
            outcome.metrics.update(extra(grid_run, outcome, data))
        if grid_run.tune is not None and group is not None:
            scored = search_view(data, grid_run.tune.val_set)  # the val images the score reads
            val = tune_val_accuracy(c, outcome.method, scored)
            if val is None:  # base-to-novel with no val image of a base class: nothing to choose by
                raise CacheError(f"{grid_run.cache}: shots={c.shots} seed={c.seed} classes={c.classes} has no "
                                 "few-shot val images to choose the tuned value by; run it without tuning")
            outcome.metrics["tune"] = grid_run.tune.record(group, c)
            outcome.metrics["tune_val_accuracy"] = val
            outcome.metrics["tune_val_score"] = val
            if grid_run.tune.score == "val_hm":  # one more training, alone, after the run's own
                pseudo = pseudo_novel_accuracies(c, scored)
                hm = harmonic_mean(pseudo["base"], pseudo["novel"])
                if hm is None:
                    raise CacheError(f"{grid_run.cache}: shots={c.shots} seed={c.seed} classes={c.classes}: a "
                                     "pseudo-novel half of the training classes has no few-shot val image; use "
                                     "--tune-score val")
                outcome.metrics["tune_pseudo"] = pseudo
                outcome.metrics["tune_val_score"] = hm
    seconds = (time.perf_counter() - start) / len(outcomes)
    for outcome in outcomes:
        outcome.metrics["wall_seconds"] = seconds
    return list(zip(configs, outcomes, strict=True))


def save_trained(out: Path, item: KeyedRun, info: CacheInfo, config: RunConfig, outcome: RunOutcome,
                 device: str) -> None:
    """Write a trained run's directory `out/runs/<key>/` (metrics last: then it is finished)."""
    save_run(out / "runs" / item.key, config, outcome, Path(item.run.cache), info.fingerprint, info.fields, device,
             item.key)


def _run_batch(batch: list[KeyedRun], infos: dict[str, CacheInfo], out: Path, data_cache: DataCache,
               extra: Evaluator | None) -> list[str]:
    """Train and save a batch's runs, each unless it is finished or another process holds its lock; returns each
    run's state. The locks of the runs trained are held until each is saved (its metrics written last)."""
    states = ["skipped"] * len(batch)
    todo = []
    with contextlib.ExitStack() as stack:
        for i, item in enumerate(batch):
            folder = out / "runs" / item.key
            if (folder / "metrics.json").exists():
                continue
            if not stack.enter_context(file_lock(out / "runs" / f"{item.key}.lock", wait=False)):
                states[i] = "elsewhere"
                continue
            if (folder / "metrics.json").exists():  # finished by another process since the first look
                (out / "runs" / f"{item.key}.lock").unlink(missing_ok=True)  # safe while held (`file_lock`)
                continue
            todo.append(i)
        if not todo:
            return states
        items = [batch[i] for i in todo]
        datas = [data_cache.load(item.run.cache, item.run.config.shots, item.run.config.seed, item.run.config.text)
                 for item in items]
        trained = train_runs([item.run for item in items], datas, extra, [item.group for item in items])
        for i, item, (config, outcome) in zip(todo, items, trained, strict=True):
            save_trained(out, item, infos[item.run.cache], config, outcome, data_cache.device)
            # safe while held: a process that opened it before finds metrics.json once it gets the lock
            (out / "runs" / f"{item.key}.lock").unlink()
            states[i] = "done"
    return states


def summarize(runs: list[GridRun], states: list[str], seconds: float, out: Path) -> dict[str, Any]:
    """A grid's summary: the runs, how many were done, skipped and left elsewhere, wall time, the table's path."""
    return {"runs": len(runs), **{state: states.count(state) for state in STATES}, "seconds": seconds,
            "results": str(out / RESULTS)}


def run_grid(spec: GridSpec, out: Path, device: str = "cpu", progress: bool = True, batch_runs: int = 1
             ) -> dict[str, Any]:
    """Run (or resume) a grid; returns the runs, how many were done, skipped (finished before) and left to another
    process training them at the same time (elsewhere), wall time and the results table's path. `batch_runs` > 1
    trains up to that many compatible runs together (`batches`). (On a Ray cluster: `ray_backend.run_grid_on_ray`,
    the same summary and folder.)"""
    runs = expand(spec)
    start = time.perf_counter()
    runs, states = with_extensions(runs, out, lambda todo: [state for _, state in iterate(todo, out, device, progress,
                                                                                          batch_runs=batch_runs)])
    return summarize(runs, states, time.perf_counter() - start, out)
