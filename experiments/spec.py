"""A grid's description and expansion: its axes (`GridSpec`, also read from a YAML or TOML file), and the cartesian
product of them as runs (`expand`), every option parsed and validated before anything runs; with tuning, each point
of the product is a tuning group of candidates (`tuning.Tuning`), and a preset's group grows by `extended`
candidates."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import tomllib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lathadapter.adapter.catalog import check_value, make_options, method_names, option_names, option_owner
from lathadapter.adapter.options import OptionError, changed_fields, parse_assignments, respelled, split_list
from lathadapter.adapter.trainer import SELECTIONS, TRAIN_VIEWS
from lathadapter.cache.store import seed_error
from lathadapter.cache.text import read_text
from lathadapter.experiments.run import CLASS_PROTOCOLS, TEXT_FEATURES, TUNE_SETS, TUNE_SETS_BEFORE, RunConfig
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
    has it, provided they all mean the same thing by it; not for a method given its own) to the values to try, as
    strings or Python values: each method parses them into its typed options."""

    caches: list[str]
    methods: list[str] = field(default_factory=lambda: ["lathadapter"])
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    classes: list[str] = field(default_factory=lambda: ["all"])
    text: list[str] = field(default_factory=lambda: ["coop"])
    select: list[str] = field(default_factory=lambda: ["last"])
    options: dict[str, list[Any]] = field(default_factory=dict)
    # Tuned options, keyed as `options`: every value is trained and the best by `tune_score` on the val images of
    # `tune_set` kept.
    tune: dict[str, list[Any]] = field(default_factory=dict)
    tune_preset: str | None = None  # a key of TUNE_PRESETS, e.g. "lr"
    tune_score: str = "auto"  # a TUNE_SCORE_CHOICES: what tuning chooses by (`resolve_score`)
    tune_set: str = "subset"  # a run.TUNE_SETS: the val images that score reads (`run.search_view`)
    train_views: list[str] = field(default_factory=lambda: ["augmented"])  # what training draws from (TRAIN_VIEWS)
    # Where an option or tuned axis, or the tuning preset, score or set, was given when not on the command line, for
    # messages: `options.NAME`, `tune.NAME`, `tune_preset`, `tune_score` or `tune_set` → the grid file
    # (`load_spec_file`); not a grid-file key.
    sources: dict[str, str] = field(default_factory=dict, compare=False)


# The keys of a grid file: GridSpec's fields but `sources`
FILE_KEYS = tuple(f.name for f in dataclasses.fields(GridSpec) if f.name != "sources")
# The list axes, each given as a list (or a comma-separated string) of values, each once; shots and seeds integers
LIST_AXES = ("caches", "methods", "shots", "seeds", "classes", "text", "select", "train_views")
INTEGER_AXES = {"shots": "[1, 2, 4, 8, 16]", "seeds": "[1, 2, 3]"}
NO_PRESET = "none"  # `--tune-preset none`, grid files' `tune_preset: none`: no preset (demo: no tuning)


@dataclass(frozen=True)
class GridRun:
    """One point of the grid: a cache and a run configuration; `tune` when it is a candidate of a tuning group."""

    cache: str
    config: RunConfig
    tune: Tuning | None = None


def _stderr(message: str) -> None:
    """A note for the user, one line on stderr (where `load_spec_file`'s go unless its caller takes them)."""
    print(message, file=sys.stderr)


def load_spec_file(path: Path, say: Callable[[str], None] = _stderr, replaced: Collection[str] = ()
                   ) -> dict[str, Any]:
    """Read grid axes from a YAML or TOML file (keys as the CLI options: caches, methods, shots, seeds, options...),
    each checked as the command line checks the same values (lists not empty, each value once, shots and seeds
    integers; option values read as the text `--set` would give, so `1` is true for a boolean as `--set NAME=1` is);
    errors name the file and the key. `replaced`: the keys the command line gives instead (`methods`, `tune_set`...;
    `options.NAME`, `tune.NAME` name by name), left out unread and unchecked, as the run never reads them; the file's
    syntax and key names are checked whole. `sources` records the file's option and tuned axes and its tuning
    settings (`GridSpec.sources`). An old value name (`tune_set: fewshot`) is read as its new one, and `say` gets a
    line naming it."""
    if not path.is_file():
        found = "is a folder" if path.is_dir() else "does not exist"
        raise OptionError(f"grid file {path} {found}; give a .yaml, .yml or .toml file")
    if path.suffix not in (".toml", ".yaml", ".yml"):  # before reading: a cache given as --config is binary
        raise OptionError(f"grid file {path}: expected a .yaml, .yml or .toml file")
    text = read_text(path, f"grid file {path}", OptionError)  # a leading BOM dropped: TOML refused it at 1:1
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise OptionError(f"grid file {path}: {_parse_error(error)}") from None
    valid = list(FILE_KEYS)
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
    where = f"grid file {path}"
    data = {key: value for key, value in data.items() if key not in replaced}
    spec: dict[str, Any] = {key: _file_axis(where, key, value) for key, value in data.items() if key in LIST_AXES}
    sources: dict[str, str] = {}
    for key in ("options", "tune"):
        values = data.get(key) or {}
        if not isinstance(values, dict):
            raise OptionError(f"grid file {path}: {key} must be a mapping of [METHOD.]OPTION to values; "
                              f"got a {type(values).__name__}")
        if key in data:
            spec[key] = {str(k): _file_values(where, f"{key} {k}", v) for k, v in values.items()
                         if f"{key}.{k}" not in replaced}
            sources.update({f"{key}.{k}": str(path) for k in spec[key]})
    spec.setdefault("options", {})
    spec["sources"] = sources
    preset = data.get("tune_preset")
    if preset is not None:
        if not isinstance(preset, str):
            raise OptionError(f"grid file {path}: tune_preset must be one name ({', '.join(TUNE_PRESETS)}, "
                              f"{NO_PRESET}); got a {type(preset).__name__}")
        spec["tune_preset"] = parse_preset(preset, f"{where}: tune_preset")
        sources["tune_preset"] = str(path)
    tune_set = data.get("tune_set")
    if tune_set is not None:
        if isinstance(tune_set, str):
            tune_set = respelled(f"grid file {path}: tune_set", tune_set, TUNE_SETS_BEFORE, say)
        if tune_set not in TUNE_SETS:
            raise OptionError(f"grid file {path}: tune_set {tune_set!r}: choose one of {', '.join(TUNE_SETS)}")
        spec["tune_set"] = tune_set
        sources["tune_set"] = str(path)
    score = data.get("tune_score")
    if score is not None:
        if score not in TUNE_SCORE_CHOICES:
            raise OptionError(f"grid file {path}: tune_score {score!r}: choose one of {', '.join(TUNE_SCORE_CHOICES)}")
        spec["tune_score"] = score
        sources["tune_score"] = str(path)
    return spec


def _shown(value: Any) -> str:
    """A grid file's value as its file spells it: `1.5`, `true`, `null`, `'one'`."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def _once(where: str, values: list[Any], shown: Any = _shown) -> None:
    """Each value of a list once (a value given twice would be one run listed twice)."""
    for index, value in enumerate(values):
        if value in values[:index]:
            raise OptionError(f"{where}: {shown(value)} is given twice; give each value once")


def _file_axis(where: str, key: str, value: Any) -> list[Any]:
    """A grid file's list axis `key`: a list, or a comma-separated string as on the command line; not empty, each
    value once, shots and seeds integers (`1.5`, `true` or `'one'` refused, as `--shots 1.5` is), methods and the
    word axes among their choices (as `--method`, `--classes`... are)."""
    items = value if isinstance(value, list) else split_list(value)
    example = INTEGER_AXES.get(key)
    if not items:
        raise OptionError(f"{where}: {key} is empty; give one or more values" + (f", e.g. {example}" if example
                                                                                   else ""))
    if example is not None:
        items = [_integer(f"{where}: {key}", item, example) for item in items]
    valid = _word_choices().get(key, ())
    for item in items if valid else ():
        if item not in valid:
            raise OptionError(f"{where}: {key} {_shown(item)}: choose one of {', '.join(valid)}")
    if key == "seeds" and (problem := seed_error(f"{where}: seeds", items)):
        raise OptionError(problem)
    _once(f"{where}: {key}", items)
    return items


def _word_choices() -> dict[str, tuple[str, ...]]:
    """The values a grid file's methods and word axes may take: those of `--method`, `--classes`, `--text`,
    `--select` and `--train-views`."""
    return {"methods": tuple(method_names()), "classes": CLASS_PROTOCOLS, "text": TEXT_FEATURES,
            "select": SELECTIONS, "train_views": TRAIN_VIEWS}


def _integer(where: str, value: Any, example: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        if isinstance(value, str):
            return int(value.strip())
    except ValueError:
        pass
    raise OptionError(f"{where} {_shown(value)}: expected integers, e.g. {example}")


def _file_values(where: str, key: str, value: Any) -> list[str]:
    """A grid file's values of option or tuned axis `key`, as the text the command line would give them (`true`,
    `0.001`), so that the option's one parser reads them as it reads `--set`: not empty, each value once."""
    items = value if isinstance(value, list) else split_list(value)
    if not items:
        raise OptionError(f"{where}: {key} is empty; give one or more values")
    texts = []
    for item in items:
        if isinstance(item, bool):
            texts.append(str(item).lower())
        elif isinstance(item, int | float | str):
            texts.append(str(item).strip())
        else:
            raise OptionError(f"{where}: {key}: {_shown(item)} is not a value; give a number, a word or true/false")
    _once(f"{where}: {key}", texts, str)
    return texts


def parse_preset(value: str, where: str = "--tune-preset") -> str | None:
    """A tuning preset's name (a key of TUNE_PRESETS), or None for `none`; else an error naming `where`."""
    if value == NO_PRESET:
        return None
    if value not in TUNE_PRESETS:
        raise OptionError(f"{where} {value}: unknown preset; valid: {', '.join(TUNE_PRESETS)}, {NO_PRESET}")
    return value


def refuse_untuned(given: dict[str, str], fix: str) -> None:
    """`--tune-score` and `--tune-set` say how tuned values are chosen: values of them (flag → value) `given` where
    nothing is tuned would change nothing, so they are refused rather than silently unused; `fix` says what tunes."""
    if given:
        named = " and ".join(f"{flag} {value}" for flag, value in given.items())
        raise OptionError(f"{named}: nothing is tuned; add {fix}, or drop {'them' if len(given) > 1 else 'it'}")


def override(axes: dict[str, Any], key: str, given: dict[str, list[Any]]) -> None:
    """Command-line option or tuned axes `given` (`key`: options or tune) over those of a grid file in `axes`, name
    by name: a name given on the command line is no longer the file's (`GridSpec.sources`)."""
    axes[key] = {**axes.get(key, {}), **given}
    for name in given:
        axes.get("sources", {}).pop(f"{key}.{name}", None)


def parse_tune(assignments: list[str]) -> dict[str, list[str]]:
    """`--tune [METHOD.]NAME=V1,V2,...` strings, parsed as `--set` axes are."""
    return parse_assignments(assignments, flag="--tune")


def _parse_error(error: Exception) -> str:
    """A parser's complaint on one line, with its line and column (TOML's message already has them)."""
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.YAMLError) and mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {getattr(error, 'problem', error)}"
    return f"invalid {'YAML' if isinstance(error, yaml.YAMLError) else 'TOML'}: {error}"


FLAGS = {"options": "--set", "tune": "--tune"}


def _given(spec: GridSpec, kind: str, key: str) -> str:
    """How the user gave option axis `key` of `kind` (options or tune), for messages: `--set KEY` (`--tune KEY`), or
    the grid file and its key (`GridSpec.sources`)."""
    source = spec.sources.get(f"{kind}.{key}")
    return f"{FLAGS[kind]} {key}" if source is None else f"grid file {source}: {kind} {key}"


def _setting(spec: GridSpec, key: str) -> str:
    """How the user gave `tune_preset`, `tune_score` or `tune_set`, for messages: its flag (`--tune-score`), or the
    grid file and its key (`GridSpec.sources`)."""
    source = spec.sources.get(key)
    return f"--{key.replace('_', '-')}" if source is None else f"grid file {source}: {key}"


def _check_option_axes(spec: GridSpec, kind: str = "options") -> None:
    """Every option axis of `kind` (`spec.options`, or `spec.tune`) names a method of the grid that has it; an
    unscoped name must mean one thing for every method of the grid that has it (else the error lists them and how to
    scope). Errors name the option as the user gave it (`_given`)."""
    for key in getattr(spec, kind):
        where = _given(spec, kind, key)
        scope, _, name = key.rpartition(".")
        if scope and scope not in spec.methods:
            raise OptionError(f"{where}: method {scope!r} is not in the grid's methods ({', '.join(spec.methods)})")
        targets = [scope] if scope else spec.methods
        having = [m for m in targets if name in option_names(m)]
        if not having:
            valid = sorted({o for m in targets for o in option_names(m)})
            if not valid:  # zeroshot: nothing to set
                raise OptionError(f"{where}: {', '.join(targets)} {'has' if len(targets) == 1 else 'have'} no "
                                  "options (training-free; `lathadapter list options METHOD` lists each method's)")
            raise OptionError(f"{where}: no method of the grid has option {name!r}; valid: {', '.join(valid)}")
        if not scope and len({option_owner(m, name) for m in having}) > 1:
            scoped = " or ".join(f"{m}.{name}=..." for m in having)
            raise OptionError(f"{where}: {', '.join(having)} each have an option {name!r} of their own, with "
                              f"different meanings; scope it to one method: {scoped}")
        values = getattr(spec, kind)[key]
        if kind == "tune" and len(values) == 1:  # a one-candidate group trained it once and labelled it `tuned`
            raise OptionError(f"{where}: one value ({values[0]}) leaves nothing to choose; tune two or more "
                              f"({name}=V1,V2), or fix it as an option (--set {name}={values[0]}; a grid file's "
                              "options)")
        try:  # each value's type and range, so that the error names where it was given
            for method, value in itertools.product(having, values):
                check_value(method, name, value)
        except OptionError as error:
            raise OptionError(f"{where}: {error}") from None


def tune_axes(spec: GridSpec) -> dict[str, list[Any]]:
    """The tuned options of the grid: `spec.tune` and, with `spec.tune_preset`, the preset's option of every method
    of the grid that has it, scoped to the method, over its own default × the preset's factors. All checked before
    anything runs: scoping as `--set` axes, and no option both a `--set` axis and tuned."""
    _check_option_axes(spec, "tune")
    tune = dict(spec.tune)
    preset = parse_preset(spec.tune_preset) if spec.tune_preset is not None else None
    if preset is not None:
        name, factors = TUNE_PRESETS[preset]
        for method in spec.methods:
            if name not in option_names(method):
                continue  # e.g. zeroshot and tip-adapter: nothing to tune, they run once
            given = [key for key, _ in _option_axes(method, spec.tune, keys=True) if key.rpartition(".")[2] == name]
            if given:
                raise OptionError(f"{_setting(spec, 'tune_preset')} {spec.tune_preset} tunes {name} of {method} "
                                  f"already; drop {_given(spec, 'tune', given[0])} or the preset")
            default = getattr(make_options(method), name)
            tune[f"{method}.{name}"] = ([Scaled(f) for f in factors] if default is None
                                        else [preset_value(default, f) for f in factors])
    for method in spec.methods:
        tuned = _given_once(spec, "tune", tune, method)
        names = [key.rpartition(".")[2] for key in tuned]
        fixed = {key.rpartition(".")[2]: key for key, _ in _option_axes(method, spec.options, keys=True)}
        both = sorted(set(fixed) & set(names))
        if both:
            key = tuned[names.index(both[0])]
            how = (_given(spec, "tune", key) if key in spec.tune
                   else f"{_setting(spec, 'tune_preset')} {spec.tune_preset}")
            raise OptionError(f"option {both[0]} of {method} is both a --set axis "
                              f"({_given(spec, 'options', fixed[both[0]])}) and tuned ({how}); give it one role")
    return tune


VERBS = {"options": "set", "tune": "tune"}


def _given_once(spec: GridSpec, kind: str, axes: dict[str, list[Any]], method: str) -> list[str]:
    """The keys of the axes of `kind` (options or tune) that apply to `method`, each option once: one given both
    unscoped and scoped (`lr` and `lathadapter.lr`, a grid file's and a flag's) is refused, as the run would take one
    and drop the other without a word."""
    keys = [key for key, _ in _option_axes(method, axes, ordered=False, keys=True)]
    names = [key.rpartition(".")[2] for key in keys]
    twice = [name for name in names if names.count(name) > 1]
    if twice:
        given = " and ".join(_given(spec, kind, k) for k, n in zip(keys, names, strict=True) if n == twice[0])
        raise OptionError(f"{given} both {VERBS[kind]} {twice[0]} of {method}; give it once")
    return keys


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
            shown = [" ".join(f"{n}={v}" for n, v in zip(names, given, strict=True)) for given in (seen[typed], values)]
            raise OptionError(f"--tune {' '.join(names)} of {method}: the values {shown[0]} and {shown[1]} are the "
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
            preset: tuple[Extension, list[Any], tuple[float, ...]] | None, tune_set: str = "subset") -> Tuning:
    """Candidate `index`'s `Tuning`, with its factor of the preset's option when a preset tunes the method."""
    if preset is None:
        return Tuning(names, typed, index, score, tune_set=tune_set)
    extension, values, factors = preset
    factor = factors[values.index(typed[index][names.index(extension.name)])]
    return Tuning(names, typed, index, score, extension, factor, tune_set=tune_set)


def expand(spec: GridSpec) -> list[GridRun]:
    """The cartesian product of the axes, each method's options parsed and validated before anything runs; with
    tuning, each point of the product is a tuning group of candidates (consecutive runs)."""
    empty = [name for name in LIST_AXES if not getattr(spec, name)]
    if empty:  # no run at all: a mistake, not an empty table
        raise OptionError(f"the grid has no runs: its {empty[0]} is empty; give one or more")
    valid_methods = method_names()
    for method in spec.methods:
        if method not in valid_methods:
            raise OptionError(f"unknown method {method!r}; valid methods: {', '.join(valid_methods)}")
    _check_option_axes(spec)
    for method in spec.methods:
        _given_once(spec, "options", spec.options, method)
    tune = tune_axes(spec)
    presets = _preset_extensions(spec)
    if spec.tune_score not in TUNE_SCORE_CHOICES:
        raise OptionError(f"--tune-score {spec.tune_score}: choose one of {', '.join(TUNE_SCORE_CHOICES)}")
    tune_set = TUNE_SETS_BEFORE.get(spec.tune_set, spec.tune_set)  # a Python caller's old name (the CLI's: noted)
    if tune_set not in TUNE_SETS:
        raise OptionError(f"--tune-set {spec.tune_set}: choose one of {', '.join(TUNE_SETS)}")
    if not spec.tune and spec.tune_preset in (None, NO_PRESET):  # a preset tunes, even where no method has its option
        given = {key: value for key, value in (("tune_score", spec.tune_score), ("tune_set", tune_set))
                 if value != getattr(GridSpec, key)}
        fix = "--tune [METHOD.]OPTION=V1,V2,... or --tune-preset lr"
        if any(key in spec.sources for key in given):  # a grid file's setting: the file can say what it tunes
            fix = f"a tune or tune_preset key to the grid file, or {fix}"
        refuse_untuned({_setting(spec, key): value for key, value in given.items()}, fix)
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
                                        _tuning(names, typed, index, score, presets.get(method), tune_set)
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

