"""One pair of names for the val images a search or tuning reads, `subset` (the few-shot val subset) and `split` (the
whole val split), from `cache build --val` to `--tune-set` to the stored values; the names before stop 27
(`cache build --val subsets|all`, `--tune-set fewshot`) still work, and what was stored with them keeps its keys,
group ids and fingerprints."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import read_rows
from typer.testing import CliRunner

from lathadapter.cache.build import BuildOptionError, _fingerprint, val_choice
from lathadapter.cache.inspection import summary
from lathadapter.cache.store import CacheReader, fingerprint_of
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.records import load_results, merged, records
from lathadapter.experiments.spec import GridSpec, expand, load_spec_file
from lathadapter.experiments.training import keyed_run

runner = CliRunner()
FINGERPRINT = "0123456789abcdef"
RESUMED = "2 runs (0 done now, 2 already done)"  # a grid's summary line when nothing trains again
# The oracle: run keys and group ids of the two candidates of `_grid`'s tuning group, computed once with the code of
# commit 13a1808 (before the names changed; `tune_set` was then `fewshot` or `split`) and written here as literals.
PINNED_RUNS = {"subset": (("16bda2275404", "68759c910381"), "b5fa9476c175"),
               "split": (("409a89a7995e", "e7805cc6a139"), "fcebc8e7ab82")}
# The oracle: cache fingerprints computed at commit 13a1808, by `cache.build._fingerprint` with the fields of
# `_fingerprint_of` (with `--val subsets` and `--val all`), and of `_synthetic` (val_split True and False).
PINNED_BUILD = {"subset": "d4eb1d26faf20aaf", "split": "5ba2819604f17b72"}
PINNED_SYNTHETIC = {True: "1ce71ca37056d8fa", False: "e6254f4712f885c2"}


def _grid(**tune_set: str) -> GridSpec:
    return GridSpec(["c.h5"], ["clip-adapter"], [2], [1], tune={"lr": ["0.002", "0.2"]}, **tune_set)


@pytest.mark.parametrize(("given", "pinned"), [(None, "subset"), ("subset", "subset"), ("fewshot", "subset"),
                                               ("split", "split")])
def test_run_keys_and_group_ids_are_those_of_grids_before_the_rename(given: str | None, pinned: str) -> None:
    runs = [keyed_run(run, FINGERPRINT) for run in expand(_grid(**({} if given is None else {"tune_set": given})))]
    keys, group = PINNED_RUNS[pinned]
    assert tuple(run.key for run in runs) == keys
    assert {run.group for run in runs} == {group}
    assert {run.run.tune.tune_set for run in runs} == {pinned}


def _fingerprint_of(val: str) -> str:
    splits = SimpleNamespace(name="demo", kind="split", image_dir="images", source_sha256="ab" * 32, test_only=False)
    clip = SimpleNamespace(fields={"model": "ViT-B-16", "pretrained": "openai"})
    return fingerprint_of(_fingerprint(splits, clip, ["a photo of a {}."], ["x"], 10, 0, [1, 2], [1], False,
                                       val=val_choice(val)))


@pytest.mark.parametrize(("given", "pinned"), [("subset", "subset"), ("subsets", "subset"), ("split", "split"),
                                               ("all", "split")])
def test_a_builds_fingerprint_is_that_of_caches_built_before_the_rename(given: str, pinned: str) -> None:
    assert _fingerprint_of(given) == PINNED_BUILD[pinned]


def test_an_unknown_val_names_the_new_choices() -> None:
    with pytest.raises(BuildOptionError, match=r"^--val 'whole' is not valid; choose subset \(.*\) or split \("):
        val_choice("whole")


@pytest.mark.parametrize("val_split", [True, False])
def test_a_caches_stored_val_reads_as_before_and_shows_the_new_name(tmp_path: Path, val_split: bool) -> None:
    path = write_synthetic_cache(tmp_path / "s.h5", num_classes=4, dim=8, train_per_class=4, val_per_class=2,
                                 test_per_class=2, views=1, shots=(1,), seeds=(1,), val_split=val_split)
    with CacheReader(path) as reader:
        info = reader.info()
    assert (info.fingerprint, info.val_split) == (PINNED_SYNTHETIC[val_split], val_split)
    assert info.fields["val"] == ("all" if val_split else "subsets")  # the fingerprint's spelling, kept
    assert dict(summary(path))["val"].startswith("split: " if val_split else "subset: ")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("names") / "five.h5", num_classes=5, dim=16, views=2,
                                 shots=(2,), seeds=(1,), train_per_class=4, val_per_class=4, test_per_class=4)


def _args(cache: Path, out: Path, *extra: str) -> list[str]:
    return ["grid", "--cache", str(cache), "--method", "clip-adapter", "--shots", "2", "--seeds", "1", "--set",
            "epochs=1", "--set", "min_steps=2", "--tune", "lr=0.002,0.02", "--device", "cpu", "--workers", "1",
            "--out", str(out), *extra]


def _notes(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("note:")]


def test_tune_set_fewshot_is_read_as_subset_with_one_note_and_resumes_its_runs(cache: Path, tmp_path: Path) -> None:
    old = runner.invoke(app, _args(cache, tmp_path / "g", "--tune-set", "fewshot"))
    assert old.exit_code == 0, old.output
    assert _notes(old) == ["note: --tune-set fewshot is now called subset; the old name still works"]
    rows = read_rows(tmp_path / "g")
    assert len(rows) == 2 and {r["tune.set"] for r in rows} == {"subset"}
    for spelled in (["--tune-set", "subset"], []):  # the same runs: nothing trains again, no note
        again = runner.invoke(app, _args(cache, tmp_path / "g", *spelled))
        assert again.exit_code == 0 and RESUMED in again.output and not _notes(again), again.output
    assert read_rows(tmp_path / "g") == rows


def test_a_grid_files_tune_set_fewshot_is_read_as_subset_with_one_note(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("tune_set: fewshot\n")
    said: list[str] = []
    assert load_spec_file(tmp_path / "g.yaml", said.append)["tune_set"] == "subset"
    assert said == [f"note: grid file {tmp_path / 'g.yaml'}: tune_set fewshot is now called subset; the old name "
                    "still works"]
    (tmp_path / "n.yaml").write_text("tune_set: subset\n")
    assert load_spec_file(tmp_path / "n.yaml", said.append)["tune_set"] == "subset" and len(said) == 1


def _write_as_before(folder: Path) -> None:
    """Make a grid folder's files read as stop 26 wrote them: metrics.json's `tune` says `val_set: fewshot` (no
    `set`), results.csv's `tune.set` says `fewshot`."""
    for metrics in folder.glob("runs/*/metrics.json"):
        stored = json.loads(metrics.read_text())
        assert stored["tune"].pop("set") == "subset"
        stored["tune"]["val_set"] = "fewshot"
        metrics.write_text(json.dumps(stored))
    rows = read_rows(folder)
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "tune.set": "fewshot"} for row in rows)


def test_a_grid_saved_before_the_rename_resumes_without_training_and_reads_as_subset(cache: Path,
                                                                                       tmp_path: Path) -> None:
    first = runner.invoke(app, _args(cache, tmp_path / "g"))
    assert first.exit_code == 0, first.output
    rows = read_rows(tmp_path / "g")
    _write_as_before(tmp_path / "g")
    assert {r["tune.set"] for r in load_results(tmp_path / "g").rows} == {"subset"}  # an old table, read
    again = runner.invoke(app, _args(cache, tmp_path / "g"))
    assert again.exit_code == 0 and RESUMED in again.output and not _notes(again), again.output
    assert read_rows(tmp_path / "g") == rows  # rebuilt from the old metrics.json: `subset`, no row twice


def test_old_and_new_tables_are_one_configuration(cache: Path, tmp_path: Path) -> None:
    """A report over a table written before the rename and one written since pools their kept runs: `fewshot` and
    `subset` are one `tune.set`."""
    assert runner.invoke(app, _args(cache, tmp_path / "new")).exit_code == 0
    new = read_rows(tmp_path / "new")
    with (tmp_path / "old.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(new[0]))
        writer.writeheader()
        writer.writerows({**row, "key": f"old-{row['key']}", "seed": "2", "tune.set": "fewshot"} for row in new)
    parsed = records(merged([load_results(tmp_path / "new"), load_results(tmp_path / "old.csv")]))
    assert len(parsed) == 2 and parsed[0].config == parsed[1].config
    assert dict(parsed[0].config.settings)["tune.set"] == "subset"
