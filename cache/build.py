"""`lathadapter cache build`: one encoder pass over a dataset into a fingerprinted, resumable HDF5 cache.

The build writes `<out>.tmp`, flushing as it goes, while it holds `<out>.lock`; an interrupted build resumes from it
and encodes only the rows not yet encoded (and retries the images it skipped as unreadable); the finished file is
renamed into place. Rebuilding over a different cache needs `force`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lathadapter.cache.datasets import (
    DATASETS,
    DatasetError,
    DatasetSplits,
    check_template,
    class_folder_roots,
    load_dataset,
    reads_root,
    unread_root,
)
from lathadapter.cache.encode import (
    Augmentation,
    ClipModel,
    DecodeWarnings,
    ImageRows,
    check_model,
    check_precision,
    collate,
    encode_images,
    encode_texts,
    image_problem,
    load_model,
    resolve_device,
)
from lathadapter.cache.sampling import fewshot_indices, val_shots_indices
from lathadapter.cache.store import (
    DEFAULT_CACHE_DIR,
    FINGERPRINT_VAL,
    READABLE_SCHEMAS,
    SCHEMA_VERSION,
    SPLITS,
    CacheLayout,
    create,
    finalize,
    fingerprint_of,
    mark_skipped,
    missing_rows,
    seed_error,
    skipped_losses,
    skipped_mask,
    unwritten_rows,
    write_rows,
)
from lathadapter.cache.templates import ensemble_templates, load_attributes, prompt
from lathadapter.progress import progress_display

__all__ = ["DEFAULT_CACHE_DIR", "DEFAULT_SHOTS", "DEFAULT_SEEDS", "VAL_CHOICES", "BuildError", "BuildResult", "build",
           "build_lock"]

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
FLUSH_SECONDS = 10.0  # how often encoded rows are flushed to the temporary file (what a resume can reuse)
MISSING_LISTED = 3  # missing or unreadable images named in the error before any is encoded
STAT_THREADS = 16  # concurrent checks of the listed images (each a round trip on a network file system)
LOSSES_LISTED = 5  # how many lost classes a failed `--skip-bad` build names
# `--val`: the union of the few-shot val subsets, or the whole val split (Tip-Adapter's official search set); the
# fingerprint spells them as the option did before stop 27 (`FINGERPRINT_VAL`), and those old names are still read.
VAL_CHOICES = ("subset", "split")
VAL_BEFORE = {old: new for new, old in FINGERPRINT_VAL.items()}


class BuildError(ValueError):
    """A build option or output path is invalid, an image cannot be read, `--skip-bad` would leave a split or class
    without images, another build holds the output, or the output would overwrite a different cache."""


class BuildOptionError(BuildError):
    """A `cache build` option value outside its range or choices: a usage mistake (the CLI exits 2, not 1)."""

    exit_code = 2  # usage, as `OptionError`


@dataclass
class BuildStats:
    """Where a build's time went: waiting for decoded and transformed images, encoding, writing."""

    images: int = 0
    skipped: int = 0
    load_seconds: float = 0.0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    text_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        busy = self.load_seconds + self.encode_seconds + self.write_seconds
        return self.images / busy if busy > 0 else 0.0


@dataclass
class BuildResult:
    """What a build did: the cache path, `built` / `resumed` / `up to date`, timings and notes for the user."""

    path: Path
    status: str
    stats: BuildStats
    notes: list[str] = field(default_factory=list)


def val_choice(val: str) -> str:
    """`--val`'s value as `VAL_CHOICES` names it (an old name, `VAL_BEFORE`, read as its new one), else a
    BuildOptionError naming the choices."""
    val = VAL_BEFORE.get(val, val)
    if val not in VAL_CHOICES:
        raise BuildOptionError(f"--val {val!r} is not valid; choose subset (the few-shot val subsets only) or split "
                               "(the whole val split, Tip-Adapter's official search set)")
    return val


MAX_VIEWS = 1000  # augmented views per train image a build accepts (`check_options`)


def check_options(shots: Sequence[int], seeds: Sequence[int], views: int, batch_size: int, workers: int,
                  val: str = "subset", precision: str = "fp32", template: str | None = None,
                  device: str | None = None, seed: int = 0) -> None:
    """Refuse option values outside their range or choices (`BuildOptionError`, `ModelOptionError`,
    `DatasetOptionError`: usage mistakes) and a device this machine lacks (`ModelError`), before anything is read,
    written or loaded."""
    resolve_device(device)
    check_precision(precision)
    check_template(template)
    val_choice(val)
    if not shots or any(int(k) < 1 for k in shots):
        raise BuildOptionError(f"--shots {','.join(map(str, shots))}: give one or more shot counts >= 1, "
                               "e.g. 1,2,4,8,16")
    if not seeds:
        raise BuildOptionError("--seeds: give one or more seeds, e.g. 1,2,3")
    for option, values in (("--seeds", seeds), ("--seed", [seed])):
        if problem := seed_error(option, values):
            raise BuildOptionError(problem)
    for option, value, least in (("--views", views, 0), ("--batch-size", batch_size, 1), ("--workers", workers, 0)):
        if value < least:
            raise BuildOptionError(f"{option} {value}: must be at least {least}")
    if views > MAX_VIEWS:  # a larger count ended in HDF5's own error (2**63: "unable to get the next power of 2")
        raise BuildOptionError(f"--views {views}: must be at most {MAX_VIEWS} (each view is one more encoder pass "
                               "over the train images; the field's recipes use 10)")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), counted as torch's DataLoader does."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_out(out: Path, name: str, tree: Path | None = None) -> None:
    """Refuse an output path that cannot become a cache file, before a model is loaded or an image encoded; a folder
    is answered with the path of dataset `name`'s cache in it. Inside a `folder:` `tree`'s class folders (the default
    `caches/` of `folder:.`) the cache's folder would be read as a class on the next build, which a rerun then
    refuses (a class without images), so that is refused too."""
    if out.is_dir():
        raise BuildError(f"--out {out} is a folder; give the cache file's path, e.g. {out / f'{name}.h5'}")
    target = Path(os.path.abspath(out))
    for folder in map(os.path.abspath, class_folder_roots(tree) if tree is not None else []):
        if target.is_relative_to(folder):
            read = target.relative_to(folder).parts[0]
            beside = Path(os.path.abspath(tree)).parent / "caches" / f"{name}.h5"
            raise BuildError(f"--out {out} lies inside folder:{tree}, whose folders are its classes: a rerun or a "
                             f"resumed build would read {read!r} as one; give an --out outside the tree, e.g. "
                             f"--out {beside}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BuildError(f"--out {out}: {parent} is a file, not a folder")
            return


def _is_file(path: str) -> bool:
    """Whether `path` is a file (one stat; a round trip on a network file system)."""
    return os.path.isfile(path)


def split_source(dataset: str, splits: DatasetSplits) -> str:
    """What lists `dataset`'s images, for an error about them: its split file, or the dataset (a folder listing)."""
    spec = DATASETS.get(dataset)
    if dataset.startswith("split:"):
        return f"the split file {dataset.removeprefix('split:')}"
    if spec is not None and spec.kind == "split":
        return f"the split file {splits.folder / spec.split_file}"
    if spec is not None and spec.kind == "aircraft":
        return f"{splits.folder}/images_variant_<split>.txt"
    return dataset


def _check_images(splits: DatasetSplits, indices: dict[str, list[int]], source: str) -> None:
    """Refuse, before any image is encoded, a build whose `source` lists images that are not there or that Pillow
    cannot open (an empty file, `Thumbs.db` or macOS's `._photo.jpg` in a split file), naming how many and the first
    few (in split order): encoding met them one at a time, the test split's last, after the train views' minutes or
    hours. A stat and a header read a listed image, `STAT_THREADS` at a time: 0.5-1 s per 10k JPEGs on a local
    disk, but a network round trip each (~0.5 ms: minutes for ImageNet's 1.33M one at a time) on NFS. A file cut
    short after its header passes (decoding each image here would double the build's decoding); the build stops
    at it, naming it, and a rerun resumes."""
    items = {"train": splits.train, "val": splits.val, "test": splits.test}
    paths = [items[split][i][0] for split in SPLITS for i in indices[split]]
    size = max(1, math.ceil(len(paths) / (4 * STAT_THREADS)))
    chunks = [paths[start:start + size] for start in range(0, len(paths), size)]

    def problems(chunk: list[str]) -> list[tuple[str, str | None]]:
        found = []
        for path in chunk:
            full = os.path.join(splits.folder, path)
            if not _is_file(full):
                found.append((path, None))  # missing
            elif (problem := image_problem(Path(full))) is not None:
                found.append((path, problem))
        return found

    # a header over Pillow's size limit warns without naming the file: decoding it names it (`DecodeWarnings`). The
    # filter is set here, in this thread alone: `warnings.catch_warnings` is not thread-safe before Python 3.14
    with warnings.catch_warnings(), ThreadPoolExecutor(STAT_THREADS) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        found = [problem for chunk in pool.map(problems, chunks) for problem in chunk]
    missing = [path for path, problem in found if problem is None]
    if missing:
        shown = ", ".join(missing[:MISSING_LISTED]) + (" ..." if len(missing) > MISSING_LISTED else "")
        raise BuildError(f"{len(missing)} of the images listed by {source} are missing under {splits.folder}: "
                         f"{shown}; fix the split source or restore the images, or pass --skip-bad to leave them "
                         "out (they are listed in the cache)")
    if found:
        shown = ", ".join(f"{splits.folder / path} ({problem})" for path, problem in found[:MISSING_LISTED])
        raise BuildError(f"{len(found)} of the images listed by {source} cannot be read: {shown}"
                         f"{' ...' if len(found) > MISSING_LISTED else ''}; fix or remove them, or pass --skip-bad "
                         "to leave them out (they are listed in the cache)")


@contextmanager
def build_lock(out: Path) -> Iterator[Path]:
    """Hold `<out>.lock` (an exclusive, non-blocking flock holding the builder's PID) while a build writes
    `<out>.tmp`, so that a second build of the same `out` stops at once instead of destroying the first one's file.

    The OS releases a flock when its holder dies, so the lock file a killed build leaves behind does not block the
    rerun that resumes it. The file is removed on release; a builder that locked a file just removed retries."""
    path = out.with_name(out.name + ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BuildError(f"another build (PID {holder}) is writing {out}: its lock file {path} is held. Wait for "
                             "it to finish, or stop it (a rerun resumes its work)") from None
        try:
            current = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def check_test_split(splits: DatasetSplits, dataset: str) -> None:
    """Refuse, before the model loads, a dataset whose test split is empty or lacks a class: a run on its cache trained
    and then divided by zero test images (its accuracy, or the novel half's in base-to-novel)."""
    present = {label for _, label, _ in splits.test}
    absent = [name for label, name in enumerate(splits.class_names) if label not in present]
    if not splits.test:
        raise DatasetError(f"--dataset {dataset}: its test split is empty; every class needs test images (a split "
                           "file's \"test\" list, a folder: tree's test/<class>/ images)")
    if absent:
        shown = ", ".join(map(repr, absent[:MISSING_LISTED])) + (" ..." if len(absent) > MISSING_LISTED else "")
        raise DatasetError(f"--dataset {dataset}: its test split has no image of {len(absent)} of "
                           f"{len(splits.class_names)} classes ({shown}); every class needs test images (a split "
                           "file's \"test\" list, a folder: tree's test/<class>/ images)")


def shortfall_notes(splits: DatasetSplits, shots: Sequence[int]) -> list[str]:
    """A note for each shot count above some class's train images: CoOp's sampler then takes all of that class's
    images, so the "K-shot" subset holds fewer (a subset labelled 50 shots held 8 a class, silently). A class the
    split source lists without train images (in val or test alone) counts, with 0."""
    if splits.test_only or not splits.train:
        return []
    counts = dict.fromkeys(range(len(splits.class_names)), 0)
    for _, label, _ in splits.train:
        counts[label] += 1
    poorest = min(counts, key=lambda label: (counts[label], label))
    notes = []
    for k in sorted(set(shots)):
        short = [label for label, n in counts.items() if n < k]
        if short:
            notes.append(f"warning: --shots {k}: {len(short)} of {len(counts)} classes have fewer than {k} train "
                         f"images (class {splits.class_names[poorest]!r} has {counts[poorest]}); their {k}-shot "
                         "subsets hold all of their images, as CoOp's sampler does")
    return notes


def overlap_notes(splits: DatasetSplits) -> list[str]:
    """A warning for each pair of splits that share an image path: a test image also in train or val reaches
    training, tuning or `--select val`, and its test accuracy is no longer held out. Split files are never
    regenerated (docs/data.md), so this warns rather than refuses; the fix is in the split source."""
    paths = {name: {path for path, _, _ in items} for name, items in
             (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    notes = []
    for first, second in (("train", "test"), ("val", "test"), ("train", "val")):
        shared = sorted(paths[first] & paths[second])
        if shared:
            count = "1 image is" if len(shared) == 1 else f"{len(shared)} images are"
            notes.append(f"warning: {count} in both the {first} and the {second} split of "
                         f"{splits.name} (e.g. {shared[0]!r}): the {second} split is not held out from the {first} "
                         "split; check the split source")
    return notes


def plan_layout(splits: DatasetSplits, shots: Sequence[int], seeds: Sequence[int], full_train: bool,
                val_all: bool = False,
                ) -> tuple[dict[str, list[int]], dict[tuple[int, int], tuple[list[int], list[int]]],
                           dict[tuple[int, int], list[int]]]:
    """Which train and val items the cache holds (indices into the split lists, sorted), each few-shot subset as
    rows of those, in Dassl's order, and with `val_all` LP++'s own K-shot val set of each (`val_shots_indices`).
    Train holds the union of the subsets, or everything with `full_train`; val the union of the val subsets, or
    everything with `val_all`."""
    if splits.test_only:
        return {"train": [], "val": [], "test": list(range(len(splits.test)))}, {}, {}
    train_labels = [label for _, label, _ in splits.train]
    val_labels = [label for _, label, _ in splits.val] if splits.val_subsets else None
    draws = {(k, s): fewshot_indices(train_labels, val_labels, k, s) for k in shots for s in seeds}
    train = list(range(len(splits.train))) if full_train else sorted(set().union(*(t for t, _ in draws.values())))
    val = list(range(len(splits.val))) if val_all else sorted(set().union(*(v for _, v in draws.values())))
    train_row = {index: row for row, index in enumerate(train)}
    val_row = {index: row for row, index in enumerate(val)}
    subsets = {key: ([train_row[i] for i in t], [val_row[i] for i in v]) for key, (t, v) in draws.items()}
    val_shots = ({key: val_shots_indices(train_labels, val_labels, *key) for key in draws}  # val rows = indices
                 if val_all and val_labels else {})
    return {"train": train, "val": val, "test": list(range(len(splits.test)))}, subsets, val_shots


def _fingerprint(splits: DatasetSplits, clip: ClipModel, templates: list[str], phrases: list[str], views: int,
                 seed: int, shots: Sequence[int], seeds: Sequence[int], full_train: bool,
                 val: str = "subset", augmentation: Augmentation = Augmentation()) -> dict[str, object]:
    return {
        **clip.fields,
        "augmentation": augmentation.fields(),
        "dataset": splits.name,
        "dataset_kind": splits.kind,
        "image_dir": splits.image_dir,
        "split_sha256": splits.source_sha256,
        "templates": templates,
        "attributes_sha256": hashlib.sha256("\n".join(phrases).encode()).hexdigest(),
        "views": views,
        "seed": seed,
        "shots": [] if splits.test_only else sorted(set(shots)),
        "seeds": [] if splits.test_only else sorted(set(seeds)),
        "full_train": full_train and not splits.test_only,
        "val": FINGERPRINT_VAL["subset" if splits.test_only else val],
    }


def _stored_fingerprint(path: Path) -> tuple[dict[str, object] | None, bool]:
    """The fingerprint fields and completeness of an existing cache file of the current schema (None when it is not
    a readable cache, or one of an older schema: see `_stored_schema`)."""
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs.get("schema_version", 0)) != SCHEMA_VERSION:
                return None, False
            return json.loads(f.attrs["fingerprint_json"]), bool(f.attrs.get("complete", False))
    except (OSError, KeyError, ValueError):
        return None, False


def _stored_schema(path: Path) -> int:
    """The schema version of an existing cache file (0 when it is not a readable lathadapter cache)."""
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("schema_version", 0))
            return version if version in READABLE_SCHEMAS and "fingerprint_json" in f.attrs else 0
    except (OSError, KeyError, ValueError):
        return 0


def _left_to_encode(temporary: Path, fields: dict[str, object],
                    indices: dict[str, list[int]]) -> dict[str, list[int]]:
    """The rows of `indices` a build still has to read: all of them, less those an interrupted build's `temporary`
    file of the same fingerprint holds encoded (its skipped images are tried again), so a resumed build checks
    only the images it will decode, not ImageNet's 1.33M again, and not one deleted since it was encoded."""
    stored, _ = _stored_fingerprint(temporary)
    if stored != fields:
        return indices
    try:
        with h5py.File(temporary, "r") as f:
            return {split: [indices[split][row] for row in
                            np.flatnonzero(~f[f"splits/{split}/encoded"][:] | skipped_mask(f, split))]
                    for split in SPLITS}
    except (OSError, KeyError):  # unreadable: discarded and written anew
        return indices


def _differences(old: dict[str, object], new: dict[str, object]) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def _retry_skipped(f: h5py.File) -> int:
    """Unmark and unlist the images an interrupted build skipped as unreadable, so a resumed build tries them again
    (they may have been fixed); returns how many."""
    count = f["skipped"].shape[0]
    if count:
        for split in SPLITS:
            encoded = f[f"splits/{split}/encoded"][:]
            encoded[skipped_mask(f, split)] = False
            f[f"splits/{split}/encoded"][:] = encoded
        f["skipped"].resize((0,))
    return count


def _recheck_encoded(f: h5py.File, split: str) -> int:
    """Unmark rows flagged encoded whose stored vectors are not unit norm, or whose raw norms are not positive (a
    write cut short: `store.unwritten_rows`); returns how many."""
    bad = unwritten_rows(f, split)
    if len(bad):
        encoded = f[f"splits/{split}/encoded"][:]
        encoded[bad] = False
        f[f"splits/{split}/encoded"][:] = encoded
    return len(bad)


def _progress(enabled: bool, unit: str = "images") -> Progress:
    """One bar per task (the text prompts; then each split's images) on a terminal; plain lines in a log
    (`progress.LogProgress`); `unit` is what the task counts."""
    return progress_display(lambda: Progress(
        TextColumn("{task.description:<6}"), BarColumn(), MofNCompleteColumn(),
        TextColumn(f"{{task.fields[rate]:>7.1f}} {unit}/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled), unit=unit, template=f"{{rate:.1f}} {unit}/s",
        disable=not enabled)


def _encode_text(f: h5py.File, clip: ClipModel, templates: list[str], class_names: list[str], phrases: list[str],
                 progress: Progress) -> None:
    """Encode every template's class prompts and the attribute phrases into the cache, as one progress task: on a
    CPU a ViT-B-16 takes about 0.1 s a prompt, minutes for ImageNet's 8 × 1000, which were silent."""
    task = progress.add_task("text", total=len(templates) * len(class_names) + len(phrases), rate=0.0)
    started, done = time.perf_counter(), 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress.update(task, advance=count, rate=done / max(time.perf_counter() - started, 1e-9))

    per_template = [encode_texts(clip, [prompt(t, name) for name in class_names], return_norms=True,
                                 on_batch=advance) for t in templates]
    f["text/features"][...] = torch.stack([unit for unit, _ in per_template]).numpy().astype(np.float16)
    f["text/norms"][...] = torch.stack([norms for _, norms in per_template]).numpy()
    if phrases:
        unit, norms = encode_texts(clip, phrases, return_norms=True, on_batch=advance)
        f["attributes/features"][...] = unit.numpy().astype(np.float16)
        f["attributes/norms"][...] = norms.numpy()


def _blocks(rows: np.ndarray, batch_size: int) -> list[list[int]]:
    """Positions of `rows` grouped by the fixed block `row // batch_size`, so a resumed build batches the rows it
    still has to do exactly as an uninterrupted build would."""
    blocks: dict[int, list[int]] = {}
    for position, row in enumerate(rows):
        blocks.setdefault(int(row) // batch_size, []).append(position)
    return list(blocks.values())


def _encode_split(f: h5py.File, split: str, splits: DatasetSplits, clip: ClipModel, views: int, seed: int,
                  batch_size: int, workers: int, skip_bad: bool, progress: Progress, stats: BuildStats,
                  augmentation: Augmentation, lost: LostWrites, decoded: DecodeWarnings) -> None:
    """Encode the rows of `split` not yet encoded, in blocks, writing each block (and stopping at the first write
    h5py could only report as it freed a dataset: `lost`); what decoding warned of goes to `decoded`."""
    paths = list(f[f"splits/{split}/paths"].asstr()[()])
    todo = missing_rows(f, split)
    task = progress.add_task(split, total=len(paths), completed=len(paths) - len(todo), rate=0.0)
    if not len(todo):
        return
    dataset = ImageRows(splits.folder, paths, todo.tolist(), clip.preprocess, views if split == "train" else 0,
                        seed, clip.image_size, clip.mean, clip.std, augmentation)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=_blocks(todo, batch_size), num_workers=workers,
                                         collate_fn=collate)
    started = last_flush = time.perf_counter()
    done = 0
    waited = time.perf_counter()
    for items in loader:
        stats.load_seconds += time.perf_counter() - waited
        bad = [item for item in items if item.error is not None]
        if bad and not skip_bad:
            item = bad[0]
            raise BuildError(f"cannot read image {splits.folder / paths[item.row]} ({item.error}). Fix or remove it, "
                             "or pass --skip-bad to leave such images out (they are listed in the cache)")
        good = [item for item in items if item.error is None]
        for item in good:
            decoded.add(paths[item.row], item.warnings)
        if good:
            tick = time.perf_counter()
            pixels = [torch.stack([item.clean for item in good])]
            if split == "train" and views:
                pixels.append(torch.cat([item.views for item in good]))
            unit, raw_norms = encode_images(clip, torch.cat(pixels), return_norms=True)
            features, norms = unit.numpy(), raw_norms.numpy()
            stats.encode_seconds += time.perf_counter() - tick
            tick = time.perf_counter()
            rows = np.array([item.row for item in good])
            clean = features[:len(good)]
            train = split == "train"  # the width is explicit: with no views, -1 could not be inferred
            augmented = features[len(good):].reshape(len(good), views, features.shape[1]) if train else None
            augmented_norms = norms[len(good):].reshape(len(good), views) if train else None
            write_rows(f, split, rows, clean, augmented, norms[:len(good)], augmented_norms)
            lost.check()
            stats.write_seconds += time.perf_counter() - tick
        if bad:
            mark_skipped(f, split, np.array([item.row for item in bad]), [paths[item.row] for item in bad])
            stats.skipped += len(bad)
        stats.images += len(good)
        done += len(items)
        if time.perf_counter() - last_flush >= FLUSH_SECONDS:
            f.flush()
            last_flush = time.perf_counter()
        progress.update(task, advance=len(items), rate=done / max(time.perf_counter() - started, 1e-9))
        waited = time.perf_counter()
    f.flush()


def _check_losses(f: h5py.File, temporary: Path) -> None:
    """Refuse to finish a cache from which `--skip-bad` took a whole split, or every image of a class in the test
    split or in a few-shot subset: results on it would be meaningless."""
    losses = skipped_losses(f)
    if not losses:
        return
    listed = "; ".join(losses[:LOSSES_LISTED]) + (f"; and {len(losses) - LOSSES_LISTED} more"
                                                  if len(losses) > LOSSES_LISTED else "")
    raise BuildError(f"{f['skipped'].shape[0]} unreadable images were skipped (--skip-bad), which leaves too little: "
                     f"{listed}. Fix or replace those images and rerun: the build resumes from {temporary} and tries "
                     "them again")


SPACE_MARGIN = 1 << 20  # bytes beyond the datasets' own: HDF5's metadata, the final flush


# Write failures a build reports in one line, keeping its temporary file: a full disk or quota, a file over the
# file system's or the process's size limit (`ulimit -f`), a failing disk. After any of them h5py must not flush the
# file again: that crashed the process (exit 139, EFBIG as ENOSPC).
WRITE_FAILURES = {  # errno → what to do before rerunning (as `cli.WRITE_ERRORS` advises for other writes)
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EFBIG: "raise the file size limit (ulimit -f)",
    errno.EIO: "check the disk",
}


def write_failure(error: BaseException) -> int | None:
    """The errno of a write that failed for one of `WRITE_FAILURES` (h5py reports it as a RuntimeError quoting
    `errno = N`), else None."""
    code = getattr(error, "errno", None)
    if code in WRITE_FAILURES:
        return code
    quoted = re.search(r"errno = (\d+)", str(error))
    if quoted and int(quoted.group(1)) in WRITE_FAILURES:
        return int(quoted.group(1))
    return errno.ENOSPC if "No space left on device" in str(error) else None


class LostWrites:
    """Write failures h5py can only print: HDF5 writes rows it buffered when a dataset object is freed, and h5py
    prints that error through `sys.excepthook` and `sys.unraisablehook` and goes on (two tracebacks each, while the
    build went on encoding). Installed as both hooks during a build (`install`), it keeps the first such failure for
    `check` to raise, so that the build stops with its one error line, and prints none of them; any other error goes
    to the previous hooks."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.previous = (sys.excepthook, sys.unraisablehook)

    def install(self) -> None:
        sys.excepthook, sys.unraisablehook = self.excepthook, self.unraisablehook

    def uninstall(self) -> None:
        sys.excepthook, sys.unraisablehook = self.previous

    def kept(self, value: BaseException | None) -> bool:
        """Whether `value` is a write failure, now kept (the first one) rather than printed."""
        if value is None or write_failure(value) is None:
            return False
        self.error = self.error or value
        return True

    def excepthook(self, kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        if not self.kept(value):
            self.previous[0](kind, value, traceback)

    def unraisablehook(self, unraisable: Any) -> None:
        if not self.kept(unraisable.exc_value):
            self.previous[1](unraisable)

    def check(self) -> None:
        """Raise the first write failure h5py did not raise, if any."""
        if self.error is not None:
            raise self.error


_FAILED_WRITES: list[Path] = []  # the caches this process failed to write (`write_failed`)


def write_failed() -> bool:
    """Whether a cache write of this process failed. HDF5's exit handler may then crash the process (exit 139) on the
    file ids whose flush failed, after the error line: the command line ends such a process at once (`cli.main`)."""
    return bool(_FAILED_WRITES)


def _check_room(f: h5py.File, temporary: Path, out: Path) -> None:
    """Refuse, before encoding, a build whose datasets cannot fit in the free space of `out`'s disk (HDF5 allocates a
    dataset's bytes on its first write, so the file grows while encoding)."""
    sizes: list[int] = []
    f.visititems(lambda _, item: sizes.append(item.size * item.dtype.itemsize)
                 if isinstance(item, h5py.Dataset) and item.dtype.kind != "O" else None)
    needed = sum(sizes) + SPACE_MARGIN - temporary.stat().st_size
    free = shutil.disk_usage(temporary.parent).free
    if needed > free:
        raise BuildError(f"{out}: not enough free space in {out.parent}: the cache needs about "
                         f"{needed / 2**20:.1f} MB more, {free / 2**20:.1f} MB are free; free some space, or choose "
                         "another --out")


def _failed_write(code: int, temporary: Path, out: Path) -> BuildError:
    """The error of a build whose write failed for `WRITE_FAILURES[code]`, noted for `write_failed` (the hooks stay:
    h5py frees the failed ids up to the process's end)."""
    _FAILED_WRITES.append(temporary)
    return BuildError(f"{out}: {os.strerror(code).lower()} in {out.parent} while writing the cache; what was written "
                      f"is kept in {temporary}: {WRITE_FAILURES[code]} and rerun the same command (it resumes from "
                      "that file where it is readable), or choose another --out")


def _close(f: h5py.File | None, flush: bool) -> None:
    """Close the build's file; after a failed write without flushing (a second flush crashed h5py)."""
    if f is None or not f.id.valid:
        return
    if flush:
        f.flush()
    with contextlib.suppress(OSError, RuntimeError):  # the write error is reported; the flushed part stays
        f.close()


def _up_to_date(out: Path, fields: dict[str, object]) -> bool:
    """Whether the existing cache at `out` is complete with the fingerprint `fields` (False: incomplete, so rebuilt);
    a cache of another fingerprint or schema, or another file, is a BuildError: only --force overwrites it."""
    stored, complete = _stored_fingerprint(out)
    if stored is None and _stored_schema(out):
        raise BuildError(f"{out} is a cache of schema version {_stored_schema(out)}, which stores no raw "
                         f"feature norms; pass --force to rebuild it as schema {SCHEMA_VERSION}, or choose "
                         "another --out")
    if stored is None:
        raise BuildError(f"{out} exists and is not a lathadapter cache; pass --force to overwrite it, or "
                         "choose another --out")
    if stored != fields:
        differs = ", ".join(_differences(stored, fields))
        raise BuildError(f"{out} is a cache built differently (differs in: {differs}); pass --force to "
                         "overwrite it, or choose another --out")
    return complete


def _resumed(temporary: Path, fields: dict[str, object], say: Callable[[str], None]) -> h5py.File | None:
    """The interrupted build's `temporary` file, open for writing with its unfinished rows to encode again, when it
    has the fingerprint `fields`; None (and why, said) when it is to be discarded and written anew."""
    stored, _ = _stored_fingerprint(temporary)
    if stored != fields:
        older = _stored_schema(temporary)
        why = ("it was started with other settings" if stored is not None else
               f"it is of an older cache schema ({older})" if older and older != SCHEMA_VERSION else
               "it is not readable (a write cut short, e.g. by a full disk)")
        say(f"discarding {temporary}: {why}")
        return None
    f = h5py.File(temporary, "r+")
    retried = _retry_skipped(f)
    redo = sum(_recheck_encoded(f, split) for split in SPLITS)
    left = sum(len(missing_rows(f, split)) for split in SPLITS)
    say(f"resuming the interrupted build in {temporary}: {left} images left to encode"
        + (f" ({redo} partly written rows redone)" if redo else "")
        + (f" ({retried} images skipped as unreadable tried again)" if retried else ""))
    return f


def build(
    root: Path | str | None,
    dataset: str,
    out: Path | str | None = None,
    *,
    model: str = "ViT-B-16",
    pretrained: str = "openai",
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    views: int = 10,
    augmentation: Augmentation | None = None,
    device: str | None = None,
    precision: str = "fp32",
    batch_size: int = 32,
    workers: int = 4,
    attributes: Path | str | None = None,
    full_train: bool = False,
    val: str = "subset",
    force: bool = False,
    skip_bad: bool = False,
    seed: int = 0,
    template: str | None = None,
    quick_gelu: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> BuildResult:
    """Encode `dataset` with an open_clip model into an HDF5 cache at `out` (default `caches/<dataset>.h5`).

    `workers` is capped at the CPUs available to the process: more decoding processes than CPUs only add overhead.
    `val="split"` encodes the whole val split (Tip-Adapter's official search set), not only the few-shot subsets'.
    `augmentation` draws the training views (default: the field's crop scale 0.5–1, ratio 3/4–4/3, flip ½)."""
    augmentation = augmentation if augmentation is not None else Augmentation()
    say = log or (lambda message: print(message, file=sys.stderr))
    started = time.perf_counter()
    val = val_choice(val)  # an old name (`VAL_BEFORE`) still read
    check_options(shots, seeds, views, batch_size, workers, val, precision, template, device, seed)
    check_model(model, pretrained, precision)  # an unknown name or tag is refused before anything is written
    workers = min(workers, available_cpus())
    splits = load_dataset(Path(root) if root is not None else None, dataset, template, seed)
    check_test_split(splits, dataset)
    notes = list(splits.notes) + shortfall_notes(splits, shots) + overlap_notes(splits)
    if root is not None and not reads_root(dataset):
        notes.insert(0, unread_root(Path(root), [dataset]))
    out = Path(out) if out is not None else DEFAULT_CACHE_DIR / f"{splits.name}.h5"
    _check_out(out, splits.name, splits.folder if splits.kind == "folder" else None)
    indices, subsets, val_shots = plan_layout(splits, shots, seeds, full_train, val_all=val == "split")
    phrases = load_attributes(Path(attributes) if attributes is not None else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(out):
        clip = load_model(model, pretrained, device=device, precision=precision, quick_gelu=quick_gelu, seed=seed)
        notes += clip.notes
        for note in notes:
            say(note)
        if splits.test_only:
            say(f"{splits.name} is test-only: no few-shot subsets (--shots/--seeds are ignored)")
        templates = ensemble_templates(splits.template)
        fields = _fingerprint(splits, clip, templates, phrases, views, seed, shots, seeds, full_train, val,
                              augmentation)
        stats = BuildStats()

        if out.exists() and not force and _up_to_date(out, fields):
            say(f"{out} is up to date (same fingerprint {fingerprint_of(fields)})")
            return BuildResult(out, "up to date", stats, notes)
        temporary = out.with_name(out.name + ".tmp")
        if not skip_bad:  # after that check: a cache stays up to date once its images are deleted (ImageNet's)
            _check_images(splits, _left_to_encode(temporary, fields, indices), split_source(dataset, splits))

        items = {"train": splits.train, "val": splits.val, "test": splits.test}
        layout = CacheLayout(
            fingerprint=fields,
            class_names=splits.class_names,
            embed_dim=clip.embed_dim,
            views=views,
            paths={s: [items[s][i][0] for i in indices[s]] for s in SPLITS},
            labels={s: [items[s][i][1] for i in indices[s]] for s in SPLITS},
            subsets=subsets,
            templates=templates,
            attribute_phrases=phrases,
            wnids=splits.wnids,
            val_shots=val_shots,
        )
        f = _resumed(temporary, fields, say) if temporary.exists() else None
        status = "built" if f is None else "resumed"
        written = False  # a write failed: h5py must not flush again (it crashed the process on a full disk)
        lost = LostWrites()
        lost.install()
        try:
            if f is None:
                f = create(temporary, layout)
            _check_room(f, temporary, out)
            tick = time.perf_counter()
            with _progress(progress, unit="prompts") as bars:
                _encode_text(f, clip, templates, splits.class_names, phrases, bars)
            f.flush()
            stats.text_seconds = time.perf_counter() - tick
            decoded = DecodeWarnings()
            try:
                with _progress(progress) as bars:
                    for split in SPLITS:
                        _encode_split(f, split, splits, clip, views, seed, batch_size, workers, skip_bad, bars,
                                      stats, augmentation, lost, decoded)
            finally:  # also when a build stops: what was decoded is encoded, and kept
                for line in decoded.lines():
                    say(line)
            _check_losses(f, temporary)
            finalize(f, temporary, out)
        except (OSError, RuntimeError) as error:
            code = write_failure(error)
            if code is None:
                raise
            written = True
            raise _failed_write(code, temporary, out) from None
        finally:
            in_flight = sys.exc_info()[1]  # an error or an interrupt already on its way out
            try:
                _close(f, flush=not written)
            except (OSError, RuntimeError) as error:  # the last flush failed on a full disk
                if (code := write_failure(error)) is None:
                    raise
                written = True
                failed = _failed_write(code, temporary, out)  # noted for `write_failed` either way
                if in_flight is None:
                    raise failed from None
                # else the error on its way out (a refusal for room, an interrupt) stays the one the user sees
            finally:
                if not written:
                    lost.uninstall()
    if stats.skipped:
        say(f"skipped {stats.skipped} unreadable image{'s' if stats.skipped != 1 else ''} (listed in the cache's "
            "`skipped`; left out of every subset and split)")
    stats.total_seconds = time.perf_counter() - started
    return BuildResult(out, status, stats, notes)
