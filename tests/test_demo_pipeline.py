"""The built-in default job end to end: `cache build` with no dataset, then `fit --shots 4`, and `demo`."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from lathadapter.cache.store import CacheReader
from lathadapter.cli import app
from lathadapter.demo.dataset import CLASSES
from lathadapter.demo.pipeline import WORLD_VERSION, run_demo
from lathadapter.experiments.run import fit


def test_cache_build_without_a_dataset_builds_the_demo_then_fit_finds_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["cache", "build", "--views", "2", "--shots", "4", "--seeds", "1", "--workers", "0",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    cache = tmp_path / "caches" / "demo_shapes.h5"
    with CacheReader(cache) as reader:
        info = reader.info()
    assert info.class_names == [c.replace(" ", "_") for c in CLASSES] and info.subsets == [(4, 1)]
    assert info.fields["dataset"] == "DemoShapes" and "lathadapter-tiny-shapes" in str(info.fields["model"])
    result = runner.invoke(app, ["fit", "--shots", "4", "--method", "zeroshot", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    zero_shot = fit(None, "zeroshot", shots=4, out=None)["accuracy"]["all"]
    assert zero_shot >= 3 * 100 / len(CLASSES)  # the bundled towers really are aligned


def test_demo_writes_the_table_and_the_plots(tmp_path: Path) -> None:
    # what a demo of the first world left in its folder: another dataset's cache where that demo kept its cache
    (tmp_path / "caches").mkdir()
    (tmp_path / "caches" / "demo_shapes.h5").write_bytes(b"the first world's cache")
    result = run_demo(tmp_path, shots=(1,), seeds=(1,), methods=("zeroshot", "tip-adapter", "lathadapter"), views=2,
                      progress=False, log=lambda message: None)
    # few-shot at 1 and 16 shots, and base-to-novel; LatHAdapter's lr tuned over 3 candidates, and up to 2 more per
    # group where the best lr was on an edge of the preset's grid (`tune.origin`: the candidate it grew from)
    with (tmp_path / f"grid-v{WORLD_VERSION}" / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    extensions = Counter(r["tune.group"] for r in rows if r.get("tune.origin"))
    assert result["runs"] == (1 + 1 + 3) * 2 + (1 + 1 + 3) + sum(extensions.values()) == len(rows)
    assert all(n <= 2 for n in extensions.values())
    assert {r["tune.score"] for r in rows if r["method"] == "lathadapter"} == {"val", "val_hm"}
    assert "Few-shot accuracy" in result["markdown"] and "Base-to-novel" in result["markdown"]
    names = {Path(p).name for p in result["plots"]}
    assert {"accuracy_vs_shots_DemoShapes.png", "base_novel_DemoShapes.png", "poincare_disk.png"} <= names
    assert all(Path(p).stat().st_size > 10_000 for p in result["plots"])
    assert (tmp_path / "caches" / "demo_shapes.h5").read_bytes() == b"the first world's cache"  # left as it was


def test_the_demo_dataset_is_moved_into_place_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    """A write cut short (a full disk: the dataset writer fails after its first file) leaves no dataset folder and no
    temporary one, so the rerun writes it again; a damaged folder from an older version (a truncated split file) is
    written again; a whole one is kept as it is. The writer is replaced by a small one: what is checked is the
    folder's life, not the images."""
    import errno
    import json

    from lathadapter.demo import pipeline
    from lathadapter.demo.dataset import ATTRIBUTES_FILE, SPLIT_FILE

    calls = []

    def writer(fail: bool):
        def write(folder: Path) -> Path:
            calls.append(folder)
            folder.mkdir(parents=True)
            (folder / ATTRIBUTES_FILE).write_text("{}")
            if fail:
                raise OSError(errno.ENOSPC, "No space left on device")
            (folder / SPLIT_FILE).write_text(json.dumps({"train": [], "val": [], "test": []}))
            return folder / SPLIT_FILE
        return write

    data_dir = tmp_path / "data" / "demo"
    monkeypatch.setattr(pipeline, "write_demo_dataset", writer(fail=True))
    try:
        pipeline.demo_dataset(data_dir)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    else:
        raise AssertionError("the failed write was not reported")
    assert list((tmp_path / "data").iterdir()) == []  # neither the dataset nor a temporary folder

    data_dir.mkdir()
    (data_dir / SPLIT_FILE).write_text('{"train": [["images/a')  # an older version's write cut short
    monkeypatch.setattr(pipeline, "write_demo_dataset", writer(fail=False))
    split = pipeline.demo_dataset(data_dir)
    assert json.loads(split.read_text()) == {"train": [], "val": [], "test": []}
    assert (data_dir / ATTRIBUTES_FILE).is_file() and [p.name for p in (tmp_path / "data").iterdir()] == ["demo"]

    written = len(calls)
    assert pipeline.demo_dataset(data_dir) == split and len(calls) == written  # whole: not written again
