"""`cache info` and `cache verify`: a built cache's summary, and a full check of its schema and values."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from lathadapter.cache.store import (
    NORM_TOLERANCE,
    READABLE_SCHEMAS,
    REBUILD,
    SCHEMA_VERSION,
    SPLITS,
    CacheReader,
    corrupt,
    fingerprint_of,
    folder_given,
    open_failure,
    skipped_losses,
)

CHUNK_ROWS = 4096


def _size(num_bytes: int) -> str:
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} GiB"


def _ranges(values: list[int]) -> str:
    return ",".join(str(v) for v in values) if values else "-"


def _augmentation(fields: object) -> str:
    """How the views were drawn (`--crop-scale`, `--crop-ratio`, `--flip`), from the fingerprint's `augmentation`."""
    if not isinstance(fields, dict) or not {"crop_scale", "crop_ratio", "hflip"} <= fields.keys():
        return ""
    (scale_low, scale_high), (ratio_low, ratio_high) = fields["crop_scale"], fields["crop_ratio"]
    return (f": crop scale {scale_low:g}–{scale_high:g}, ratio {ratio_low:.3g}–{ratio_high:.3g}, "
            f"flip {fields['hflip']:g}")


def summary(path: str | Path) -> list[tuple[str, str]]:
    """The rows `cache info` prints: provenance, sizes, few-shot subsets and the file size."""
    with CacheReader(path) as reader:
        info = reader.info()
    fields = info.fields
    pretrained = str(fields.get("pretrained", "?"))
    if pretrained == "file":
        pretrained = f"checkpoint sha256 {str(fields.get('checkpoint_sha256', ''))[:16]}"
    shots = sorted({k for k, _ in info.subsets})
    seeds = sorted({s for _, s in info.subsets})
    preprocess = fields.get("preprocess", {})
    size = preprocess.get("size", "?") if isinstance(preprocess, dict) else "?"
    return [
        ("file", str(info.path)),
        ("size", _size(info.size_bytes)),
        ("fingerprint", info.fingerprint),
        ("dataset", f"{fields.get('dataset', '?')} ({len(info.class_names)} classes)"),
        ("model", f"{fields.get('model', '?')} · {pretrained} · quick_gelu={fields.get('quick_gelu', '?')} · "
                  f"{fields.get('precision', '?')} · open_clip {fields.get('open_clip_version', '?')}"),
        ("image size", str(size)),
        ("features", f"dim {info.embed_dim} · float16 · L2-normalised"),
        ("images", " · ".join(f"{split} {count}" for split, count in info.counts.items())),
        ("views", f"{info.views} augmented views per train image (seed {fields.get('seed', '?')})"
                  + (_augmentation(fields.get("augmentation")) if info.views else "")),
        ("subsets", f"{len(info.subsets)}: shots {_ranges(shots)} × seeds {_ranges(seeds)}"
                    + (" · whole train split" if fields.get("full_train") else "")),
        ("val", ("split: the whole val split (Tip-Adapter's and GDA's official search set)"
                 + (" · LP++'s K-shot val sets" if info.val_shots else
                    f" · no LP++ K-shot val sets (written before they were stored: `{REBUILD}`)"))
         if info.val_split else "subset: the few-shot val subsets only"),
        ("schema", f"{info.schema_version} · raw feature norms stored" if info.schema_version >= 2 else
         f"{info.schema_version} · no raw feature norms (the official recipes of TaskRes, Tip-Adapter and ZS-LP "
         f"need them: `{REBUILD}`)"),
        ("templates", f"{len(info.templates)} (CoOp: {info.templates[0]!r})" if info.templates else "0"),
        ("attributes", f"{info.attribute_count} phrases"),
        ("skipped", (f"{len(info.skipped)} unreadable image{'s' if len(info.skipped) != 1 else ''}" if info.skipped
                     else "none")),
    ]


def _check_vectors(problems: list[str], name: str, data: h5py.Dataset, skipped: np.ndarray | None = None) -> None:
    """Finite values and unit norms along the last axis, read in chunks, naming the first bad row of each kind.

    Every vector of a row (one per view, or per class for text) must be unit norm; an all-zero vector is flagged like
    a NaN, except in the rows of images skipped by `--skip-bad` (`skipped`), which must be all zero."""
    first: dict[str, int] = {}
    count: Counter[str] = Counter()
    off_norm = 0.0
    for start in range(0, data.shape[0], CHUNK_ROWS):
        block = data[start:start + CHUNK_ROWS].astype(np.float32)
        if block.size == 0:
            continue
        vectors = block.reshape(len(block), -1, block.shape[-1])
        finite = np.isfinite(vectors).all(axis=(1, 2))
        norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0), axis=-1)
        exempt = skipped[start:start + len(block)] if skipped is not None else np.zeros(len(block), dtype=bool)
        zero = finite & ~exempt & (norms == 0).any(axis=1)
        kinds = {
            "non-finite": ~finite,
            "zero": zero,
            "norm": finite & ~exempt & ~zero & (np.abs(norms - 1) >= NORM_TOLERANCE).any(axis=1),
            "skipped": finite & exempt & (norms != 0).any(axis=1),
        }
        for kind, mask in kinds.items():
            hits = np.flatnonzero(mask)
            if len(hits) and kind not in first:
                first[kind] = start + int(hits[0])
                if kind == "norm":
                    off_norm = float(norms[hits[0]][np.argmax(np.abs(norms[hits[0]] - 1))])
            count[kind] += len(hits)
    what = {
        "non-finite": "holds non-finite values (NaN or infinity)",
        "zero": "is all zero, and is not the row of an image skipped by --skip-bad",
        "norm": f"is not unit norm (norm {off_norm:.4f})",
        "skipped": "is the row of an image skipped by --skip-bad but is not all zero",
    }
    for kind, row in first.items():
        more = f" (and {count[kind] - 1} more rows)" if count[kind] > 1 else ""
        problems.append(f"{name}: row {row} {what[kind]}{more}")


def _check_norms(problems: list[str], name: str, norms: np.ndarray, skipped: np.ndarray | None = None) -> None:
    """Raw norms (schema 2): finite and positive, except in the rows of images skipped by `--skip-bad` (zero); names
    the first bad row."""
    rows = norms.reshape(len(norms), -1) if norms.size else norms.reshape(len(norms), 0)
    exempt = skipped if skipped is not None else np.zeros(len(rows), dtype=bool)
    bad = ~np.where(exempt[:, None], rows == 0, np.isfinite(rows) & (rows > 0)).all(axis=1)
    hits = np.flatnonzero(bad)
    if len(hits):
        more = f" (and {len(hits) - 1} more rows)" if len(hits) > 1 else ""
        problems.append(f"{name}: row {int(hits[0])} holds a raw norm that is not a positive finite number{more}")


def _expect(problems: list[str], f: h5py.File, name: str, shape: tuple[int, ...], kind: str) -> bool:
    data = f.get(name)
    if not isinstance(data, h5py.Dataset):
        problems.append(f"missing dataset {name}")
        return False
    if data.shape != shape:
        problems.append(f"{name}: shape {data.shape}, expected {shape}")
        return False
    actual = "str" if h5py.check_string_dtype(data.dtype) else data.dtype.name
    if actual != kind:
        problems.append(f"{name}: dtype {actual}, expected {kind}")
        return False
    return True


def _check_subsets(problems: list[str], f: h5py.File, counts: dict[str, int], labels: dict[str, np.ndarray]) -> bool:
    """Subset rows within their split, without repeats, at most `shots` (`min(shots, 4)` for val) per class, and
    LP++'s `val_shots` where present (K a class, repeats allowed); returns whether every subset's rows are usable.
    `labels` holds the splits whose labels are sound."""
    usable = True
    for key, group in f.get("subsets", {}).items():
        shots = int(group.attrs.get("shots", 0))
        for name, split, cap in (("train", "train", shots), ("val", "val", min(shots, 4)), ("val_shots", "val", shots)):
            data = group.get(name)
            if name == "val_shots" and data is None:  # optional: only `--val split` caches hold it
                continue
            if not isinstance(data, h5py.Dataset) or data.ndim != 1 or data.dtype.kind not in "iu":
                problems.append(f"missing dataset subsets/{key}/{name}" if data is None else
                                f"subsets/{key}/{name}: not a list of row indices")
                usable = False
                continue
            rows = data[()]
            if split not in counts:
                usable = False
                continue
            outside = rows[(rows < 0) | (rows >= counts[split])]
            if len(outside):
                problems.append(f"subsets/{key}/{name}: row indices outside 0..{counts[split] - 1} "
                                f"(row {int(outside[0])})")
                usable = False
                continue
            if name != "val_shots" and len(np.unique(rows)) != len(rows):
                problems.append(f"subsets/{key}/{name}: repeated rows")
            if split in labels:
                per_class = Counter(labels[split][rows].tolist())
                if per_class and max(per_class.values()) > cap:
                    problems.append(f"subsets/{key}/{name}: a class has {max(per_class.values())} images, "
                                    f"above {cap}")
    return usable


def verify(path: str | Path) -> list[str]:
    """Every problem found in a cache file (an empty list means it passed): schema, missing datasets, shapes and
    dtypes, fingerprint, completeness, finite, non-zero, unit-norm rows, label and subset index bounds, and what
    `--skip-bad` left out (rows of skipped images must be zero; no split or class may have lost every image)."""
    path = Path(path)
    if path.is_dir():
        return [folder_given(path)]
    if not path.is_file():
        return [f"cache file {path} does not exist; build one with `lathadapter cache build`"]
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        unopened = open_failure(path, error)
        if unopened is not None:
            return [str(unopened)]
        return [f"not a readable HDF5 file ({error}); if it is a cache, it is corrupt: rebuild it with "
                f"`{REBUILD}`"]
    try:
        return _verify_open(f, path)
    except (OSError, RuntimeError) as error:
        return [str(corrupt(path, error, verify_hint=False)).removeprefix(f"{path}: ")]


def _verify_open(f: h5py.File, path: Path) -> list[str]:
    """`verify` of the opened file `f` (closed on return)."""
    problems: list[str] = []
    with f:
        version = int(f.attrs.get("schema_version", 0))
        if version not in READABLE_SCHEMAS:
            return [f"schema version {version}, expected {SCHEMA_VERSION} (or {', '.join(map(str, READABLE_SCHEMAS))})"]
        norms = version >= 2  # the raw norms of every vector (schema 2)
        for attr in ("fingerprint", "fingerprint_json", "embed_dim", "views", "complete"):
            if attr not in f.attrs:
                problems.append(f"missing root attribute {attr}")
        if problems:
            return problems
        if fingerprint_of(json.loads(f.attrs["fingerprint_json"])) != f.attrs["fingerprint"]:
            problems.append("fingerprint does not match fingerprint_json")
        if not bool(f.attrs["complete"]):
            problems.append("the cache is marked incomplete (its build did not finish)")
        dim, views = int(f.attrs["embed_dim"]), int(f.attrs["views"])
        names = f.get("classes/names")
        if not _expect(problems, f, "classes/names", names.shape if isinstance(names, h5py.Dataset) else (0,), "str"):
            return problems
        num_classes = names.shape[0]
        _expect(problems, f, "classes/wnids", (num_classes,), "str")
        sound = _expect(problems, f, "skipped", f["skipped"].shape if "skipped" in f else (0,), "str")
        skipped_paths = set(f["skipped"].asstr()[()]) if sound else set()
        counts: dict[str, int] = {}
        labels: dict[str, np.ndarray] = {}
        for split in SPLITS:
            prefix = f"splits/{split}"
            paths = f.get(f"{prefix}/paths")
            if not _expect(problems, f, f"{prefix}/paths", paths.shape[:1] if isinstance(paths, h5py.Dataset) else (0,),
                           "str"):
                sound = False
                continue
            n = counts[split] = paths.shape[0]
            if _expect(problems, f, f"{prefix}/labels", (n,), "int64"):
                labels[split] = f[f"{prefix}/labels"][()]
                if n and (labels[split].min() < 0 or labels[split].max() >= num_classes):
                    problems.append(f"{prefix}/labels: values outside 0..{num_classes - 1}")
                    sound = False
            else:
                sound = False
            if _expect(problems, f, f"{prefix}/encoded", (n,), "bool") and not f[f"{prefix}/encoded"][()].all():
                problems.append(f"{prefix}: {int((~f[f'{prefix}/encoded'][()]).sum())} rows not encoded")
            skipped = np.fromiter((p in skipped_paths for p in paths.asstr()[()]), dtype=bool, count=n)
            if _expect(problems, f, f"{prefix}/features", (n, dim), "float16"):
                _check_vectors(problems, f"{prefix}/features", f[f"{prefix}/features"], skipped)
            if split == "train" and _expect(problems, f, f"{prefix}/augmented", (n, views, dim), "float16"):
                _check_vectors(problems, f"{prefix}/augmented", f[f"{prefix}/augmented"], skipped)
            if norms and _expect(problems, f, f"{prefix}/norms", (n,), "float32"):
                _check_norms(problems, f"{prefix}/norms", f[f"{prefix}/norms"][()], skipped)
            if norms and split == "train" and _expect(problems, f, f"{prefix}/augmented_norms", (n, views),
                                                      "float32"):
                _check_norms(problems, f"{prefix}/augmented_norms", f[f"{prefix}/augmented_norms"][()], skipped)
        if _expect(problems, f, "text/templates", f["text/templates"].shape[:1] if "text/templates" in f else (0,),
                   "str"):
            templates = f["text/templates"].shape[0]
            if templates == 0:
                problems.append("text/templates is empty")
            if _expect(problems, f, "text/features", (templates, num_classes, dim), "float16"):
                _check_vectors(problems, "text/features", f["text/features"])
            if norms and _expect(problems, f, "text/norms", (templates, num_classes), "float32"):
                _check_norms(problems, "text/norms", f["text/norms"][()].T)
        if _expect(problems, f, "attributes/phrases",
                   f["attributes/phrases"].shape[:1] if "attributes/phrases" in f else (0,), "str"):
            phrases = f["attributes/phrases"].shape[0]
            if _expect(problems, f, "attributes/features", (phrases, dim), "float16"):
                _check_vectors(problems, "attributes/features", f["attributes/features"])
            if norms and _expect(problems, f, "attributes/norms", (phrases,), "float32"):
                _check_norms(problems, "attributes/norms", f["attributes/norms"][()])
        sound &= _check_subsets(problems, f, counts, labels)
        if sound:
            problems += skipped_losses(f)
    return problems
