"""A grid's caches: each checked before anything runs (`check_caches`, `check_tuning`), and the few-shot sets a
process trains on, each loaded once (`DataCache`)."""

from __future__ import annotations

import math
from pathlib import Path

from lathadapter.adapter.options import OptionError
from lathadapter.cache.store import CacheError, CacheInfo, CacheReader, FewShotData, test_only_message
from lathadapter.experiments.spec import GridRun


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
        if missing and info.counts["train"] == 0 and not info.subsets:  # a test-only cache: no rebuild gives subsets
            problems.append(test_only_message(cache, str(info.fields.get("dataset", Path(cache).stem))))
        elif missing:
            problems.append(f"{cache} holds no few-shot subset for {_subsets_text(missing)} (it holds: "
                            f"{_subsets_text(info.subsets) or 'none'}); rebuild it with `cache build --shots/--seeds` "
                            "that include them, or ask this command for --shots/--seeds it holds")
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
        if any(r.cache == cache and r.tune is not None and r.tune.tune_set == "split" for r in runs):
            if not whole_val:
                raise CacheError(f"--tune-set split scores on the whole val split, which {cache} does not hold; "
                                 "rebuild it with `lathadapter cache build --val split`, or use --tune-set subset")
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

