"""Every method on a synthetic hierarchy cache (`cache/synthetic.py`), with each baseline's official recipe and with
fair tuning (`--tune-preset lr`: every trained method's own lr × 1, 0.1, 10, chosen on few-shot val): few-shot
(1, 4, 16 shots, all classes) and base-to-novel (16 shots), mean ± std over seeds 1–3.

    python benchmarks/baselines_study.py [--classes 40] [--out benchmarks/.data/baselines-study] [--grids tuned-base]

Prints the report's tables for both grids (they resume: a rerun skips finished runs; the world is written afresh
each time and replaces the stored one where they differ, so a world left by older code is not read). The world is
synthetic: the numbers compare methods on one controlled hierarchy, not on the field's datasets.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from lathadapter.adapter.catalog import method_names
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.launch import launch
from lathadapter.experiments.report_tables import summary_markdown
from lathadapter.experiments.spec import GridSpec

DATA = Path(__file__).parent / ".data"
SEEDS = [1, 2, 3]
GRIDS = ("official-all", "official-base", "tuned-all", "tuned-base")  # recipe × class protocol


def as_bytes(value: object) -> bytes:
    """A value read from HDF5 as bytes to compare: its array's bytes, or the text of its strings (an object array's
    bytes are pointers)."""
    array = np.asarray(value)
    return repr(array.tolist()).encode() if array.dtype == object else array.tobytes()


def same_content(a: Path, b: Path) -> bool:
    """Whether two HDF5 files hold the same datasets (names and values) and the same attributes."""
    def read(path: Path) -> dict[str, bytes]:
        found: dict[str, bytes] = {}

        def visit(name: str, item: h5py.Group | h5py.Dataset) -> None:
            found.update({f"{name}@{key}": as_bytes(value) for key, value in item.attrs.items()})
            if isinstance(item, h5py.Dataset):
                found[name] = as_bytes(item[()])

        with h5py.File(path, "r") as f:
            visit("", f)
            f.visititems(visit)
        return found
    return read(a) == read(b)


def study_world(cache: Path, classes: int) -> Path:
    """The study's synthetic world of `classes` classes at `cache`, as today's writer writes it: written afresh (a
    second or so) and kept where it differs from the file there, so that a world left by older code (one without
    LP++'s val set, before stop 17: its fingerprint, a hash of the writer's arguments, is the same) is never read
    again."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    fresh = cache.with_name(f"{cache.stem}.fresh{cache.suffix}")
    write_synthetic_cache(fresh, num_classes=classes, dim=128, shots=(1, 4, 16), seeds=tuple(SEEDS),
                          families=max(4, classes // 8), seed=200, name="study")
    if cache.exists() and same_content(cache, fresh):
        fresh.unlink()
    else:
        fresh.replace(cache)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--out", type=Path, default=DATA / "baselines-study")
    parser.add_argument("--grids", default=",".join(GRIDS), help=f"comma-separated grids to run, of {', '.join(GRIDS)}")
    args = parser.parse_args()
    chosen = args.grids.split(",")
    if unknown := sorted(set(chosen) - set(GRIDS)):
        parser.error(f"--grids {','.join(unknown)}: choose among {', '.join(GRIDS)}")
    cache = study_world(DATA / f"study-world-{args.classes}.h5", args.classes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; synthetic world of {args.classes} classes, "
          "D = 128; every method at its defaults (baselines: recipe=official)")
    for label, preset in (("official", None), ("tuned", "lr")):
        for classes, shots in (("all", [1, 4, 16]), ("base", [16])):
            if f"{label}-{classes}" not in chosen:
                continue
            start = time.perf_counter()
            folder = args.out / f"{label}-{classes}"
            summary = launch(GridSpec([str(cache)], method_names(), shots, SEEDS, [classes], tune_preset=preset),
                             folder, progress=False)
            print(f"\n## {label}, classes={classes}: {summary['runs']} runs in {time.perf_counter() - start:.0f} s\n")
            print(summary_markdown(folder))


if __name__ == "__main__":
    main()
