"""Behaviours that the sixth to eighth mutation campaigns (stops 26 and 27) left open and a tenth pass (helper M10)
found untested (the cache store's choice of cache and its test-only test, `cache info`'s sizes, the results table's
locks, a grid's cache checks, `inspect`'s and `compare`'s printing): each test here fails on a mutant that the rest
of the suite let pass, and checks the code against an independent oracle (a documented rule restated, a hand-built
input with a known answer)."""

from __future__ import annotations

import fcntl
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

import lathadapter
from lathadapter.cache.store import CacheChoiceError, CacheError, CacheLayout, CacheReader, RawNorms, write_cache
from lathadapter.cli import app

# ------------------------------------------------------------------------------------------ the cache store


def test_no_cache_given_takes_the_folder_s_only_cache_and_refuses_to_guess_among_several(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`resolve_cache(None)`: the only `*.h5` of the default folder, else an error naming each (docs: never a guess)."""
    from lathadapter.cache import store

    monkeypatch.setattr(store, "DEFAULT_CACHE_DIR", tmp_path)
    (tmp_path / "b.h5").touch()
    assert store.resolve_cache(None) == tmp_path / "b.h5"
    (tmp_path / "a.h5").touch()
    with pytest.raises(CacheChoiceError, match="several caches") as error:
        store.resolve_cache(None)
    assert str(tmp_path / "a.h5") in str(error.value) and str(tmp_path / "b.h5") in str(error.value)


def _tiny_cache(path: Path, train: list[int], subsets: dict, **fingerprint: object) -> Path:
    """A 2-class cache without views written through `write_cache` from unit vectors: `train` labels, val [0, 1],
    test [1, 0], the `subsets` given and the fingerprint fields added."""
    dim, labels = 4, {"train": train, "val": [0, 1], "test": [1, 0]}
    layout = CacheLayout(fingerprint={"model": "hand", "dataset": "hand", "val": "subsets", **fingerprint},
                         class_names=["ant", "bee"], embed_dim=dim, views=0,
                         paths={s: [f"{s}/{i}.png" for i in range(len(v))] for s, v in labels.items()},
                         labels=labels, subsets=subsets, templates=["a {}."], attribute_phrases=[], wnids=None,
                         val_shots={})
    unit = np.eye(dim)
    features = {"train": unit[[i % dim for i in range(len(train))]], "val": unit[:2], "test": unit[2:4]}
    norms = RawNorms({s: np.ones(len(v)) for s, v in labels.items()}, np.zeros((len(train), 0)), np.ones((1, 2)),
                     np.zeros(0))
    write_cache(path, layout, features, np.zeros((len(train), 0, dim)), unit[:2][None], np.zeros((0, dim)), norms)
    return path


def test_a_cache_with_subsets_but_no_train_rows_is_not_test_only(tmp_path: Path) -> None:
    """Test-only means no train split and no few-shot subsets (the ImageNet variants); a dataset whose split source
    lists no train image still drew (empty) subsets, so it is a cache whose subsets are empty, not a test-only one."""
    with CacheReader(_tiny_cache(tmp_path / "c.h5", [], {(1, 1): ([], [0, 1])})) as reader:
        assert reader.subsets() == [(1, 1)] and not reader.test_only


def test_cache_info_describes_no_augmentation_for_a_cache_without_views(tmp_path: Path) -> None:
    """`--views 0` draws nothing, so `cache info` names no crop scale, ratio or flip even where the fingerprint
    records the (unused) augmentation settings."""
    from lathadapter.cache.inspection import summary

    augmentation = {"crop_scale": [0.5, 1.0], "crop_ratio": [0.75, 1.3333], "hflip": 0.5}
    path = _tiny_cache(tmp_path / "c.h5", [0, 1], {(1, 1): ([0, 1], [0, 1])}, augmentation=augmentation, seed=3)
    assert dict(summary(path))["views"] == "0 augmented views per train image (seed 3)"


@pytest.mark.parametrize(("num_bytes", "shown"), [(1023, "1023 B"), (1024, "1.0 KiB"), (1000 * 1024, "1000.0 KiB"),
                                                  (1024 ** 2, "1.0 MiB"), (3 * 1024 ** 3 // 2, "1.5 GiB"),
                                                  (2048 * 1024 ** 3, "2048.0 GiB")])
def test_cache_info_sizes_are_in_binary_units(num_bytes: int, shown: str) -> None:
    """KiB, MiB and GiB are powers of 1024 (IEC): a unit is used from 1024 of the one below, GiB without a bound."""
    from lathadapter.cache.inspection import _size

    assert _size(num_bytes) == shown


# ------------------------------------------------------------------------------------------ the results table's locks


def test_a_waiting_lock_waits_for_its_holder_and_a_non_blocking_one_gives_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`file_lock(wait=True)` blocks until the holder lets go and then holds it; `wait=False` gets False at once. The
    holder is simulated: a non-blocking request finds the lock taken, a blocking one gets it once released."""
    from lathadapter.experiments import table

    real = fcntl.flock
    asked = []

    def held_elsewhere(f, operation):  # noqa: ANN001, ANN202
        asked.append(operation)
        if operation & fcntl.LOCK_NB:
            raise BlockingIOError
        return real(f, operation)

    monkeypatch.setattr(table.fcntl, "flock", held_elsewhere)
    with table.file_lock(tmp_path / "x.lock") as got:
        assert got is True
    with table.file_lock(tmp_path / "x.lock", wait=False) as got:
        assert got is False


def test_a_lock_file_its_holder_removed_while_waiting_is_locked_afresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter whose lock file was removed by its holder (a finished run, `sweep_stale`) before it got the lock holds
    nothing that others see: it must lock the file now at the path, which another process's lock then excludes."""
    from lathadapter.experiments import table

    path, real, removed = tmp_path / "run.lock", fcntl.flock, []

    def removed_while_waiting(f, operation):  # noqa: ANN001, ANN202
        real(f, operation)
        if not removed:  # the holder removed the file just before releasing it to us
            removed.append(True)
            path.unlink()

    monkeypatch.setattr(table.fcntl, "flock", removed_while_waiting)
    with table.file_lock(path) as got:
        monkeypatch.setattr(table.fcntl, "flock", real)
        assert got is True and path.exists()
        with path.open("a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's attempt: excluded


def test_the_results_table_is_rewritten_under_its_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`write_results` reads the runs and writes `results.csv` holding `OUT/.results.lock` (one process at a time)."""
    from lathadapter.experiments import table

    (tmp_path / "runs").mkdir()
    seen = []

    def rows(out: Path) -> list:
        with (out / ".results.lock").open("a") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
            except BlockingIOError:
                seen.append("held")
        return []

    monkeypatch.setattr(table, "collect_rows", rows)
    table.write_results(tmp_path)
    assert seen == ["held"]


# ------------------------------------------------------------------------------------------ a grid's cache checks


def _grid_run(cache: str, classes: str = "all", tune: object = None) -> SimpleNamespace:
    return SimpleNamespace(cache=cache, tune=tune, config=SimpleNamespace(shots=2, seed=1, classes=classes))


def test_one_unreadable_cache_alone_is_its_own_one_line_error(tmp_path: Path) -> None:
    from lathadapter.experiments.data import check_caches

    missing = tmp_path / "missing.h5"
    with pytest.raises(CacheError) as error:
        check_caches([_grid_run(str(missing))])
    with pytest.raises(CacheError) as alone:
        CacheReader(missing)
    assert str(error.value) == str(alone.value) and "\n" not in str(error.value)


def test_val_hm_of_base_classes_counts_ceil_half_the_classes(tmp_path: Path) -> None:
    """CoOp's base half of C classes is the first ⌈C/2⌉: three classes give a base half of two, which `val_hm` can
    split in two again; two classes give one, which it cannot."""
    from lathadapter.adapter.options import OptionError
    from lathadapter.cache.synthetic import write_synthetic_cache
    from lathadapter.experiments.data import check_tuning

    tune = SimpleNamespace(tune_set="subset", score="val_hm")
    three = write_synthetic_cache(tmp_path / "three.h5", num_classes=3, dim=8, views=0, shots=(2,), seeds=(1,))
    check_tuning([_grid_run(str(three), "base", tune)])
    two = write_synthetic_cache(tmp_path / "two.h5", num_classes=2, dim=8, views=0, shots=(2,), seeds=(1,))
    with pytest.raises(OptionError, match="too few for classes=base"):
        check_tuning([_grid_run(str(two), "base", tune)])


# ------------------------------------------------------------------------------------------ inspect and compare


@pytest.fixture(scope="module")
def zeroshot_run(tmp_path_factory: pytest.TempPathFactory, baseline_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("zeroshot")
    return Path(lathadapter.fit(baseline_cache, "zeroshot", 2, 1, out=out, device="cpu")["run_dir"])


def test_inspect_shows_at_most_half_the_classes_as_worst_and_best(zeroshot_run: Path, baseline_cache: Path) -> None:
    """8 classes: the 4 worst and the 4 best (at most half each, at most `SHOWN` = 5)."""
    result = CliRunner().invoke(app, ["inspect", str(zeroshot_run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with CacheReader(baseline_cache) as reader:
        half = len(reader.info().class_names) // 2
    for side in ("worst", "best"):
        line = next(x for x in result.output.splitlines() if x.startswith(f"  {side}: "))
        assert len(re.findall(r"\(\d+/\d+\)", line)) == min(5, half)


def test_inspect_says_when_the_loaded_model_does_not_score_as_recorded(zeroshot_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / zeroshot_run.name
    shutil.copytree(zeroshot_run, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    recorded = metrics["accuracy"]["all"] + 1.0
    (folder / "metrics.json").write_text(json.dumps({**metrics, "accuracy": {**metrics["accuracy"], "all": recorded}}))
    result = CliRunner().invoke(app, ["inspect", str(folder), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("all: "))
    assert (f"(metrics.json records {recorded:.2f}%: the loaded model does not score as the run did)" in line
            and "as metrics.json" not in line)


def test_compare_takes_a_plot_name_whose_png_suffix_is_upper_case(tmp_path: Path) -> None:
    """The plot's format is its suffix's, in any case (matplotlib reads `.PNG` as PNG): only other suffixes are
    refused."""
    from lathadapter.adapter.options import OptionError
    from lathadapter.experiments.comparison import compare_two_configurations

    def refusal(name: str) -> str:
        try:
            compare_two_configurations([tmp_path / "nowhere"], None, None, None, tmp_path / name, print, print)
        except (OptionError, ValueError, OSError) as error:
            return str(error)
        return ""

    assert "expected a .png file name" in refusal("diff.jpg")
    assert "expected a .png file name" not in refusal("diff.PNG")


def test_a_ray_build_task_gets_its_dataset_and_checkpoint_paths_absolute(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray task runs in its node's folder: `split:`/`folder:` datasets and a `--pretrained` checkpoint file are made
    absolute against the command's folder; a model name and a pretrained tag stay as given."""
    from lathadapter.experiments.builds import for_workers

    monkeypatch.chdir(tmp_path)
    Path("ckpt.pt").touch()
    for kind in ("split:", "folder:"):
        dataset, options = for_workers(f"{kind}data/x", {"model": "ViT-B-16", "pretrained": "ckpt.pt"})
        assert dataset == f"{kind}{tmp_path / 'data' / 'x'}"
        assert options == {"model": "ViT-B-16", "pretrained": str(tmp_path / "ckpt.pt")}
    assert for_workers("dtd", {"pretrained": "openai"}) == ("dtd", {"pretrained": "openai"})
    assert for_workers("dtd", {"out": "caches/dtd.h5"}) == ("dtd", {"out": str(tmp_path / "caches" / "dtd.h5")})


# ------------------------------------------------------------------------------------------ a resumed build


def test_a_resumed_build_batches_its_rows_in_the_blocks_of_an_uninterrupted_one() -> None:
    """Rows left after an interruption are batched by their fixed block `row // batch_size`, not by their position
    among the rows left: rows 5, 6 | 9 | 12 of blocks of 4 are three batches, as the uninterrupted build made them."""
    from lathadapter.cache.build import _blocks

    assert _blocks(np.array([5, 6, 9, 12]), 4) == [[0, 1], [2], [3]]


def test_a_resumed_build_reads_again_its_rows_not_encoded_and_its_skipped_images(tmp_path: Path) -> None:
    """An interrupted build's file of the same fingerprint: rows not yet encoded and the rows of images `--skip-bad`
    left out (tried again) are left to read, by index into the split lists; the others are done."""
    import h5py

    from lathadapter.cache.build import SPLITS, _left_to_encode
    from lathadapter.cache.store import SCHEMA_VERSION

    fields = {"dataset": "hand"}
    encoded = {"train": [True, False, True, True], "val": [True, True], "test": [False, True, True]}
    temporary = tmp_path / "left.tmp"
    with h5py.File(temporary, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["fingerprint_json"] = json.dumps(fields)
        for split in SPLITS:
            f[f"splits/{split}/encoded"] = np.array(encoded[split])
            f[f"splits/{split}/paths"] = np.array([f"{split}/{i}.png" for i in range(len(encoded[split]))],
                                                  dtype=h5py.string_dtype())
        f["skipped"] = np.array(["train/3.png", "test/1.png"], dtype=h5py.string_dtype())
    indices = {"train": [10, 11, 12, 13], "val": [20, 21], "test": [30, 31, 32]}
    assert _left_to_encode(temporary, fields, indices) == {"train": [11, 13], "val": [], "test": [30, 31]}


def test_a_build_is_refused_only_when_what_it_still_allocates_exceeds_the_free_space(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The room a build needs: its datasets' bytes and `SPACE_MARGIN`, less what its file already holds (a resumed
    build's encoded rows are allocated). Exactly that much free passes; a byte less is refused."""
    import h5py

    from lathadapter.cache import build

    temporary = tmp_path / "c.tmp"
    with h5py.File(temporary, "w") as f:
        f["written"] = np.ones((512, 1024), dtype=np.float32)  # 2 MiB allocated and written
        f.create_dataset("empty", shape=(256, 1024), dtype=np.float16)  # 0.5 MiB, not yet allocated
    datasets = 512 * 1024 * 4 + 256 * 1024 * 2
    needed = datasets + build.SPACE_MARGIN - temporary.stat().st_size
    assert temporary.stat().st_size > 2 * 2**20 and needed < datasets + build.SPACE_MARGIN
    for free, refused in ((needed, False), (needed - 1, True)):
        monkeypatch.setattr(build.shutil, "disk_usage", lambda _, free=free: SimpleNamespace(free=free))
        with h5py.File(temporary, "r") as f:
            if refused:
                with pytest.raises(build.BuildError, match="not enough free space"):
                    build._check_room(f, temporary, tmp_path / "c.h5")
            else:
                build._check_room(f, temporary, tmp_path / "c.h5")


def test_tuning_on_the_whole_val_split_needs_no_few_shot_val_images(tmp_path: Path) -> None:
    """`--tune-set split` scores on the whole val split: subsets without val images are then no reason to refuse."""
    from lathadapter.experiments.data import check_tuning

    path = _tiny_cache(tmp_path / "c.h5", [0, 1], {(2, 1): ([0, 1], [])}, val="all")
    with CacheReader(path) as reader:
        assert reader.info().val_split and len(reader.subset_rows(2, 1)[1]) == 0
    check_tuning([_grid_run(str(path), "all", SimpleNamespace(tune_set="split", score="val"))])
    with pytest.raises(CacheError, match="holds no few-shot val images for shots=2 seed=1"):
        check_tuning([_grid_run(str(path), "all", SimpleNamespace(tune_set="subset", score="val"))])


def test_compare_prints_the_five_classes_that_differ_most_largest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs: each side's classes by the size of their difference, largest first, at most five. Hand-built: class
    i of 7 has 10 images, A right on all, B on 6 − i of them (A − B = 40 + 10 i points: c6 first)."""
    import torch

    from lathadapter.experiments import compare
    from lathadapter.experiments.comparison import compare_two_runs

    names = [f"c{i}" for i in range(7)]
    labels = torch.arange(7).repeat_interleave(10)
    right_b = torch.tensor([j < 6 - i for i in range(7) for j in range(10)])
    monkeypatch.setattr(compare, "load_pair", lambda *_: (None, None))
    monkeypatch.setattr(compare, "run_label", lambda *_: "run")
    monkeypatch.setattr(compare, "compare_runs", lambda *_: {
        "all": compare.compare(torch.ones(70, dtype=torch.bool), right_b, labels, names)})
    lines = []
    compare_two_runs(Path("a"), Path("b"), None, None, None, lines.append, lines.append)
    better = next(x for x in lines if x.startswith("  A better: "))
    assert re.findall(r"(c\d) ", better) == ["c6", "c5", "c4", "c3", "c2"]
    assert "  B better: no class" in lines


def test_an_image_s_view_seed_is_the_documented_hash_of_seed_and_path() -> None:
    """docs/data.md: the first 8 bytes of the SHA-256 of `SEED:PATH`, little-endian, less the top bit. Fixed so a
    cache resumed or extended by a later version draws the same views as the build that began it."""
    import hashlib

    from lathadapter.cache.encode import view_seed

    for seed, path in ((0, "train/a.png"), (7, "n01440764/x.JPEG")):
        digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
        assert view_seed(seed, path) == sum(byte << (8 * i) for i, byte in enumerate(digest[:8])) % 2**63
