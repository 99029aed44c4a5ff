"""`cache subset`: one few-shot subset as portable JSON, in the split-file format, to tie results to exact images."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from lathadapter.cache.store import CacheReader


def export_subset(path: str | Path, shots: int, seed: int) -> dict[str, object]:
    """The (`shots`, `seed`) subset of a cache: train and val lists of `[relative_path, label, classname]` in Dassl's
    draw order, paths as in the dataset's split file (relative to its image folder), plus provenance. Images left out
    by `--skip-bad` are omitted, as they are from what a fit loads."""
    with CacheReader(path) as reader:
        train_rows, val_rows = reader.subset_rows(shots, seed)
        info = reader.info()
        f = reader.file
        prefix = str(info.fields.get("image_dir", ""))

        def entries(split: str, rows: list[int]) -> list[list[object]]:
            paths = f[f"splits/{split}/paths"].asstr()[()]
            labels = f[f"splits/{split}/labels"][()]
            out: list[list[object]] = []
            for row in rows:
                relative = str(paths[row])
                if prefix and relative.startswith(prefix + "/"):
                    relative = relative[len(prefix) + 1:]
                out.append([relative, int(labels[row]), info.class_names[int(labels[row])]])
            return out

        return {
            "dataset": info.fields.get("dataset", Path(path).stem),
            "shots": shots,
            "seed": seed,
            "image_dir": prefix,
            "cache_fingerprint": info.fingerprint,
            "train": entries("train", train_rows.tolist()),
            "val": entries("val", val_rows.tolist()),
        }


def to_json(subset: dict[str, object]) -> str:
    """JSON with one `[relative_path, label, classname]` entry per line (diff-friendly, like a split file)."""
    lines = ["{"]
    for key, value in subset.items():
        if isinstance(value, list):
            body = ",\n".join(f"  {json.dumps(entry)}" for entry in value)
            lines.append(f' {json.dumps(key)}: [\n{body}\n ],' if value else f" {json.dumps(key)}: [],")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)},")
    lines[-1] = lines[-1].removesuffix(",")
    return "\n".join(lines + ["}"])


def write_subset(path: str | Path, shots: int, seed: int, out: str | Path | None = None) -> str:
    """The subset's JSON text; also written to `out` when given, atomically (a unique temporary file beside it is
    renamed into place, so a reader never sees half a file)."""
    text = to_json(export_subset(path, shots, seed))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
        try:
            temporary.write_text(text + "\n")
            os.replace(temporary, out)
        finally:
            temporary.unlink(missing_ok=True)
    return text
