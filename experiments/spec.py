"""A grid's description and expansion: its axes (`GridSpec`, also read from a YAML or TOML file), and the cartesian
product of them as runs (`expand`), every option parsed and validated before anything runs; with tuning, each point
of the product is a tuning group of candidates (`tuning.Tuning`), and a preset's group grows by `extended`
candidates."""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lathadapter.adapter.catalog import make_options, method_names, option_names, option_owner
from lathadapter.adapter.options import OptionError, changed_fields, parse_assignments, split_list
from lathadapter.experiments.run import TUNE_SETS, RunConfig
from lathadapter.experiments.tuning import (
    PRESET_EXTENSIONS,
    TUNE_PRESETS,
    TUNE_SCORE_CHOICES,
    Extension,
    Scaled,
    Tuning,
    preset_value,
    resolve_score,
)


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
                                        else [preset_value(default, f) for f in factors])
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

