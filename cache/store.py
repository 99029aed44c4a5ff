"""The HDF5 feature cache: its schema, the resumable writer the build uses, and the reader a fit uses.

Schema (version 2; version 1 caches still load, without what version 2 added). Root attributes: `schema_version`,
`fingerprint` (hash of `fingerprint_json`), `fingerprint_json` (what was encoded, by which model, how),
`lathadapter_version`, `embed_dim`, `views`, `complete` (true once every row is encoded). Groups:

- `classes/names` `[C]` str (cleaned class names, label order); `classes/wnids` `[C]` str ("" when unknown).
- `splits/{train,val,test}/paths` `[N]` str (relative to the dataset folder), `labels` `[N]` int64,
  `features` `[N, D]` float16 (clean view, L2-normalised), `encoded` `[N]` bool (for resuming);
  `splits/train/augmented` `[N, V, D]` float16 (augmented views, L2-normalised).
  `train` holds the union of the few-shot train subsets (or the whole split), `val` the union of the val subsets
  (or the whole split, `--val split`: fingerprint field `val` = "all", `FINGERPRINT_VAL`).
- Version 2 adds the raw (pre-normalisation) norm of every stored vector, float32: `splits/{train,val,test}/norms`
  `[N]`, `splits/train/augmented_norms` `[N, V]`, `text/norms` `[T, C]`, `attributes/norms` `[A]` (0 for the rows
  of skipped images), so that a method can rebuild the unnormalised features (`unit * norm`).
- `subsets/shots_{K}_seed_{S}/{train,val}` int64 row indices into `splits/train` and `splits/val`; with the whole
  val split (`--val split`) also `val_shots`, LP++'s own K-shot val set (`sampling.val_shots_indices`: K rows a class,
  which repeat for a class with fewer val images; absent from caches built before it existed).
- `text/templates` `[T]` str (templates[0] is the dataset's CoOp template); `text/features` `[T, C, D]` float16
  (L2-normalised).
- `attributes/phrases` `[A]` str; `attributes/features` `[A, D]` float16 (A may be 0).
- `skipped` `[S]` str: images left out by `--skip-bad` (relative paths). Their rows stay in their split, all
  zeros, and the reader drops them from every subset and split it returns.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from lathadapter.cache.sampling import base_novel_classes
from lathadapter.version import __version__

SCHEMA_VERSION = 2  # what the build writes
READABLE_SCHEMAS = (1, 2)  # what the reader accepts; version 1 lacks the raw norms and the whole-val search set
REBUILD = "lathadapter cache build ... --force"  # how to turn an older cache into the current schema
DEFAULT_CACHE_DIR = Path("caches")  # where `cache build` writes and `fit` looks when no path is given
SPLITS = ("train", "val", "test")
# The fingerprint's spelling of `cache build --val` (field `val`): the names the option had before stop 27, kept so
# that every cache keeps its fingerprint; users read and type `subset` and `split`.
FINGERPRINT_VAL = {"subset": "subsets", "split": "all"}
FOLDER_LISTED = 10  # how many caches the error for a folder passed as a cache lists
# How far from 1 the norm of a stored unit vector may be: float16 keeps each component within 2^-11 of its value, so a
# unit vector within 5e-4 (real builds: 2e-4 at most, demo and synthetic caches, widths 64 to 512); further off, a row
# was damaged or not fully written (the reader, `cache verify` and a resumed build all use this bound).
NORM_TOLERANCE = 1e-2
_STR = h5py.string_dtype()


class CacheError(ValueError):
    """A cache file is missing, incomplete, from another schema, or lacks what was asked of it."""


class CacheChoiceError(CacheError):
    """No `--cache` given where several caches could be meant: a usage mistake (the CLI exits 2, as `OptionError`)."""

    exit_code = 2


def corrupt(path: Path, error: BaseException, verify_hint: bool = True) -> CacheError:
    """The error for a cache file HDF5 cannot read (flipped bytes, a truncated copy): it names the file and the fix,
    where h5py's own message ("ran off end of input buffer") names neither."""
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    check = f"check it with `lathadapter cache verify {path}` and " if verify_hint else ""
    return CacheError(f"{path}: the cache file is corrupt (HDF5 cannot read it: {detail}); {check}rebuild it with "
                      f"`{REBUILD}`")


def open_failure(path: Path, error: BaseException) -> CacheError | None:
    """The error for a cache that HDF5 could not open for a reason that is no sign of damage: this user may not read
    it (a shared cache of another user; rebuilding it would be for nothing), or HDF5 could not lock it (another
    process has it open for writing, or its file system has no file locks); None for any other error."""
    if isinstance(error, PermissionError):
        return CacheError(f"{path}: permission denied: this user may not read it (the file itself may well be sound); "
                          "ask its owner for read access, or copy it somewhere readable")
    if "unable to lock file" not in str(error):
        return None
    detail = str(error).splitlines()[0]
    return CacheError(f"{path}: HDF5 cannot lock it to open it ({detail}): another process has it open for writing "
                      "(wait for it to close the file), or its file system has no file locks (set "
                      "HDF5_USE_FILE_LOCKING=FALSE); the file itself may well be sound")


def _readable(method):
    """A CacheReader method whose HDF5 read errors (OSError, RuntimeError) become `corrupt(path)`."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (OSError, RuntimeError) as error:
            raise corrupt(self.path, error) from None

    return guarded


def resolve_cache(path: str | Path | None) -> Path:
    """The cache to use: `path` when given, else the only `*.h5` in DEFAULT_CACHE_DIR (an error lists several)."""
    if path is not None:
        return Path(path)
    found = sorted(DEFAULT_CACHE_DIR.glob("*.h5"))
    if not found:
        raise CacheError(
            f"no cache given and none in {DEFAULT_CACHE_DIR}/; build one with `lathadapter cache build` "
            "or pass --cache PATH"
        )
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found[:FOLDER_LISTED]) + (
            f" and {len(found) - FOLDER_LISTED} more" if len(found) > FOLDER_LISTED else "")
        raise CacheChoiceError(f"several caches in {DEFAULT_CACHE_DIR}/ ({listed}); choose one with --cache PATH")
    return found[0]


def test_only_message(path: str | Path, dataset: str) -> str:
    """What to say when a test-only cache (the ImageNet variants) is given where runs train: how it is used."""
    return (f"{path} holds only a test split ({dataset} has no train split), so no few-shot subsets: use it as a "
            "--target of the cross-dataset or domain protocols, not for fit, grid or a protocol's --cache")


def folder_given(path: Path) -> str:
    """What to say when a folder is given where a cache file is expected (`--cache caches/`): its caches."""
    found = sorted(path.glob("*.h5"))
    listed = ", ".join(str(p) for p in found[:FOLDER_LISTED]) + (
        f" and {len(found) - FOLDER_LISTED} more" if len(found) > FOLDER_LISTED else "")
    return f"{path} is a folder, not a cache file; " + (
        f"pass one of its caches: {listed}" if found else
        "it holds no *.h5 cache; pass a cache file, or build one with `lathadapter cache build`")


def fingerprint_of(fields: dict[str, object]) -> str:
    """A short stable hash of the JSON of `fields` (what was encoded, and how)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# Seeds of few-shot subsets and runs: NumPy's seed range, as CoOp seeds Python, NumPy and torch with the one seed (and
# a negative one there means "no seed"); a seed outside it could not be set alike in the field's code.
SEED_LIMIT = 2**32


def seed_error(option: str, seeds: Sequence[int]) -> str | None:
    """The usage error for the first of `seeds`, given as `option`, outside 0..SEED_LIMIT − 1; None when all are in."""
    outside = [seed for seed in seeds if not 0 <= seed < SEED_LIMIT]
    if not outside:
        return None
    return (f"{option} {outside[0]}: a seed is an integer from 0 to {SEED_LIMIT - 1} (NumPy's seed range; the "
            "papers' are 1,2,3)")


def subset_key(shots: int, seed: int) -> str:
    """HDF5 group name of a few-shot subset."""
    return f"shots_{shots}_seed_{seed}"


@dataclass
class CacheLayout:
    """Everything a cache holds except the encoded features: written once when the build starts."""

    fingerprint: dict[str, object]
    class_names: list[str]
    embed_dim: int
    views: int
    paths: dict[str, list[str]]
    labels: dict[str, list[int]]
    subsets: dict[tuple[int, int], tuple[list[int], list[int]]]
    templates: list[str]
    attribute_phrases: list[str] = field(default_factory=list)
    wnids: list[str] | None = None
    val_shots: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # LP++'s val sets (`--val split` only)


def create(path: Path, layout: CacheLayout) -> h5py.File:
    """Create a cache file with every dataset allocated and nothing encoded yet (`encoded` all false)."""
    f = h5py.File(path, "w")
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["fingerprint_json"] = json.dumps(layout.fingerprint, sort_keys=True)
    f.attrs["fingerprint"] = fingerprint_of(layout.fingerprint)
    f.attrs["lathadapter_version"] = __version__
    f.attrs["embed_dim"] = layout.embed_dim
    f.attrs["views"] = layout.views
    f.attrs["complete"] = False
    num_classes, dim = len(layout.class_names), layout.embed_dim
    f.create_dataset("classes/names", data=np.array(layout.class_names, dtype=object), dtype=_STR)
    wnids = layout.wnids if layout.wnids is not None else [""] * num_classes
    f.create_dataset("classes/wnids", data=np.array(wnids, dtype=object), dtype=_STR)
    for split in SPLITS:
        n = len(layout.paths[split])
        group = f.create_group(f"splits/{split}")
        group.create_dataset("paths", data=np.array(layout.paths[split], dtype=object), dtype=_STR)
        group.create_dataset("labels", data=np.asarray(layout.labels[split], dtype=np.int64).reshape(n))
        group.create_dataset("features", shape=(n, dim), dtype=np.float16)
        group.create_dataset("norms", shape=(n,), dtype=np.float32)
        group.create_dataset("encoded", data=np.zeros(n, dtype=bool))
        if split == "train":
            group.create_dataset("augmented", shape=(n, layout.views, dim), dtype=np.float16)
            group.create_dataset("augmented_norms", shape=(n, layout.views), dtype=np.float32)
    for (shots, seed), (train_rows, val_rows) in sorted(layout.subsets.items()):
        group = f.create_group(f"subsets/{subset_key(shots, seed)}")
        group.create_dataset("train", data=np.asarray(train_rows, dtype=np.int64))
        group.create_dataset("val", data=np.asarray(val_rows, dtype=np.int64))
        if (shots, seed) in layout.val_shots:
            group.create_dataset("val_shots", data=np.asarray(layout.val_shots[shots, seed], dtype=np.int64))
        group.attrs["shots"], group.attrs["seed"] = shots, seed
    f.create_dataset("text/templates", data=np.array(layout.templates, dtype=object), dtype=_STR)
    f.create_dataset("text/features", shape=(len(layout.templates), num_classes, dim), dtype=np.float16)
    f.create_dataset("text/norms", shape=(len(layout.templates), num_classes), dtype=np.float32)
    f.create_dataset("attributes/phrases", data=np.array(layout.attribute_phrases, dtype=object), dtype=_STR)
    f.create_dataset("attributes/features", shape=(len(layout.attribute_phrases), dim), dtype=np.float16)
    f.create_dataset("attributes/norms", shape=(len(layout.attribute_phrases),), dtype=np.float32)
    f.create_dataset("skipped", shape=(0,), maxshape=(None,), dtype=_STR)
    return f


def write_rows(f: h5py.File, split: str, rows: np.ndarray, features: np.ndarray,
               augmented: np.ndarray | None = None, norms: np.ndarray | None = None,
               augmented_norms: np.ndarray | None = None) -> None:
    """Store encoded features (unit rows) and their raw norms for `rows` of `split` (sorted row indices) and mark
    them encoded; the rows are flagged last, so a write cut short leaves them to redo."""
    group = f[f"splits/{split}"]
    rows = np.asarray(rows, dtype=np.int64)
    if norms is None or (split == "train" and augmented_norms is None):
        raise ValueError("rows of a schema-2 cache need the raw norms of their features (and of their views)")
    group["features"][rows] = features.astype(np.float16)
    group["norms"][rows] = np.asarray(norms, dtype=np.float32).reshape(len(rows))
    if split == "train":
        if augmented is None:
            raise ValueError("train rows need their augmented views")
        if augmented.shape[1]:  # h5py cannot select rows of an empty [N, 0, D] dataset: with no views, nothing to write
            group["augmented"][rows] = augmented.astype(np.float16)
            group["augmented_norms"][rows] = np.asarray(augmented_norms, dtype=np.float32).reshape(augmented.shape[:2])
    encoded = group["encoded"][:]
    encoded[rows] = True
    group["encoded"][:] = encoded


def mark_skipped(f: h5py.File, split: str, rows: np.ndarray, paths: Sequence[str]) -> None:
    """Record images left out by `--skip-bad`: their rows count as done (zero features) and are listed, so every
    reader drops them."""
    group = f[f"splits/{split}"]
    encoded = group["encoded"][:]
    encoded[np.asarray(rows, dtype=np.int64)] = True
    group["encoded"][:] = encoded
    skipped = f["skipped"]
    start = skipped.shape[0]
    skipped.resize((start + len(paths),))
    skipped[start:] = np.array(list(paths), dtype=object)


def skipped_mask(f: h5py.File, split: str) -> np.ndarray:
    """Which rows of `split` hold images left out by `--skip-bad` (bool `[N]`; paths are read only when some are)."""
    paths = f[f"splits/{split}/paths"]
    if f["skipped"].shape[0] == 0 or paths.shape[0] == 0:
        return np.zeros(paths.shape[0], dtype=bool)
    listed = set(f["skipped"].asstr()[()])
    return np.fromiter((path in listed for path in paths.asstr()[()]), dtype=bool, count=paths.shape[0])


def skipped_losses(f: h5py.File) -> list[str]:
    """What images left out by `--skip-bad` took away entirely: a whole split, every test image of a class, or every
    train image a few-shot subset drew of a class. Any of these makes results on the cache meaningless."""
    names = _strings(f["classes/names"])
    skipped = {split: skipped_mask(f, split) for split in SPLITS}
    labels = {split: f[f"splits/{split}/labels"][()] for split in SPLITS}
    losses = [f"the {split} split has no image left (all {len(skipped[split])} were skipped)"
              for split in SPLITS if len(skipped[split]) and skipped[split].all()]
    if losses:
        return losses

    def lost_classes(where: str, split: str, rows: np.ndarray) -> list[str]:
        drawn = np.bincount(labels[split][rows], minlength=len(names))
        left = np.bincount(labels[split][rows[~skipped[split][rows]]], minlength=len(names))
        return [f"{where} has no image left of class {names[c]!r} (label {c}; all {drawn[c]} skipped)"
                for c in np.flatnonzero((drawn > 0) & (left == 0))]

    losses += lost_classes("the test split", "test", np.arange(len(labels["test"])))
    for group in f.get("subsets", {}).values():
        where = f"the few-shot subset shots={int(group.attrs['shots'])} seed={int(group.attrs['seed'])} (train)"
        losses += lost_classes(where, "train", group["train"][()])
    return losses


def missing_rows(f: h5py.File, split: str) -> np.ndarray:
    """Row indices of `split` not encoded yet (what a resumed build still has to do)."""
    return np.flatnonzero(~f[f"splits/{split}/encoded"][:])


def unwritten_rows(f: h5py.File, split: str, chunk: int = 4096) -> np.ndarray:
    """Rows of `split` flagged encoded (not skipped by `--skip-bad`) whose stored vectors are not unit norm or whose
    raw norms are not positive: a write cut short, or lost (h5py drops the error of a write that HDF5 buffered and
    flushed when the dataset closed: a full disk left all-zero rows flagged encoded)."""
    group = f[f"splits/{split}"]
    encoded = group["encoded"][:] & ~skipped_mask(f, split)
    bad = []
    for start in range(0, len(encoded), chunk):
        stop = min(start + chunk, len(encoded))
        norms = np.linalg.norm(group["features"][start:stop].astype(np.float32), axis=-1)
        ok = (np.abs(norms - 1) < NORM_TOLERANCE) & (group["norms"][start:stop] > 0)
        if split == "train" and group["augmented"].shape[1]:
            views = np.linalg.norm(group["augmented"][start:stop].astype(np.float32), axis=-1)
            ok &= (np.abs(views - 1) < NORM_TOLERANCE).all(axis=1)
            ok &= (group["augmented_norms"][start:stop] > 0).all(axis=1)
        bad.append(start + np.flatnonzero(encoded[start:stop] & ~ok))
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def finalize(f: h5py.File, temporary: Path, final: Path) -> None:
    """Check that everything is encoded, close the file, read it back (a write HDF5 buffered can fail unseen when
    the file is closed: `unwritten_rows`), mark it complete and move it into place atomically."""
    for split in SPLITS:
        left = len(missing_rows(f, split))
        if left:
            raise CacheError(f"{temporary}: {left} {split} rows are not encoded; the cache is incomplete")
    f.flush()
    f.close()
    with h5py.File(temporary, "r") as written:
        lost = {split: len(unwritten_rows(written, split)) for split in SPLITS}
    if any(lost.values()):
        raise CacheError(f"{temporary}: {', '.join(f'{n} {s}' for s, n in lost.items() if n)} rows did not reach the "
                         "disk (a full disk or a write error); free some space and rerun the build: it resumes from "
                         "this file and encodes those rows again")
    with h5py.File(temporary, "r+") as written:
        written.attrs["complete"] = True
    with h5py.File(temporary, "r") as written:
        if not bool(written.attrs.get("complete", False)):
            raise CacheError(f"{temporary}: marking the cache complete did not reach the disk (a full disk or a "
                             "write error); free some space and rerun the build")
    os.replace(temporary, final)


@dataclass
class RawNorms:
    """The raw (pre-normalisation) norms of a whole cache's vectors, for `write_cache`: `splits` `{split: [N]}`,
    `augmented` `[N_train, V]`, `text` `[T, C]`, `attributes` `[A]`."""

    splits: dict[str, np.ndarray]
    augmented: np.ndarray
    text: np.ndarray
    attributes: np.ndarray | None = None


def write_cache(path: Path, layout: CacheLayout, features: dict[str, np.ndarray], augmented: np.ndarray,
                text_features: np.ndarray, attribute_features: np.ndarray | None = None,
                norms: RawNorms | None = None) -> None:
    """Write a whole cache at once (synthetic caches for tests and benchmarks), atomically, through a temporary file
    of a unique name beside `path`. `features` are unit rows; `norms` are their raw norms (all 1 when not given)."""
    path = Path(path)
    if norms is None:
        norms = RawNorms({split: np.ones(len(layout.paths[split])) for split in SPLITS},
                         np.ones(augmented.shape[:2]), np.ones(text_features.shape[:2]))
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    f = create(temporary, layout)
    try:
        for split in SPLITS:
            train = split == "train"
            write_rows(f, split, np.arange(len(layout.paths[split])), features[split], augmented if train else None,
                       norms.splits[split], norms.augmented if train else None)
        f["text/features"][...] = text_features.astype(np.float16)
        f["text/norms"][...] = np.asarray(norms.text, dtype=np.float32)
        if attribute_features is not None and len(layout.attribute_phrases):
            f["attributes/features"][...] = attribute_features.astype(np.float16)
            attribute_norms = norms.attributes if norms.attributes is not None else np.ones(len(attribute_features))
            f["attributes/norms"][...] = np.asarray(attribute_norms, dtype=np.float32)
        finalize(f, temporary, path)
    finally:
        if f.id.valid:
            f.close()
        temporary.unlink(missing_ok=True)


def _strings(dataset: h5py.Dataset) -> list[str]:
    return [str(s) for s in dataset.asstr()[()]]


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class FewShotData:
    """The tensors one fit needs, float32 on one device; labels index `class_names`."""

    class_names: list[str]
    text_features: torch.Tensor  # [C, D]
    attribute_features: torch.Tensor  # [A, D], A may be 0
    train_features: torch.Tensor  # [N, D] clean view
    train_augmented: torch.Tensor  # [N, V, D] augmented views (HDF5 `splits/train/augmented`)
    train_labels: torch.Tensor  # [N]
    val_features: torch.Tensor
    val_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    fingerprint: str
    wnids: list[str] = field(default_factory=list)
    dataset: str = ""  # the cache's dataset name (fingerprint field `dataset`): keys the official per-dataset values
    # The unnormalised class text features [C, D] (schema 2): the CoOp template's raw feature (`--text coop`) or the
    # mean of the stored templates' raw features (`--text ensemble`); None when the cache lacks the raw norms.
    text_raw: torch.Tensor | None = None
    train_augmented_norms: torch.Tensor | None = None  # [N, V] raw norms of the augmented views (schema 2), else None
    # The whole val split (a cache built with `--val split`: Tip-Adapter's official search set), else None.
    search_features: torch.Tensor | None = None
    search_labels: torch.Tensor | None = None
    # LP++'s own K-shot val set (HDF5 `subsets/…/val_shots`, `--val split` caches), else None.
    val_shots_features: torch.Tensor | None = None
    val_shots_labels: torch.Tensor | None = None
    # The cache's templates (`[0]` the dataset's CoOp template) and the unnormalised class text feature of each,
    # [T, C, D] (schema 2; None before), whatever `--text` says: for a recipe that fixes its own templates (TaskRes's
    # official base). Empty and None for data built by hand.
    templates: list[str] = field(default_factory=list)
    template_raw: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shots(self) -> int:
        """The few-shot subset's K: the largest number of train images of one class (0 when there are none)."""
        return int(torch.bincount(self.train_labels).max()) if len(self.train_labels) else 0

    def select_classes(self, classes: Sequence[int]) -> FewShotData:
        """Keep only `classes` (and their samples), relabelled 0.. in the given order (base-to-novel)."""
        classes = list(classes)
        lookup = torch.full((self.num_classes,), -1, dtype=torch.long, device=self.train_labels.device)
        lookup[torch.as_tensor(classes, device=lookup.device)] = torch.arange(len(classes), device=lookup.device)

        def pick(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            keep = lookup[labels] >= 0
            return features[keep], lookup[labels[keep]]

        train_features, train_labels = pick(self.train_features, self.train_labels)
        train_augmented, _ = pick(self.train_augmented, self.train_labels)
        val_features, val_labels = pick(self.val_features, self.val_labels)
        test_features, test_labels = pick(self.test_features, self.test_labels)
        view_norms = (pick(self.train_augmented_norms, self.train_labels)[0] if self.train_augmented_norms is not None
                      else None)
        def pick_optional(features: torch.Tensor | None, labels: torch.Tensor | None
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            return pick(features, labels) if features is not None and labels is not None else (None, None)

        search_features, search_labels = pick_optional(self.search_features, self.search_labels)
        val_shots_features, val_shots_labels = pick_optional(self.val_shots_features, self.val_shots_labels)
        return replace(
            self,
            class_names=[self.class_names[c] for c in classes],
            text_features=self.text_features[classes],
            train_features=train_features, train_augmented=train_augmented, train_labels=train_labels,
            val_features=val_features, val_labels=val_labels,
            test_features=test_features, test_labels=test_labels,
            wnids=[self.wnids[c] for c in classes] if self.wnids else [],
            text_raw=self.text_raw[classes] if self.text_raw is not None else None,
            train_augmented_norms=view_norms, search_features=search_features, search_labels=search_labels,
            val_shots_features=val_shots_features, val_shots_labels=val_shots_labels,
            template_raw=self.template_raw[:, classes] if self.template_raw is not None else None,
        )

    def base_novel(self) -> tuple[FewShotData, FewShotData]:
        """The base and the novel half of the classes (docs/data.md's rule), each relabelled from 0."""
        if self.num_classes < 2:  # no novel half: its accuracy was an index error
            raise CacheError(f"--classes base splits the classes into a base and a novel half and needs at least 2; "
                             f"this cache has {self.num_classes}: use --classes all")
        base, novel = base_novel_classes(range(self.num_classes))
        return self.select_classes(base), self.select_classes(novel)


@dataclass(frozen=True)
class CacheInfo:
    """A cache's summary: provenance, sizes and the few-shot subsets it holds."""

    path: Path
    fingerprint: str
    fields: dict[str, object]
    class_names: list[str]
    embed_dim: int
    views: int
    counts: dict[str, int]
    subsets: list[tuple[int, int]]
    templates: list[str]
    attribute_count: int
    skipped: list[str]
    size_bytes: int
    schema_version: int = SCHEMA_VERSION  # 1: no raw norms (rebuild with --force for the official recipes)
    val_split: bool = False  # the cache holds the whole val split (`cache build --val split`)
    val_shots: bool = False  # its subsets hold LP++'s own K-shot val sets (`--val split` caches built since stop 17)


class CacheReader:
    """Read-only access to a complete cache; validates the schema on open.

    Images left out by `--skip-bad` are dropped from everything it returns: subsets, val and test."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise CacheError(folder_given(self.path))
        if not self.path.is_file():
            raise CacheError(f"cache file {self.path} does not exist; build one with `lathadapter cache build`")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            unopened = open_failure(self.path, error)
            if unopened is not None:
                raise unopened from error
            raise CacheError(f"{self.path} is not a readable HDF5 cache ({error}); if it is one, it is corrupt: "
                             f"rebuild it with `{REBUILD}`") from error
        if "schema_version" not in self._file.attrs:
            self._file.close()
            raise CacheError(f"{self.path} is an HDF5 file but not a lathadapter cache (it has no schema_version); "
                             "pass a file written by `lathadapter cache build`")
        version = int(self._file.attrs["schema_version"])
        if version not in READABLE_SCHEMAS:
            self._file.close()
            raise CacheError(
                f"{self.path} has cache schema version {version}; this lathadapter reads versions "
                f"{', '.join(map(str, READABLE_SCHEMAS))}. Rebuild it with `{REBUILD}`."
            )
        self.schema_version = version
        if not bool(self._file.attrs.get("complete", False)):
            self._file.close()
            raise CacheError(f"{self.path} is an incomplete cache (its build did not finish); rerun the build")
        self._kept_rows: dict[str, np.ndarray] = {}
        # What every subset shares (whole-split arrays, the test split, text and attribute features, and their
        # copies on a device), read and checked once per reader: a grid loads many subsets through one reader.
        self._shared: dict[tuple[str, ...], Any] = {}

    def _once(self, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        """`make()`, computed on the first call with `key` and kept for the reader's life (its file is read-only)."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def file(self) -> h5py.File:
        """The open HDF5 file (read-only), for inspection tools."""
        return self._file

    @property
    def fingerprint(self) -> str:
        return str(self._file.attrs["fingerprint"])

    def _dataset(self, name: str) -> h5py.Dataset:
        """The dataset `name`, or a CacheError saying that the file lacks it (a damaged file, not a user mistake)."""
        data = self._file.get(name)
        if not isinstance(data, h5py.Dataset):
            raise CacheError(f"{self.path} lacks the dataset {name}: the file is damaged. Run `lathadapter cache "
                             f"verify {self.path}` to see what else is wrong, and rebuild it with `lathadapter cache "
                             "build ... --force`")
        return data

    def _rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (increasing) of dataset `name`; h5py cannot select from a dataset with an empty dimension (the
        views of a cache built with `--views 0`), whose rows are read as empty arrays of the right shape."""
        data = self._dataset(name)
        if 0 in data.shape[1:]:
            return np.zeros((len(rows), *data.shape[1:]), dtype=data.dtype)
        return data[rows]

    def _finite(self, name: str, values: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """`values` as they are, or a CacheError naming the first row (in the file, through `rows`) holding a NaN or
        an infinity: such a row would silently turn a whole fit into NaN. A finite sum says every value is finite
        (an infinity or a NaN makes the sum one), at a tenth of the cost of the check value by value, which runs
        when it is not (a NaN, or finite values overflowing the sum)."""
        if bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all()):
            return values
        bad = ~torch.isfinite(values).reshape(len(values), -1).all(dim=1)
        position = int(torch.nonzero(bad)[0, 0])
        row = int(rows[position]) if rows is not None else position
        raise CacheError(f"{self.path}: {name} row {row} holds non-finite values (NaN or infinity); the file is "
                         f"damaged. Run `lathadapter cache verify {self.path}` and rebuild it with `--force`")

    def _unit(self, name: str, values: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """`values`, vectors stored L2-normalised along the last axis, as they are; or a CacheError naming the first
        row (in the file, through `rows`) holding a vector whose norm is off 1 by `NORM_TOLERANCE` or more (a damaged
        file, whose finite but wrong rows would train silently), or a NaN or infinity (`_finite`'s error). One norm
        per vector, in bulk: a NaN or infinity makes its norm fail the bound too, so this check replaces the sum
        `_finite` does."""
        if not values.numel():
            return values
        off = (torch.linalg.vector_norm(values, dim=-1) - 1).abs()
        if bool(off.max() < NORM_TOLERANCE):  # false for a NaN
            return values
        self._finite(name, values, rows)
        per_row = off.reshape(len(values), -1)
        position = int(torch.nonzero((per_row >= NORM_TOLERANCE).any(dim=1))[0, 0])
        worst = int(per_row[position].argmax())
        norm = float(torch.linalg.vector_norm(values[position].reshape(per_row.shape[1], -1)[worst]))
        row = int(rows[position]) if rows is not None else position
        raise CacheError(f"{self.path}: {name} row {row} is not unit norm (norm {norm:.4f}), though the cache stores "
                         f"unit vectors; the file is damaged. Run `lathadapter cache verify {self.path}` and rebuild "
                         "it with `--force`")

    def _kept(self, split: str) -> np.ndarray:
        """Whether each row of `split` is kept, i.e. not an image left out by `--skip-bad` (read once)."""
        if split not in self._kept_rows:
            self._dataset(f"splits/{split}/paths")  # a missing dataset is named, not a KeyError
            self._dataset("skipped")
            self._kept_rows[split] = ~skipped_mask(self._file, split)
        return self._kept_rows[split]

    @property
    def dataset_name(self) -> str:
        return str(json.loads(self._file.attrs["fingerprint_json"]).get("dataset", self.path.stem))

    @property
    def holds_norms(self) -> bool:
        """Whether the cache stores the raw norms of its vectors (schema 2)."""
        return self.schema_version >= 2

    @property
    def holds_val_split(self) -> bool:
        """Whether `splits/val` is the whole val split (`cache build --val split`), not only the few-shot subsets'."""
        return json.loads(self._file.attrs["fingerprint_json"]).get("val") == FINGERPRINT_VAL["split"]

    @property
    def test_only(self) -> bool:
        """A cache of a test-only dataset (the ImageNet variants): no train split and no few-shot subsets."""
        return self._dataset("splits/train/labels").shape[0] == 0 and not self.subsets()

    def subsets(self) -> list[tuple[int, int]]:
        """The (shots, seed) pairs this cache holds, sorted."""
        group = self._file.get("subsets", {})
        return sorted((int(group[k].attrs["shots"]), int(group[k].attrs["seed"])) for k in group)

    def classes(self) -> tuple[list[str], list[str]]:
        """The class names in label order and their wnids (empty when the cache has none), without loading a
        split: what mapping one cache's classes onto another's reads."""
        wnids = _strings(self._dataset("classes/wnids"))
        return _strings(self._dataset("classes/names")), wnids if any(wnids) else []

    def info(self) -> CacheInfo:
        f = self._file
        return CacheInfo(
            path=self.path,
            fingerprint=self.fingerprint,
            fields=json.loads(f.attrs["fingerprint_json"]),
            class_names=_strings(self._dataset("classes/names")),
            embed_dim=int(f.attrs["embed_dim"]),
            views=int(f.attrs["views"]),
            counts={split: int(self._dataset(f"splits/{split}/labels").shape[0]) for split in SPLITS},
            subsets=self.subsets(),
            templates=_strings(self._dataset("text/templates")),
            attribute_count=int(self._dataset("attributes/phrases").shape[0]),
            skipped=_strings(self._dataset("skipped")),
            size_bytes=self.path.stat().st_size,
            schema_version=self.schema_version,
            val_split=self.holds_val_split,
            val_shots=any("val_shots" in group for group in f.get("subsets", {}).values()),
        )

    def text_features(self, text: str = "coop") -> torch.Tensor:
        """Class text features `[C, D]`: the CoOp template (`coop`) or the normalised template mean (`ensemble`)."""
        if text not in ("coop", "ensemble"):
            raise CacheError(f"unknown text features {text!r}; valid: coop, ensemble")
        per_template = self._unit("text/features",
                                  torch.from_numpy(self._dataset("text/features")[()].astype(np.float32)))
        if text == "coop":
            return _normalize(per_template[0])
        return _normalize(_normalize(per_template).mean(dim=0))

    def text_raw(self, text: str = "coop") -> torch.Tensor | None:
        """The unnormalised class text features `[C, D]` (schema 2; None before): the CoOp template's raw feature
        (`coop`) or the mean of the stored templates' raw features (`ensemble`)."""
        if text not in ("coop", "ensemble"):
            raise CacheError(f"unknown text features {text!r}; valid: coop, ensemble")
        raw = self.template_raw()
        if raw is None:
            return None
        return raw[0] if text == "coop" else raw.mean(dim=0)

    def template_raw(self) -> torch.Tensor | None:
        """The unnormalised class text feature of every stored template, `[T, C, D]` in `text/templates`' order
        (`unit × norm`; schema 2; None before)."""
        if not self.holds_norms:
            return None
        unit = torch.from_numpy(self._dataset("text/features")[()].astype(np.float32))
        norms = self._finite("text/norms", torch.from_numpy(self._dataset("text/norms")[()].astype(np.float32)))
        return self._unit("text/features", unit) * norms.unsqueeze(-1)

    def _attribute_features(self) -> torch.Tensor:
        return self._unit("attributes/features",
                          torch.from_numpy(self._dataset("attributes/features")[()].astype(np.float32)))

    def _split(self, split: str, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean features and labels of `rows` (increasing) of `split` (the whole split is read once)."""
        whole_features, whole_labels = self._once(("split", split), lambda: (
            self._dataset(f"splits/{split}/features")[()].astype(np.float32, copy=False),
            self._dataset(f"splits/{split}/labels")[()].astype(np.int64, copy=False)))
        features = self._unit(f"splits/{split}/features", torch.from_numpy(whole_features[rows]), rows)
        return features, torch.from_numpy(whole_labels[rows])

    def _test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._once(("test",), lambda: self._split("test", np.flatnonzero(self._kept("test"))))

    def subset_rows(self, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of the (`shots`, `seed`) subset into `splits/train` and `splits/val`, in Dassl's order, less
        the images left out by `--skip-bad` (so a class may have fewer than `shots` of them)."""
        if self.test_only:
            raise CacheError(test_only_message(self.path, self.dataset_name))
        key = f"subsets/{subset_key(shots, seed)}"
        if key not in self._file:
            held = ", ".join(f"shots={k} seed={s}" for k, s in self.subsets()) or "none"
            raise CacheError(
                f"{self.path} holds no few-shot subset with shots={shots} seed={seed}; it holds: {held}. "
                "Rebuild the cache with `--shots`/`--seeds` that include it."
            )
        return self._rows_in(f"{key}/train", "train"), self._rows_in(f"{key}/val", "val")

    def val_shots_rows(self, shots: int, seed: int) -> np.ndarray | None:
        """Row indices into `splits/val` of LP++'s own K-shot val set for (`shots`, `seed`), less skipped images;
        None when the cache does not hold it (built without `--val split`, or before it was stored)."""
        name = f"subsets/{subset_key(shots, seed)}/val_shots"
        return self._rows_in(name, "val") if name in self._file else None

    def _rows_in(self, name: str, split: str) -> np.ndarray:
        """The row indices dataset `name` holds into `splits/{split}`, checked in range, less skipped images."""
        rows = self._dataset(name)[()]
        count = self._dataset(f"splits/{split}/labels").shape[0]
        outside = rows[(rows < 0) | (rows >= count)]
        if len(outside):
            raise CacheError(f"{self.path}: {name} holds row {int(outside[0])}, outside splits/{split} "
                             f"(rows 0..{count - 1}); the file is damaged. Run `lathadapter cache verify "
                             f"{self.path}` and rebuild it with `--force`")
        return rows[self._kept(split)[rows]]

    def load(self, shots: int, seed: int, *, text: str = "coop", device: str | torch.device = "cpu") -> FewShotData:
        """Load one few-shot subset's train/val tensors, the whole test split and the text features, once."""
        train_rows, val_rows = self.subset_rows(shots, seed)
        order = np.argsort(train_rows, kind="stable")  # h5py fancy indexing wants increasing indices
        sorted_rows = train_rows[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        train_features, train_labels = self._split("train", sorted_rows)
        # torch converts float16 to float32 in a third of numpy's time
        views = self._unit("splits/train/augmented", torch.from_numpy(
            self._rows("splits/train/augmented", sorted_rows)).float(), sorted_rows)
        view_norms = None
        if self.holds_norms:
            view_norms = self._finite("splits/train/augmented_norms", torch.from_numpy(
                self._rows("splits/train/augmented_norms", sorted_rows)).float(), sorted_rows)[inverse]
        val_features, val_labels = self._split("val", np.sort(val_rows))
        search_features = search_labels = None
        if self.holds_val_split and self._dataset("splits/val/labels").shape[0]:
            search_features, search_labels = self._once(("search",), lambda: self._split(
                "val", np.flatnonzero(self._kept("val"))))
        val_shots_rows = self.val_shots_rows(shots, seed)
        val_shots_features, val_shots_labels = (self._split("val", np.sort(val_shots_rows))
                                                if val_shots_rows is not None else (None, None))
        test_features, test_labels = self._test()
        wnids = _strings(self._dataset("classes/wnids"))
        data = FewShotData(
            class_names=_strings(self._dataset("classes/names")),
            text_features=self._once(("text", text), lambda: self.text_features(text)),
            attribute_features=self._once(("attributes",), self._attribute_features),
            train_features=train_features[inverse],
            train_augmented=views[inverse],
            train_labels=train_labels[inverse],
            val_features=val_features,
            val_labels=val_labels,
            test_features=test_features,
            test_labels=test_labels,
            fingerprint=self.fingerprint,
            wnids=wnids if any(wnids) else [],
            dataset=self._fingerprint_dataset(),
            text_raw=self._once(("text_raw", text), lambda: self.text_raw(text)),
            train_augmented_norms=view_norms,
            search_features=search_features,
            search_labels=search_labels,
            val_shots_features=val_shots_features,
            val_shots_labels=val_shots_labels,
            templates=self._once(("templates",), lambda: _strings(self._dataset("text/templates"))),
            template_raw=self._once(("template_raw",), self.template_raw),
        )
        return self._to_device(data, device, text)

    def _to_device(self, data: FewShotData, device: str | torch.device, text: str) -> FewShotData:
        """`data` on `device`; the tensors every subset shares are moved once (and shared by every load)."""
        moved = {}
        for name, value in vars(data).items():
            if isinstance(value, torch.Tensor):
                if name in SHARED_FIELDS:
                    moved[name] = self._once(("device", name, text, str(device)), lambda v=value: v.to(device))
                else:
                    moved[name] = value.to(device)
        return replace(data, **moved)

    def _fingerprint_dataset(self) -> str:
        return str(json.loads(self._file.attrs["fingerprint_json"]).get("dataset", ""))

    def load_test(self, *, text: str = "coop", device: str | torch.device = "cpu") -> FewShotData:
        """Load only the test split and the text features (a cross-dataset or domain-shift target)."""
        f = self._file
        test_features, test_labels = self._test()
        dim = int(f.attrs["embed_dim"])
        empty = torch.zeros(0, dim)
        no_labels = torch.zeros(0, dtype=torch.long)
        wnids = _strings(self._dataset("classes/wnids"))
        data = FewShotData(
            class_names=_strings(self._dataset("classes/names")),
            text_features=self.text_features(text),
            attribute_features=self._attribute_features(),
            train_features=empty, train_augmented=torch.zeros(0, int(f.attrs["views"]), dim), train_labels=no_labels,
            val_features=empty, val_labels=no_labels,
            test_features=test_features, test_labels=test_labels,
            fingerprint=self.fingerprint,
            wnids=wnids if any(wnids) else [],
            dataset=self._fingerprint_dataset(),
            text_raw=self.text_raw(text),
            templates=_strings(self._dataset("text/templates")),
            template_raw=self.template_raw(),
        )
        return self._to_device(data, device, text)


# Every way in reads through these: a damaged file is one CacheError naming it (`corrupt`), never raw h5py text.
for _name in ("__init__", "info", "classes", "text_features", "text_raw", "template_raw", "subset_rows", "load",
              "load_test"):
    setattr(CacheReader, _name, _readable(getattr(CacheReader, _name)))
CacheReader.fingerprint = property(_readable(CacheReader.fingerprint.fget))  # type: ignore[method-assign]


# FewShotData fields that are the same for every subset of a cache (with one text choice): `CacheReader.load` shares
# one copy of each between the subsets it loads (no caller writes into a loaded tensor).
SHARED_FIELDS = frozenset({"text_features", "attribute_features", "test_features", "test_labels", "text_raw",
                           "search_features", "search_labels", "template_raw"})
