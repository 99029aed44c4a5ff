"""The built-in default job: the demo dataset, its cache with the bundled tiny CLIP, a small grid, a report.

`lathadapter cache build` with no dataset builds the demo cache (`build_demo_cache`); `lathadapter demo` runs the
whole pipeline (`run_demo`): few-shot and base-to-novel grids of zero-shot, the baselines and LatHAdapter.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lathadapter.adapter.catalog import method_names
from lathadapter.adapter.options import OptionError
from lathadapter.cache.build import BuildError, BuildResult, build, check_options
from lathadapter.cache.encode import Augmentation
from lathadapter.cache.store import DEFAULT_CACHE_DIR
from lathadapter.demo.dataset import (
    ATTRIBUTES_FILE,
    SPLIT_FILE,
    VIEW_CROP_RATIO,
    VIEW_CROP_SCALE,
    VIEW_FLIP,
    WORLD_VERSION,
    write_demo_dataset,
)
from lathadapter.demo.model import bundled_model
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch
from lathadapter.experiments.machine import auto_batch_runs
from lathadapter.experiments.report import write_report
from lathadapter.experiments.spec import GridSpec
from lathadapter.experiments.tuning import TUNE_PRESETS

DEMO_DATA_DIR = Path("data") / f"demo-shapes-v{WORLD_VERSION}"  # where `cache build` writes the demo images
DEMO_CACHE = DEFAULT_CACHE_DIR / "demo_shapes.h5"
# The demo's images are small shapes whose stripes and arrows have a direction: crops of the field's scale 0.5–1 cut
# them and flips show them as the corpus never did, so its views keep most of the image, unflipped (demo/dataset.py).
DEMO_AUGMENTATION = Augmentation(crop_scale=VIEW_CROP_SCALE, crop_ratio=VIEW_CROP_RATIO, flip=VIEW_FLIP)
DEMO_TRAIN_VIEWS = "augmented"  # what the demo's training draws from: chosen on val by benchmarks/demo_views.py


def build_demo_cache(data_dir: Path = DEMO_DATA_DIR, out: Path = DEMO_CACHE, *, views: int = 10,
                     augmentation: Augmentation | None = None,
                     shots: Sequence[int] = (1, 2, 4, 8, 16), seeds: Sequence[int] = (1, 2, 3),
                     device: str | None = None, workers: int = 0, force: bool = False, progress: bool = True,
                     log: Callable[[str], None] | None = None, val: str = "split", template: str | None = None,
                     precision: str = "fp32", batch_size: int = 32, **options: Any) -> BuildResult:
    """Write the demo dataset (once) and encode it with the bundled model into `out`. `val` defaults to the whole
    val split (Tip-Adapter's search set), `template` to the bundled model's; `options` are `cache.build.build`'s
    other options (attributes, full_train, seed, skip_bad). Option values are checked before the dataset is
    written."""
    check_options(shots, seeds, views, batch_size, workers, val, precision, template, seed=options.get("seed", 0))
    split = demo_dataset(data_dir)
    model = bundled_model()
    return build(None, f"split:{split}", out, model=str(model.config), pretrained=str(model.checkpoint),
                 template=template or model.template, views=views, augmentation=augmentation or DEMO_AUGMENTATION,
                 shots=shots, seeds=seeds, device=device, workers=workers, force=force, progress=progress, log=log,
                 val=val, precision=precision, batch_size=batch_size, **options)


def demo_dataset(data_dir: Path) -> Path:
    """The split file of the demo dataset in `data_dir`, written first when it is not there whole. It is written into a
    temporary folder beside `data_dir` and moved into place in one step, so that a kill or a full disk never leaves a
    half-written dataset that a rerun would take as whole, and two builds at once do not write over each other's
    files; a damaged one (an older version's interrupted write) is written again."""
    split = data_dir / SPLIT_FILE
    if _whole(data_dir):
        return split
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.", dir=data_dir.parent))
    try:
        write_demo_dataset(temporary / "dataset")
        if data_dir.exists() and not _whole(data_dir):
            data_dir.rename(temporary / "damaged")  # removed with the temporary folder
        try:
            os.replace(temporary / "dataset", data_dir)
        except OSError:
            if not _whole(data_dir):  # not another build's dataset moved into place first
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return split


def _whole(data_dir: Path) -> bool:
    """Whether `data_dir` holds a demo dataset written to the end: its attribute file and a readable split file."""
    try:
        json.loads((data_dir / SPLIT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (data_dir / ATTRIBUTES_FILE).is_file()


def check_demo_options(methods: Sequence[str], shots: Sequence[int], seeds: Sequence[int], tune: str | None) -> None:
    """The demo's methods, shots, seeds and tuning preset, checked before anything is built: the same messages as
    `grid` gives, naming the option the user typed."""
    known = method_names()
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise OptionError(f"--method {','.join(unknown) or '(none)'}: unknown method; valid: {', '.join(known)}")
    if not shots or min(shots) < 1:
        raise OptionError(f"--shots {','.join(map(str, shots))}: shots per class must be at least 1 (e.g. 1,2,4,8,16)")
    if not seeds:
        raise OptionError("--seeds: give one or more seeds, e.g. 1,2,3")
    if tune is not None and tune not in TUNE_PRESETS:
        raise OptionError(f"--tune-preset {tune}: unknown preset; valid: {', '.join(TUNE_PRESETS)}, none")


def run_demo(folder: Path, *, shots: Sequence[int] = (1, 2, 4, 8, 16), seeds: Sequence[int] = (1, 2, 3),
             methods: Sequence[str] | None = None, views: int = 10, tune: str | None = "lr",
             train_views: str = DEMO_TRAIN_VIEWS, execution: Execution | None = None, progress: bool = True,
             log: Callable[[str], None] = print, tune_score: str = "auto", tune_set: str = "split"
             ) -> dict[str, Any]:
    """Build the demo cache under `folder`, run the few-shot and base-to-novel grids of `methods` (default: every
    method; the few-shot grid over `shots` and 16, the shots base-to-novel trains on), each trained method's lr tuned
    on val images (`tune`, a grid tuning preset; None: each method's own recipe as is), and write the
    report. `execution` as a grid's (default: on the CPU, worker
    processes and runs trained together as the CPUs and the device choose); `tune_score` as `grid --tune-score`
    (auto: the base-to-novel grid chooses by val_hm, the few-shot grid by val), on the demo's whole val split
    (`tune_set`, 16 images a class, where the few-shot val subsets hold 4)."""
    execution = execution or Execution(device="cpu", workers=None, batch_runs=auto_batch_runs("cpu"))
    device = execution.device or "cpu"
    methods = list(methods) if methods is not None else method_names()
    check_demo_options(methods, shots, seeds, tune)  # before the ~20 s of building the data and the cache
    timings: dict[str, float] = {}
    start = time.perf_counter()
    shots = sorted(set(shots) | {16})  # base-to-novel uses the 16-shot subsets
    version = f"v{WORLD_VERSION}"  # an earlier world's data, cache and runs stay in their own folders
    cache_path = folder / "caches" / f"demo_shapes_{version}.h5"
    try:
        built = build_demo_cache(folder / f"data-{version}", cache_path, views=views, shots=shots, seeds=seeds,
                                 device=device, progress=progress, log=log)
    except BuildError as error:  # the build's advice names `cache build --force`, which `demo` does not have
        head, forced, _ = str(error).partition("; pass --force")
        if not forced:
            raise
        raise BuildError(f"{head}; `demo` keeps the cache it built: give it another --out, or delete "
                         f"{cache_path} to build it again") from None
    timings["cache_build"] = time.perf_counter() - start
    grid_dir = folder / f"grid-{version}"
    cache = [str(built.path)]
    tick = time.perf_counter()
    axes = {"tune_preset": tune, "train_views": [train_views]}
    if tune is not None:  # how tuned values are chosen: nothing to choose without tuning (`spec.refuse_untuned`)
        axes |= {"tune_score": tune_score, "tune_set": tune_set}
    specs = [GridSpec(cache, list(methods), list(shots), list(seeds), ["all"], **axes),
             GridSpec(cache, list(methods), [16], list(seeds), ["base"], **axes)]
    runs = 0
    for spec in specs:
        runs += launch(spec, grid_dir, execution, progress=progress)["runs"]
    timings["grid"] = time.perf_counter() - tick
    written = write_report(grid_dir / "results.csv", folder / "report")
    timings["total"] = time.perf_counter() - start
    return {"cache": str(built.path), "runs": runs, "timings": timings, **written}
