"""`cache info` and `cache verify`: a built cache's summary, and a full check of its schema and values."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from lathadapter.cache.store import SCHEMA_VERSION, SPLITS, CacheReader, fingerprint_of

NORM_TOLERANCE = 1e-2  # float16 storage keeps unit vectors within ~1e-3 of norm 1
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
        ("views", f"{info.views} augmented views per train image (seed {fields.get('seed', '?')})"),
        ("subsets", f"{len(info.subsets)}: shots {_ranges(shots)} × seeds {_ranges(seeds)}"
                    + (" · whole train split" if fields.get("full_train") else "")),
        ("templates", f"{len(info.templates)} (CoOp: {info.templates[0]!r})" if info.templates else "0"),
        ("attributes", f"{info.attribute_count} phrases"),
        ("skipped", f"{len(info.skipped)} unreadable images" if info.skipped else "none"),
    ]


def _check_vectors(problems: list[str], name: str, data: h5py.Dataset, exempt: np.ndarray | None = None) -> None:
    """Finite values and unit norms along the last axis, read in chunks; `exempt` rows must be all zero instead."""
    for start in range(0, data.shape[0], CHUNK_ROWS):
        block = data[start:start + CHUNK_ROWS].astype(np.float32)
        if not np.isfinite(block).all():
            problems.append(f"{name}: non-finite values in rows {start}..{start + len(block) - 1}")
            return
        if block.size == 0:
            continue
        norms = np.linalg.norm(block, axis=-1).reshape(len(block), -1)
        off = np.abs(norms - 1) >= NORM_TOLERANCE
        if exempt is not None:
            skipped = exempt[start:start + len(block)]
            if np.any(norms[skipped] != 0):
                problems.append(f"{name}: skipped rows should hold zeros")
                return
            off[skipped] = False
        if off.any():
            row = start + int(np.flatnonzero(off.any(axis=1))[0])
            problems.append(f"{name}: row {row} is not unit norm (norm {norms[row - start].min():.4f})")
            return


def _expect(problems: list[str], f: h5py.File, name: str, shape: tuple[int, ...], kind: str) -> bool:
    if name not in f:
        problems.append(f"missing dataset {name}")
        return False
    data = f[name]
    if data.shape != shape:
        problems.append(f"{name}: shape {data.shape}, expected {shape}")
        return False
    actual = "str" if h5py.check_string_dtype(data.dtype) else data.dtype.name
    if actual != kind:
        problems.append(f"{name}: dtype {actual}, expected {kind}")
        return False
    return True


def _check_subsets(problems: list[str], f: h5py.File, counts: dict[str, int]) -> None:
    labels = {split: f[f"splits/{split}/labels"][()] for split in ("train", "val")}
    for key, group in f.get("subsets", {}).items():
        shots = int(group.attrs.get("shots", 0))
        for split, cap in (("train", shots), ("val", min(shots, 4))):
            if split not in group:
                problems.append(f"subsets/{key}: missing {split}")
                continue
            rows = group[split][()]
            if rows.size and (rows.min() < 0 or rows.max() >= counts[split]):
                problems.append(f"subsets/{key}/{split}: row indices outside 0..{counts[split] - 1}")
                continue
            if len(np.unique(rows)) != len(rows):
                problems.append(f"subsets/{key}/{split}: repeated rows")
            per_class = Counter(labels[split][rows].tolist())
            if per_class and max(per_class.values()) > cap:
                problems.append(f"subsets/{key}/{split}: a class has {max(per_class.values())} images, above {cap}")


def verify(path: str | Path) -> list[str]:
    """Every problem found in a cache file (an empty list means it passed): schema, shapes and dtypes, fingerprint,
    completeness, finite values, unit norms, label and subset index bounds."""
    path = Path(path)
    if not path.is_file():
        return [f"{path} does not exist"]
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        return [f"{path} is not a readable HDF5 file ({error})"]
    problems: list[str] = []
    with f:
        version = int(f.attrs.get("schema_version", 0))
        if version != SCHEMA_VERSION:
            return [f"schema version {version}, expected {SCHEMA_VERSION}"]
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
        if not _expect(problems, f, "classes/names", (f["classes/names"].shape[0],) if "classes/names" in f else (0,),
                       "str"):
            return problems
        num_classes = f["classes/names"].shape[0]
        _expect(problems, f, "classes/wnids", (num_classes,), "str")
        skipped_paths = set(f["skipped"].asstr()[()]) if "skipped" in f else set()
        counts: dict[str, int] = {}
        for split in SPLITS:
            prefix = f"splits/{split}"
            if f"{prefix}/paths" not in f:
                problems.append(f"missing dataset {prefix}/paths")
                return problems
            n = counts[split] = f[f"{prefix}/paths"].shape[0]
            shapes = [("paths", (n,), "str"), ("labels", (n,), "int64"), ("features", (n, dim), "float16"),
                      ("encoded", (n,), "bool")] + ([("augmented", (n, views, dim), "float16")] if split == "train"
                                                    else [])
            if not all(_expect(problems, f, f"{prefix}/{name}", shape, kind) for name, shape, kind in shapes):
                continue
            if not f[f"{prefix}/encoded"][()].all():
                problems.append(f"{prefix}: {int((~f[f'{prefix}/encoded'][()]).sum())} rows not encoded")
            labels = f[f"{prefix}/labels"][()]
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                problems.append(f"{prefix}/labels: values outside 0..{num_classes - 1}")
            exempt = np.array([p in skipped_paths for p in f[f"{prefix}/paths"].asstr()[()]], dtype=bool)
            _check_vectors(problems, f"{prefix}/features", f[f"{prefix}/features"], exempt)
            if split == "train":
                _check_vectors(problems, f"{prefix}/augmented", f[f"{prefix}/augmented"], exempt)
        if "text/templates" in f:
            templates = f["text/templates"].shape[0]
            if templates == 0:
                problems.append("text/templates is empty")
            if _expect(problems, f, "text/features", (templates, num_classes, dim), "float16"):
                _check_vectors(problems, "text/features", f["text/features"])
        else:
            problems.append("missing dataset text/templates")
        if "attributes/phrases" in f:
            phrases = f["attributes/phrases"].shape[0]
            if _expect(problems, f, "attributes/features", (phrases, dim), "float16"):
                _check_vectors(problems, "attributes/features", f["attributes/features"])
        else:
            problems.append("missing dataset attributes/phrases")
        if len(counts) == len(SPLITS) and not any(p.startswith("splits/") and "shape" in p for p in problems):
            _check_subsets(problems, f, counts)
    return problems
