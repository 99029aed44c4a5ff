"""The field's four evaluation protocols (docs/data.md), each a grid with fixed axes over caches the user has built.

1. few-shot: all classes, shots 1/2/4/8/16, per dataset cache.
2. base-to-novel: 16 shots on the base half, base / novel / HM per dataset cache.
3. cross-dataset: fit on a source cache (16 shots, all classes), score each target's test set against the target's
   own class names, with the run's `--text` features; methods tied to the source classes report not applicable.
4. domain generalisation: fit on ImageNet, score ImageNet variants against the source classes their wnids (or
   names) map to, so the 200-class -A and -R sets use the matching 200 columns, scored as a 200-class classifier
   (`Method.logits_over`); a name several classes share is refused, never mapped to one of them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from lathadapter.adapter.evaluate import Scores, evaluate, evaluate_mapped
from lathadapter.adapter.methods.base import Method
from lathadapter.adapter.options import OptionError
from lathadapter.cache.store import REBUILD, CacheError, CacheReader, FewShotData
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch
from lathadapter.experiments.run import RunOutcome
from lathadapter.experiments.spec import GridRun, GridSpec
from lathadapter.experiments.table import finished_runs

PROTOCOLS = ("few-shot", "base-to-novel", "cross-dataset", "domain")
ALL_SHOTS = [1, 2, 4, 8, 16]


def _name(text: str) -> str:
    return text.replace("_", " ").strip().lower()


def _shown(keys: list[str]) -> str:
    return ", ".join(repr(key) for key in keys[:5]) + (" ..." if len(keys) > 5 else "")


def map_classes(source: tuple[list[str], list[str]], target: tuple[list[str], list[str]], source_path: str,
                target_path: str) -> list[int]:
    """For each target class, the index of the same source class, from each cache's (class names, wnids): by wnid
    when both caches have wnids, else by cleaned, lower-cased name. A key that names several classes (open_clip's
    ImageNet names repeat "missile" and "sunglasses") is refused rather than mapped to one of them."""
    (source_names, source_wnids), (target_names, target_wnids) = source, target
    if source_wnids and target_wnids:
        keys_source, keys_target, by = source_wnids, target_wnids, "wnid"
    else:
        keys_source = [_name(n) for n in source_names]
        keys_target, by = [_name(n) for n in target_names], "name"
    wanted = set(keys_target)
    repeated = [(path, sorted(key for key, n in Counter(keys).items() if n > 1 and key in wanted))
                for path, keys in ((target_path, keys_target), (source_path, keys_source))]
    for path, keys in repeated:
        if keys:
            fix = ("build both caches with wnids (the imagenet dataset readers store them) so classes map by wnid"
                   if by == "name" else f"the file is damaged; rebuild it with `{REBUILD}`")
            raise CacheError(f"{target_path}: cannot map its classes onto the source {source_path} by {by}: "
                             f"{path} has several classes with the {by} {_shown(keys)}; {fix}")
    lookup = {key: i for i, key in enumerate(keys_source)}
    missing = [key for key in keys_target if key not in lookup]
    if missing:
        raise OptionError(f"--target {target_path}: {len(missing)} of its {len(keys_target)} classes have no class "
                          f"with the same {by} in the source {source_path}: {_shown(missing)}; a domain target "
                          "holds the source's classes (all or some), matched by wnid, else by name: score a dataset "
                          "of other classes with `protocol cross-dataset`")
    return [lookup[key] for key in keys_target]


def class_mapping(source: FewShotData, target: FewShotData, target_path: str,
                  source_path: str = "source cache") -> list[int]:
    """For each target class, the index of the same source class (`map_classes`)."""
    return map_classes((source.class_names, source.wnids), (target.class_names, target.wnids), source_path,
                       target_path)


def check_mapping(source_path: str, target_paths: list[str]) -> None:
    """Map every target's classes onto the source's (`map_classes`) before anything trains, so that a target that
    cannot be mapped is refused at once; reads the class names and wnids only."""
    with CacheReader(source_path) as reader:
        source = reader.classes()
    for path in target_paths:
        with CacheReader(path) as reader:
            map_classes(source, reader.classes(), source_path, path)


def target_name(path: str) -> str:
    """A target's column in the results (`target`): its cache's dataset name (fingerprint field), else the file's
    stem."""
    with CacheReader(path) as reader:
        return str(reader.info().fields.get("dataset", Path(path).stem))


def check_target_names(paths: list[str]) -> None:
    """Refuse, before anything trains, two targets of one dataset name (one column each: the second would overwrite
    the first, and the average over targets would cover one) and a target named `source` (the source's own column)."""
    seen: dict[str, str] = {}
    for path in paths:
        name = target_name(path)
        if name == "source":
            raise OptionError(f"--target {path}: its dataset name is 'source', the column of the source cache's own "
                              "test set; rebuild it under another --dataset name")
        if name in seen:
            raise OptionError(f"--target {path} and --target {seen[name]} are both dataset {name!r}; each target is "
                              "one column, named by its dataset: give each dataset once")
        seen[name] = path


# What identifies the encoder a cache's features come from (fingerprint fields, `cache.encode.load_model`), beside
# the feature width: a transfer target's features must come from the source's encoder.
ENCODER_FIELDS = ("model", "model_config", "pretrained", "checkpoint_sha256", "quick_gelu")


def _encoder(fields: dict[str, Any], dim: int) -> dict[str, Any]:
    return {**{key: fields.get(key) for key in ENCODER_FIELDS}, "quick_gelu": bool(fields.get("quick_gelu")),
            "dim": dim}


def _described(encoder: dict[str, Any]) -> str:
    """An encoder in a few words: model, weights, QuickGELU, feature width."""
    weights = encoder["pretrained"]
    parts = ([f"checkpoint sha256 {str(encoder['checkpoint_sha256'])[:12]}"] if weights == "file" else
             ["random weights"] if weights == "none" else [f"{weights} weights"] if weights else [])
    parts += ["QuickGELU"] if encoder["quick_gelu"] else []
    parts.append(f"dim {encoder['dim']}")
    return f"{encoder['model'] or 'an unnamed model'} ({', '.join(parts)})"


def check_encoders(source_path: str, target_paths: list[str]) -> None:
    """Refuse, before anything trains, a target whose features another encoder made (model, weights, QuickGELU or
    feature width other than the source's): a method fitted on one encoder's features scores another's as noise,
    or fails on their width. Reads each cache's summary (`CacheInfo`: fingerprint fields, width) only."""

    def encoder(path: str) -> dict[str, Any]:
        with CacheReader(path) as reader:
            info = reader.info()
        return _encoder(info.fields, info.embed_dim)

    source = encoder(source_path)
    for path in target_paths:
        target = encoder(path)
        if target != source:
            described = _described(target), _described(source)
            differs = ", ".join(key for key in target if target[key] != source[key])
            detail = f" (they differ in {differs})" if described[0] == described[1] else ""
            raise OptionError(f"--target {path} was encoded by {described[0]}, the source {source_path} by "
                              f"{described[1]}{detail}: a transfer target must use the source's encoder; build it "
                              "with the source's --model and --pretrained")


# Bumped when how targets are scored changes, so that a rerun does not keep results scored the old way. v2: each run's
# own text features (before: always coop), subset targets normalised over their own classes (before: LatHAdapter's
# fused softmaxes over every source class).
TARGET_SCORING = "2"


def targets_salt(paths: list[str], mapped: bool) -> str:
    """What the target caches add to each run key (a hash of their fingerprints in the order of `paths`, whether
    classes are mapped, and the version of how targets are scored, `TARGET_SCORING`): a changed target set is a
    different run, and `target_order` fixes the order. Reads each cache's fingerprint only."""
    fingerprints = []
    for path in paths:
        with CacheReader(path) as reader:
            fingerprints.append(reader.fingerprint)
    digest = hashlib.sha256("|".join(fingerprints).encode()).hexdigest()[:12]
    return f"|{digest}{'m' if mapped else ''}|scoring{TARGET_SCORING}"


def _scored_targets(folder: Path, fingerprint: str) -> tuple[str, ...] | None:
    """The target names a finished run of the source `fingerprint` scored, in the order its `metrics.json` lists them
    (the order its key hashed them in); None for a run of another source, no transfer run, or unreadable files (the
    results table names those)."""
    try:
        scored = json.loads((folder / "metrics.json").read_text()).get("targets")
        if not isinstance(scored, dict) or json.loads((folder / "config.json").read_text()).get(
                "cache_fingerprint") != fingerprint:
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return tuple(name for name in scored if name != "source")


def target_order(paths: list[str], source: str, out: Path) -> list[str]:
    """The targets in the order their fingerprints are hashed (`targets_salt`), so that any order of `--target`
    names the same runs: the order the folder's finished transfer runs of this source over the same dataset names
    were keyed with (the most common, should several be there), else sorted by dataset name (the report's column
    order). A folder keyed in the order given before this rule existed thus resumes in any order."""
    names = {target_name(path): path for path in paths}
    with CacheReader(source) as reader:
        fingerprint = reader.fingerprint
    orders = Counter(scored for folder in finished_runs(out / "runs")
                     if set(scored := _scored_targets(folder, fingerprint) or ()) == set(names))
    order = orders.most_common(1)[0][0] if orders else sorted(names)
    return [names[name] for name in order]


class Targets:
    """Target caches' test sets, loaded once where runs train, and the evaluation of a trained method on each.

    A cross-dataset target is scored against its own class text features of the run's `--text` (`coop` or
    `ensemble`, as the source is): they are loaded per text value, once (`texts`: those loaded at once; another is
    loaded when a run first asks for it), sharing the target's test features. A domain target is scored against the
    source classes its classes map to (`class_mapping`), through the method's scores of those classes alone
    (`evaluate_mapped`)."""

    def __init__(self, paths: list[str], device: str, mapped: bool, texts: tuple[str, ...] | list[str] = ("coop",)
                 ) -> None:
        self.mapped = mapped
        self.device = device
        self.paths = list(paths)
        self.sets: dict[tuple[str, str], FewShotData] = {}
        self.names: dict[str, str] = {}
        for path in self.paths:
            self.names[path] = target_name(path)
            for text in texts:
                self.target(path, text)

    def target(self, path: str, text: str) -> FewShotData:
        """Target `path`'s test set with its class text features of `text`, loaded once per (path, text)."""
        if (path, text) not in self.sets:
            loaded = next((data for (p, _), data in self.sets.items() if p == path), None)
            with CacheReader(path) as reader:
                if loaded is None:
                    self.sets[path, text] = reader.load_test(text=text, device=self.device)
                else:  # the test features are shared; only the text differs
                    raw = reader.text_raw(text)
                    self.sets[path, text] = replace(loaded, text_features=reader.text_features(text).to(self.device),
                                                    text_raw=None if raw is None else raw.to(self.device))
        return self.sets[path, text]

    def columns(self, path: str, source: FewShotData, text: str, source_path: str) -> list[int] | None:
        """The source classes target `path`'s classes map to (a domain target: `class_mapping`); None for a
        cross-dataset target, scored against its own classes' text features."""
        return class_mapping(source, self.target(path, text), path, source_path) if self.mapped else None

    def scores(self, path: str, method: Method, source: FewShotData, text: str, source_path: str) -> Scores | None:
        """`method`'s accuracy, ECE and bins on target `path`'s test set, its classes those of `text`: against the
        source classes they map to (domain, `evaluate_mapped`) or their own text features (cross-dataset); None where
        the method cannot score them. `source`: the run's few-shot set, from the cache at `source_path`."""
        target = self.target(path, text)
        columns = self.columns(path, source, text, source_path)
        if columns is not None:
            return evaluate_mapped(method, target.test_features, target.test_labels, columns)
        return evaluate(method, target.test_features, target.test_labels, target.text_features)

    def __call__(self, grid_run: GridRun, outcome: RunOutcome, source: FewShotData) -> dict[str, Any]:
        """The run's accuracy (`targets`), ECE (`targets_ece`) and the ECE's bins (`targets_reliability`) on its source
        test set and on each target; each target's cache fingerprint (`targets_fingerprint`) and path
        (`targets_cache`), and the `protocol` (what `trained.load` checks and scores a target by)."""
        provenance = {"protocol": "domain" if self.mapped else "cross-dataset",
                      "targets_fingerprint": {self.names[path]: self.target(path, grid_run.config.text).fingerprint
                                              for path in self.paths},
                      "targets_cache": {self.names[path]: path for path in self.paths}}
        if outcome.metrics["diverged"] is not None:  # no accuracy on any target either
            nothing = {"source": None, **{self.names[path]: None for path in self.paths}}
            return {"targets": nothing, "targets_ece": dict(nothing), "targets_reliability": dict(nothing),
                    **provenance}
        scored = {self.names[path]: self.scores(path, outcome.method, source, grid_run.config.text, grid_run.cache)
                  for path in self.paths}
        return {"targets": {"source": outcome.metrics["accuracy"]["all"],
                            **{name: None if s is None else s.accuracy for name, s in scored.items()}},
                "targets_ece": {"source": outcome.metrics["ece"]["all"],
                                **{name: None if s is None else s.ece for name, s in scored.items()}},
                "targets_reliability": {"source": outcome.metrics["reliability"]["all"],
                                        **{name: None if s is None else s.reliability.record()
                                           for name, s in scored.items()}},
                **provenance}


def protocol_spec(protocol: str, caches: list[str], methods: list[str], seeds: list[int],
                  options: dict[str, list[str]], text: str = "coop", shots: list[int] | None = None,
                  tune: dict[str, list[str]] | None = None, tune_preset: str | None = None,
                  train_views: str = "augmented", tune_score: str = "auto", tune_set: str = "subset") -> GridSpec:
    """The grid axes a protocol fixes; `tune`, `tune_preset` and `tune_score` tune options as a grid does
    (`GridSpec`)."""
    if protocol not in PROTOCOLS:
        raise OptionError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if not caches:
        raise OptionError(f"protocol {protocol} needs at least one --cache")
    tuning = {"tune": dict(tune or {}), "tune_preset": tune_preset, "train_views": [train_views],
              "tune_score": tune_score, "tune_set": tune_set}
    if protocol == "few-shot":
        return GridSpec(caches, methods, shots or ALL_SHOTS, seeds, ["all"], [text], ["last"], options, **tuning)
    if protocol == "base-to-novel":
        return GridSpec(caches, methods, shots or [16], seeds, ["base"], [text], ["last"], options, **tuning)
    if len(caches) != 1:
        raise OptionError(f"protocol {protocol} trains on one source cache; got {len(caches)} --cache "
                          f"({', '.join(caches)}): give one --cache and the others as --target")
    return GridSpec(caches, methods, shots or [16], seeds, ["all"], [text], ["last"], options, **tuning)


def run_protocol(protocol: str, caches: list[str], out: Path, methods: list[str], seeds: list[int],
                 targets: list[str] | None = None, options: dict[str, list[str]] | None = None,
                 text: str = "coop", shots: list[int] | None = None, execution: Execution | None = None,
                 progress: bool = True, tune: dict[str, list[str]] | None = None,
                 tune_preset: str | None = None, train_views: str = "augmented", tune_score: str = "auto",
                 tune_set: str = "subset") -> dict[str, Any]:
    """Run (or resume) one protocol into `out` under `execution` (`launch.launch`, as a grid); its results table is
    `out/results.csv`. Returns the counts of runs done, skipped (finished before) and left to another process
    (elsewhere) and the seconds it took, as a grid does. With `tune` or `tune_preset`, the tuned options are chosen
    per cell by `tune_score` (auto: the HM of a pseudo-base/pseudo-novel split of the base classes for base-to-novel,
    val accuracy otherwise) over the val images of `tune_set` (`run.TUNE_SETS`), a preset's grid extended past its
    edges (`launch.with_extensions`). Cross-dataset and domain runs are scored on the `targets` too, which every
    process that trains loads itself (`Targets`), keyed in the order `target_order` fixes (any order given resumes
    `out`); a target encoded by another encoder than the source's
    (`check_encoders`), two targets of one dataset name (`check_target_names`), or a domain target whose classes
    cannot be mapped onto the source's, is refused before anything trains."""
    spec = protocol_spec(protocol, caches, methods, seeds, options or {}, text, shots, tune, tune_preset, train_views,
                         tune_score, tune_set)
    salt, factory = "", None
    if protocol in ("cross-dataset", "domain"):
        mapped = protocol == "domain"
        if not targets:
            raise OptionError(f"protocol {protocol} needs at least one --target cache (the datasets the source's runs "
                              "are scored on)")
        check_target_names(list(targets))
        targets = target_order(list(targets), caches[0], out)
        salt = targets_salt(targets, mapped)
        check_encoders(caches[0], targets)
        if mapped:
            check_mapping(caches[0], targets)
        # absolute: loaded where the runs train, maybe in another folder (`--backend ray`: a cluster's nodes)
        factory = functools.partial(Targets, [os.path.abspath(t) for t in targets], mapped=mapped,
                                    texts=tuple(spec.text))
    summary = launch(spec, out, execution, progress=progress, extra_factory=factory, key_salt=salt)
    return {"protocol": protocol, **summary}
