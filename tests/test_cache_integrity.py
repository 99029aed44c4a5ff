"""What a cache's readers may trust: images skipped by `--skip-bad` are gone from every subset and split, damaged
files are refused with a message instead of NaNs or tracebacks, and one builder at a time writes an output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_cache_build import _dassl, _small_dataset  # written once for both files
from typer.testing import CliRunner

import lathadapter.cache.build as build_module
from lathadapter.cache.build import BuildError, build
from lathadapter.cache.inspection import verify
from lathadapter.cache.store import CacheError, CacheReader
from lathadapter.cache.subset import export_subset
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app

runner = CliRunner()
SHOTS, SEED = 2, 1


def _options(tiny_clip, **overrides: object) -> dict[str, object]:
    options: dict[str, object] = dict(model=str(tiny_clip.config), pretrained=str(tiny_clip.checkpoint),
                                      shots=(SHOTS,), seeds=(SEED,), views=2, batch_size=8, workers=0, device="cpu",
                                      progress=False, log=lambda message: None)
    options.update(overrides)
    return options


def _break(folder: Path, paths: list[str]) -> dict[str, bytes]:
    """Make images unreadable; returns their bytes, to mend them later."""
    kept = {path: (folder / path).read_bytes() for path in paths}
    for path in paths:
        (folder / path).write_bytes(b"\x89PNG truncated")
    return kept


# --skip-bad: a skipped image leaves whatever subset drew it, and val and test


def test_skipped_images_leave_every_subset_and_split(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    split_file = _small_dataset(coop_dataset, tmp_path / "small")
    split = json.loads(split_file.read_text())
    train, val = _dassl(split, SHOTS, SEED)
    bad = [train[0][0], val[1][0], split["test"][2][0]]  # one drawn train image of class 0, one val, one test image
    _break(tmp_path / "small", bad)
    out = tmp_path / "small.h5"
    result = build(None, f"split:{split_file}", out, skip_bad=True, **_options(tiny_clip))
    assert result.stats.skipped == 3
    assert verify(out) == []

    exported = export_subset(out, SHOTS, SEED)
    assert exported["train"] == [item for item in train if item[0] not in bad]
    assert exported["val"] == [item for item in val if item[0] not in bad]
    test = [item for item in split["test"] if item[0] not in bad]
    with CacheReader(out) as reader:
        assert sorted(reader.info().skipped) == sorted(bad)
        data = reader.load(SHOTS, SEED)
        target = reader.load_test()
    assert data.train_labels.tolist() == [label for _, label, _ in exported["train"]]
    assert data.train_labels.tolist().count(train[0][1]) == SHOTS - 1, "that class keeps its other shot"
    assert sorted(data.val_labels.tolist()) == sorted(label for _, label, _ in exported["val"])
    assert data.test_labels.tolist() == target.test_labels.tolist() == [label for _, label, _ in test]
    for features in (data.train_features, data.train_augmented, data.val_features, data.test_features,
                     target.test_features):
        assert bool((features.norm(dim=-1) > 0.99).all()), "no zero feature of a skipped image is loaded"


def test_a_build_that_loses_a_split_fails_with_a_message(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    split_file = _small_dataset(coop_dataset, tmp_path / "small")
    tests = [path for path, _, _ in json.loads(split_file.read_text())["test"]]
    _break(tmp_path / "small", tests)
    out = tmp_path / "small.h5"
    args = ["cache", "build", "--dataset", f"split:{split_file}", "--model", str(tiny_clip.config), "--pretrained",
            str(tiny_clip.checkpoint), "--shots", str(SHOTS), "--seeds", str(SEED), "--views", "2", "--workers", "0",
            "--device", "cpu", "--no-progress", "--skip-bad", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    assert f"{len(tests)} unreadable images were skipped" in result.output
    assert f"the test split has no image left (all {len(tests)} were skipped)" in result.output
    assert not out.exists()


def test_a_build_that_loses_a_class_fails_and_resumes_once_the_images_are_mended(coop_dataset, tiny_clip,
                                                                                  tmp_path: Path) -> None:
    split_file = _small_dataset(coop_dataset, tmp_path / "small")
    split = json.loads(split_file.read_text())
    train, val = _dassl(split, SHOTS, SEED)
    lost = [item for item in train if item[1] == 1]
    assert len(lost) == SHOTS
    mend = _break(tmp_path / "small", [path for path, _, _ in lost])
    out = tmp_path / "small.h5"
    with pytest.raises(BuildError, match=rf"{SHOTS} unreadable images were skipped.*the few-shot subset "
                                         rf"shots={SHOTS} seed={SEED} \(train\) has no image left of class "
                                         rf"'{lost[0][2]}' \(label 1; all {SHOTS} skipped\)"):
        build(None, f"split:{split_file}", out, skip_bad=True, **_options(tiny_clip))
    assert not out.exists()
    for path, data in mend.items():
        (tmp_path / "small" / path).write_bytes(data)
    result = build(None, f"split:{split_file}", out, skip_bad=True, **_options(tiny_clip))
    assert (result.status, result.stats.images, result.stats.skipped) == ("resumed", SHOTS, 0)
    assert verify(out) == []
    exported = export_subset(out, SHOTS, SEED)
    assert (exported["train"], exported["val"]) == (train, val)


# cache verify: zero and non-finite rows, indices out of range, missing datasets


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("synthetic") / "s.h5", num_classes=4, dim=8,
                                 train_per_class=5, val_per_class=3, test_per_class=3, views=2, shots=(2,),
                                 seeds=(1,), num_attributes=4)


def _damaged(source: Path, folder: Path, damage) -> Path:
    broken = folder / f"broken-{len(list(folder.iterdir()))}.h5"
    shutil.copy(source, broken)
    with h5py.File(broken, "r+") as f:
        damage(f)
    return broken


def _set(name: str, index: object, value: float):
    def damage(f: h5py.File) -> None:
        data = f[name][()]
        data[index] = value
        f[name][...] = data
    return damage


def test_verify_names_zero_and_non_finite_rows(synthetic: Path, tmp_path: Path) -> None:
    cases = [
        (_set("splits/test/features", 5, 0.0), "splits/test/features: row 5 is all zero"),
        (_set("splits/train/features", (3, 0), np.inf), "splits/train/features: row 3 holds non-finite values"),
        (_set("splits/train/augmented", (2, 1), 0.0), "splits/train/augmented: row 2 is all zero"),
        (_set("splits/val/features", 4, np.nan), "splits/val/features: row 4 holds non-finite values"),
        (_set("text/features", (1, 2), 0.0), "text/features: row 1 is all zero"),
        (_set("attributes/features", 3, np.nan), "attributes/features: row 3 holds non-finite values"),
    ]
    for damage, message in cases:
        problems = verify(_damaged(synthetic, tmp_path, damage))
        assert any(problem.startswith(message) for problem in problems), (message, problems)


def test_verify_names_subset_rows_out_of_range_and_missing_datasets(synthetic: Path, tmp_path: Path) -> None:
    with h5py.File(synthetic, "r") as f:
        rows = f["splits/val/labels"].shape[0]
    cases = [
        (_set("subsets/shots_2_seed_1/val", 1, rows + 3),
         f"subsets/shots_2_seed_1/val: row indices outside 0..{rows - 1} (row {rows + 3})"),
        (lambda f: f.__delitem__("splits/test/features"), "missing dataset splits/test/features"),
        (lambda f: f.__delitem__("splits/train/labels"), "missing dataset splits/train/labels"),
        (lambda f: f.__delitem__("skipped"), "missing dataset skipped"),
        (lambda f: f.__delitem__("subsets/shots_2_seed_1/train"), "missing dataset subsets/shots_2_seed_1/train"),
    ]
    for damage, message in cases:
        problems = verify(_damaged(synthetic, tmp_path, damage))
        assert message in problems, (message, problems)


def _skip(f: h5py.File, split: str, rows: list[int]) -> None:
    """Mark `rows` of `split` as `--skip-bad` does: zero features and raw norms, paths listed in `skipped`."""
    paths = f[f"splits/{split}/paths"].asstr()[()]
    for name in ("features", "augmented", "norms", "augmented_norms"):
        if name in f[f"splits/{split}"]:
            data = f[f"splits/{split}/{name}"][()]
            data[rows] = 0
            f[f"splits/{split}/{name}"][...] = data
    f["skipped"].resize((len(rows),))
    f["skipped"][...] = np.array([paths[row] for row in rows], dtype=object)


def test_verify_flags_a_cache_whose_skipped_images_took_a_split_or_a_class(synthetic: Path, tmp_path: Path) -> None:
    with h5py.File(synthetic, "r") as f:
        test_labels = f["splits/test/labels"][()]
        names = f["classes/names"].asstr()[()]
    every_test = _damaged(synthetic, tmp_path, lambda f: _skip(f, "test", list(range(len(test_labels)))))
    assert verify(every_test) == [f"the test split has no image left (all {len(test_labels)} were skipped)"]
    rows = np.flatnonzero(test_labels == 2).tolist()
    one_class = _damaged(synthetic, tmp_path, lambda f: _skip(f, "test", rows))
    assert verify(one_class) == [f"the test split has no image left of class {names[2]!r} (label 2; "
                                 f"all {len(rows)} skipped)"]
    with CacheReader(one_class) as reader:
        assert sorted(set(reader.load_test().test_labels.tolist())) == [0, 1, 3]


# loading refuses what would silently spoil a fit


@pytest.mark.parametrize(("name", "index", "row"), [
    ("splits/train/features", None, None),
    ("splits/train/augmented", None, None),
    ("splits/val/features", None, None),
    ("splits/test/features", (7, 2), 7),
    ("text/features", (1, 3, 0), 1),
    ("attributes/features", (2, 5), 2),
])
def test_loading_refuses_non_finite_features(synthetic: Path, tmp_path: Path, name: str, index: tuple | None,
                                             row: int | None) -> None:
    if index is None:  # a row the subset holds: its second row, in the file's numbering
        with h5py.File(synthetic, "r") as f:
            row = int(f[f"subsets/shots_2_seed_1/{name.split('/')[1]}"][1])
        index = (row, 0)
    broken = _damaged(synthetic, tmp_path, _set(name, index, np.nan))
    with CacheReader(broken) as reader, pytest.raises(CacheError) as error:
        reader.load(2, 1, text="ensemble")
    assert f"{broken}: {name} row {row} holds non-finite values" in str(error.value)
    if name.startswith(("splits/test", "text", "attributes")):
        with CacheReader(broken) as reader, pytest.raises(CacheError, match=f"{name} row {row} holds non-finite"):
            reader.load_test()


def _scale(name: str, index: tuple, factor: float):
    """Multiply the vector at `index` of `name` by `factor`: finite values, off unit norm (a flipped exponent bit)."""
    def damage(f: h5py.File) -> None:
        data = f[name][()]
        data[index] = data[index] * factor
        f[name][...] = data
    return damage


@pytest.mark.parametrize(("name", "index", "row", "factor"), [
    ("splits/train/features", None, None, 3.0),
    ("splits/train/augmented", None, None, 0.5),
    ("splits/val/features", None, None, 1.05),
    ("splits/test/features", (7,), 7, 1000.0),
    ("text/features", (1, 3), 1, 0.0),
    ("attributes/features", (2,), 2, 2.0),
])
def test_loading_refuses_finite_rows_that_are_not_unit_norm(synthetic: Path, tmp_path: Path, name: str,
                                                            index: tuple | None, row: int | None,
                                                            factor: float) -> None:
    if index is None:  # a row the subset holds: its second row, in the file's numbering
        with h5py.File(synthetic, "r") as f:
            row = int(f[f"subsets/shots_2_seed_1/{name.split('/')[1]}"][1])
        index = (row, 1) if name.endswith("augmented") else (row,)
    broken = _damaged(synthetic, tmp_path, _scale(name, index, factor))
    with CacheReader(broken) as reader, pytest.raises(CacheError) as error:
        reader.load(2, 1, text="ensemble")
    message = str(error.value)
    assert message.startswith(f"{broken}: {name} row {row} is not unit norm (norm "), message
    norm = float(message.split("(norm ")[1].split(")")[0])
    assert norm == pytest.approx(factor, rel=2e-3, abs=1e-4)  # the row's norm, as float16 stores it
    assert f"lathadapter cache verify {broken}" in str(error.value) and "--force" in str(error.value)
    if name.startswith(("splits/test", "text", "attributes")):
        with CacheReader(broken) as reader, pytest.raises(CacheError, match=f"{name} row {row} is not unit norm"):
            reader.load_test()
    # from the command line: one line, exit 1 (a damaged cache is a runtime failure), no run written
    out = tmp_path / "runs"
    result = runner.invoke(app, ["fit", "--cache", str(broken), "--method", "zeroshot", "--shots", "2", "--device",
                                 "cpu", "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {broken}: {name} row {row} is not unit norm")
    assert not out.exists() or not any(out.iterdir())


def test_the_norm_check_passes_what_float16_storage_keeps_and_names_a_non_finite_row_as_such(synthetic: Path
                                                                                             ) -> None:
    """Every unit vector a build stores in float16 is within 2^-11 of norm 1 (real builds: 2e-4 at most), far inside
    `NORM_TOLERANCE`; a NaN or an infinity fails the norm check too, and is named as non-finite."""
    rng = np.random.default_rng(0)
    for dim in (4, 64, 1024):
        vectors = rng.standard_normal((2000, dim)) * rng.uniform(1e-3, 1e3, (2000, 1))
        unit = torch.from_numpy((vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16))
        assert float((torch.linalg.vector_norm(unit.float(), dim=-1) - 1).abs().max()) < 1e-3
        with CacheReader(synthetic) as reader:
            assert reader._unit("splits/test/features", unit.float()) is not None
    with CacheReader(synthetic) as reader:
        values = torch.tensor([[0.6, 0.8], [3.0, 4.0], [float("nan"), 0.0]])
        with pytest.raises(CacheError, match="splits/test/features row 2 holds non-finite values"):
            reader._unit("splits/test/features", values)
        with pytest.raises(CacheError, match=r"splits/test/features row 5 is not unit norm \(norm 5.0000\)"):
            reader._unit("splits/test/features", values[:2], np.array([4, 5]))


def test_the_finite_check_passes_finite_values_whose_sum_overflows(synthetic: Path) -> None:
    """The check sums first (a finite sum: every value finite); a sum that overflows from finite values goes on to
    the check value by value, which passes them, while an infinity hidden by its opposite is still found."""
    big = torch.tensor([[3e38, 3e38], [1.0, 2.0]])
    assert not torch.isfinite(big.sum())
    with CacheReader(synthetic) as reader:
        assert reader._finite("splits/train/features", big) is big
        opposite = torch.tensor([[1.0, 2.0], [float("inf"), float("-inf")]])
        with pytest.raises(CacheError, match="splits/train/features row 1 holds non-finite values"):
            reader._finite("splits/train/features", opposite)


def test_loading_a_damaged_file_says_what_is_missing(synthetic: Path, tmp_path: Path) -> None:
    missing = _damaged(synthetic, tmp_path, lambda f: f.__delitem__("splits/test/features"))
    for load in (lambda reader: reader.load(2, 1), lambda reader: reader.load_test()):
        with CacheReader(missing) as reader, pytest.raises(CacheError) as error:
            load(reader)
        assert f"{missing} lacks the dataset splits/test/features" in str(error.value)
        assert f"lathadapter cache verify {missing}" in str(error.value) and "rebuild" in str(error.value)
    with h5py.File(synthetic, "r") as f:
        rows = f["splits/train/labels"].shape[0]
    outside = _damaged(synthetic, tmp_path, _set("subsets/shots_2_seed_1/train", 0, rows))
    with CacheReader(outside) as reader, pytest.raises(CacheError) as error:
        reader.load(2, 1)
    assert f"subsets/shots_2_seed_1/train holds row {rows}, outside splits/train (rows 0..{rows - 1})" in str(
        error.value)


def test_a_test_only_cache_says_it_is_a_target_not_for_fit(tmp_path: Path) -> None:
    path = write_synthetic_cache(tmp_path / "target.h5", num_classes=3, dim=8, train_per_class=0, val_per_class=0,
                                 test_per_class=2, views=2, shots=(), seeds=(), num_attributes=4, name="imagenet_a")
    with CacheReader(path) as reader:
        assert reader.load_test().test_labels.tolist() == [0, 0, 1, 1, 2, 2]
        with pytest.raises(CacheError, match="holds only a test split .imagenet_a has no train split.*--target of "
                                             "the cross-dataset or domain protocols, not for fit"):
            reader.load(16, 1)
    # given as a protocol's source, it is named as such, not as a cache to rebuild with more shots
    from typer.testing import CliRunner

    from lathadapter.cli import app

    result = CliRunner().invoke(app, ["protocol", "cross-dataset", "--cache", str(path), "--target", str(path),
                                      "--method", "zeroshot", "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{path} holds only a test split (imagenet_a has no train split)" in result.output
    assert "rebuild" not in result.output and "a protocol's --cache" in result.output


# one builder per output; the output path is checked before any model is loaded


def _no_model(*args: object, **kwargs: object) -> None:
    raise AssertionError("the build loaded a model")


HOLD_LOCK = """
import sys
from pathlib import Path
from lathadapter.cache.build import build_lock
with build_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_builder_of_the_same_output_stops_at_once(coop_dataset, tiny_clip, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    split_file = _small_dataset(coop_dataset, tmp_path / "small")
    out = tmp_path / "small.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = tmp_path / "small.h5.lock"
        assert lock.read_text().strip() == str(holder.pid)
        with monkeypatch.context() as patch:
            patch.setattr(build_module, "load_model", _no_model)
            with pytest.raises(BuildError, match=f"another build \\(PID {holder.pid}\\).*lock file {lock} is held"):
                build(None, f"split:{split_file}", out, **_options(tiny_clip))
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert not lock.exists(), "the holder removes its lock file"
    lock.write_text("999999999\n")  # left by a killed builder: no process holds its lock
    assert build(None, f"split:{split_file}", out, **_options(tiny_clip)).status == "built"
    assert not lock.exists() and not out.with_name("small.h5.tmp").exists()


def test_an_unusable_out_fails_before_loading_a_model(coop_dataset, tiny_clip, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_module, "load_model", _no_model)
    folder = tmp_path / "caches"
    folder.mkdir()
    (tmp_path / "notes.txt").write_text("notes")
    base = ["cache", "build", "--dataset", f"split:{coop_dataset.split_file}", "--model", str(tiny_clip.config),
            "--pretrained", str(tiny_clip.checkpoint), "--device", "cpu", "--no-progress"]
    for out, message in ((folder, f"--out {folder} is a folder"),
                         (tmp_path / "notes.txt" / "x.h5", f"{tmp_path / 'notes.txt'} is a file, not a folder")):
        result = runner.invoke(app, [*base, "--out", str(out)])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caches", "notes.txt"]
    assert list(folder.iterdir()) == []


def test_workers_are_capped_at_the_available_cpus(coop_dataset, tiny_clip, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    split_file = _small_dataset(coop_dataset, tmp_path / "small")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build(None, f"split:{split_file}", tmp_path / "small.h5", **_options(tiny_clip, workers=3))
    assert result.status == "built"
    assert [str(w.message) for w in caught if "worker" in str(w.message)] == []


def test_a_cache_another_process_holds_for_writing_is_not_called_corrupt(tmp_path: Path) -> None:
    """HDF5 locks a file it opens; a cache another process has open for writing (or one on a file system without
    locks) fails to open with 'unable to lock file'. That was called corrupt, with a rebuild (hours for ImageNet) as
    the fix; the message names the lock and what to do instead."""
    import fcntl

    path = write_synthetic_cache(tmp_path / "s.h5", num_classes=3, dim=8, train_per_class=2, val_per_class=1,
                                 test_per_class=2, views=1, shots=(1,), seeds=(1,))
    holder = os.open(path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as HDF5 in a process writing the file holds it
    try:
        with pytest.raises(CacheError) as raised:
            CacheReader(path)
        problems = verify(path)
        result = runner.invoke(app, ["cache", "info", str(path)])
    finally:
        os.close(holder)
    for message in (str(raised.value), *problems, result.output):
        assert "HDF5 cannot lock it to open it" in message and "HDF5_USE_FILE_LOCKING=FALSE" in message, message
        assert "corrupt" not in message and "--force" not in message, message
    assert len(problems) == 1 and result.exit_code == 1
    CacheReader(path).close()  # the lock released, it reads


def test_a_cache_this_user_may_not_read_is_not_called_corrupt(tmp_path: Path) -> None:
    """A cache of another user (a shared cluster folder) that this user may not read was called corrupt, with a
    rebuild as the fix; the message says permission denied and what to do. The oracle is the OS: a plain `open` of the
    same file raises PermissionError (as root, a chmod 000 file reads, so /proc/1/mem stands in)."""
    path = write_synthetic_cache(tmp_path / "s.h5", num_classes=3, dim=8, train_per_class=2, val_per_class=1,
                                 test_per_class=2, views=1, shots=(1,), seeds=(1,))
    path.chmod(0)
    denied = path if os.geteuid() != 0 else Path("/proc/1/mem")
    try:
        open(denied, "rb").close()
    except PermissionError:
        pass
    else:
        pytest.skip(f"{denied} is readable by this user: no unreadable file to try")
    with pytest.raises(CacheError) as raised:
        CacheReader(denied)
    problems = verify(denied)
    result = runner.invoke(app, ["cache", "info", str(denied)])
    for message in (str(raised.value), *problems, result.output):
        assert "permission denied" in message and "read access" in message, message
        assert "corrupt" not in message and "rebuild" not in message, message
    assert len(problems) == 1 and result.exit_code == 1
