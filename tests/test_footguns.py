"""Options that used to do nothing, or the wrong thing, without a word (exit 0): each is now refused in one line, or
done with a one-line warning saying what is used instead."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments import machine

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("foot") / "c.h5", num_classes=4, dim=8, shots=(1, 2),
                                 seeds=(1,))


def grid(cache: Path, out: Path, *extra: str):
    return runner.invoke(app, ["grid", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--seeds", "1",
                               "--device", "cpu", "--out", str(out), *extra])


def refused(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in last, (fragment, last)


@pytest.mark.parametrize(("extra", "code", "fragments"), [
    (["--seeds", "1,1"], 2, ["--seeds '1,1'", "1 is given twice"]),
    (["--shots", "1,,2"], 2, ["--shots '1,,2'", "empty item"]),
    (["--set", "alpha=0.1", "--set", "alpha=0.2"], 2, ["alpha is given twice", "--set alpha=V1,V2"]),
    (["--address", "127.0.0.1:6379"], 2, ["--address 127.0.0.1:6379: only for --backend ray"]),
    (["--chunk-size", "3"], 2, ["--chunk-size 3: only for --backend ray"]),
])
def test_grid_refuses_options_that_would_be_ignored_or_repeated(cache: Path, tmp_path: Path, extra: list[str],
                                                                 code: int, fragments: list[str]) -> None:
    result = runner.invoke(app, ["grid", "--cache", str(cache), "--method", "tip-adapter", "--device", "cpu",
                                 "--out", str(tmp_path / "g"), *(["--shots", "1"] if "--shots" not in extra else []),
                                 *(["--seeds", "1"] if "--seeds" not in extra else []), *extra])
    refused(result, code, *fragments)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--method", "zeroshot,zeroshot"], ["--method 'zeroshot,zeroshot': zeroshot is given twice"]),
    (["--method", ""], ["--method '': give one or more values, e.g. zeroshot,lathadapter"]),
    (["--method", "zeroshot,,tip-adapter"], ["--method 'zeroshot,,tip-adapter': an empty item"]),
    (["--classes", "all,all"], ["--classes 'all,all': all is given twice"]),
    (["--set", "alpha=0.1,0.1"], ["--set alpha=0.1,0.1: 0.1 is given twice; give each value once"]),
    (["--tune", "alpha=0.1,0.1"], ["--tune alpha=0.1,0.1: 0.1 is given twice"]),
    (["--tune", "alpha=0.1"], ["--tune alpha: one value (0.1) leaves nothing to choose; tune two or more "
                               "(alpha=V1,V2), or fix it as an option (--set alpha=0.1"]),
    (["--set", "tip-adapter.alpha=0.1,,0.2"], ["--set tip-adapter.alpha=0.1,,0.2: an empty item"]),
    (["--tune", "alpha=0.1,"], ["--tune alpha=0.1,: an empty item; give comma-separated values, e.g. alpha=V1,V2"]),
    (["--tune", "alpha=0.1,1e-1"], ["--tune alpha of tip-adapter: the values alpha=0.1 and alpha=1e-1 are the same "
                                    "candidate"]),
    (["--set", "tip-adapter.alpha=0.1,0.10"], ["the grid holds one run twice (tip-adapter, 1-shot seed 1",
                                                "two values mean the same"]),
    (["--cache", "CACHE"], ["the grid holds one run twice (tip-adapter, 1-shot seed 1"]),
    (["--method", "zeroshot", "--tune", "lr=0.001,0.01"], ["--tune lr: zeroshot has no options (training-free"]),
    (["--tune-preset", "bogus"], ["--tune-preset bogus: unknown preset; valid: lr, none"]),
    (["--set", "tip-adapter.alpha=0.5,-1"], ["--set tip-adapter.alpha: option alpha=-1.0 of tip-adapter is not valid"]),
    (["--gpus-per-chunk", "0.5"], ["--gpus-per-chunk 0.5: only for --backend ray"]),
    (["--backend", "ray", "--gpus-per-chunk", "2"], ["--gpus-per-chunk 2.0: must be in (0, 1]"]),
])
def test_grid_refuses_empty_and_repeated_axes_before_anything_is_written(cache: Path, tmp_path: Path, extra: list[str],
                                                                         fragments: list[str]) -> None:
    """Audit findings 2, 7, 9 and 15: no traceback, no value given twice counted as work left to another process, no
    empty `valid:`, no Ray option ignored without a word."""
    extra = [str(cache) if arg == "CACHE" else arg for arg in extra]
    method = [] if "--method" in extra else ["--method", "tip-adapter"]  # an option is given once
    result = runner.invoke(app, ["grid", "--cache", str(cache), *method, "--shots", "1", "--seeds", "1", "--device",
                                 "cpu", "--out", str(tmp_path / "g"), *extra])
    refused(result, 2, *fragments)
    assert "valid: \n" not in result.output and not (tmp_path / "g").exists()


@pytest.mark.parametrize(("method", "fragment"), [("", "--method '': give one or more values"),
                                                  ("zeroshot,zeroshot", "zeroshot is given twice")])
def test_protocol_refuses_an_empty_or_repeated_method(cache: Path, tmp_path: Path, method: str, fragment: str) -> None:
    result = runner.invoke(app, ["protocol", "few-shot", "--cache", str(cache), "--method", method, "--shots", "1",
                                 "--seeds", "1", "--device", "cpu", "--out", str(tmp_path / "p")])
    refused(result, 2, fragment)
    assert not (tmp_path / "p").exists()


def test_counts_and_labels_say_one_run_and_one_worker(cache: Path, tmp_path: Path) -> None:
    from lathadapter.experiments.local import WorkerProcesses

    result = grid(cache, tmp_path / "g", "--tune-preset", "none")  # `none` as in demo: no preset
    assert result.exit_code == 0, result.output
    assert "grid: 1 run (1 done now, 0 already done) in " in result.output
    assert "grid: 1 runs" not in result.output and "(1 run," not in result.output
    result = runner.invoke(app, ["protocol", "few-shot", "--cache", str(cache), "--method", "zeroshot", "--shots", "1",
                                 "--seeds", "1", "--device", "cpu", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]  # as grid's: the runs, then the wall-clock time and the table
    assert re.fullmatch(rf"few-shot: 1 run \(1 done now, 0 already done\) in \d+\.\d s → {re.escape(str(tmp_path))}"
                        r"/p/results\.csv", last), last
    backend = WorkerProcesses(4)
    backend.chunks = lambda job: [["one chunk"]]
    assert backend.label(None) == "grid (1 worker)"
    backend.chunks = lambda job: [["a"], ["b"]]
    assert backend.label(None) == "grid (2 workers)"


def test_protocol_refuses_targets_where_none_are_scored(cache: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["protocol", "few-shot", "--cache", str(cache), "--target", str(cache), "--method",
                                 "zeroshot", "--shots", "1", "--seeds", "1", "--device", "cpu", "--out",
                                 str(tmp_path / "p")])
    refused(result, 2, f"--target {cache}: few-shot", "cross-dataset and domain")


def test_list_refuses_an_argument_it_does_not_take() -> None:
    refused(runner.invoke(app, ["list", "methods", "x"]), 2, "only `list options` takes a method")


def test_too_many_threads_are_clamped_with_a_warning(cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "available_cpus", lambda: 2)
    assert machine.use_threads(1) == 1
    with pytest.warns(UserWarning, match="--threads 1000: this process may use 2 CPUs; using 2"):
        assert machine.use_threads(1000) == 2


def test_too_many_workers_are_clamped_with_a_warning(cache: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "available_cpus", lambda: 1)  # one CPU: one worker, which is this process
    result = grid(cache, tmp_path / "g", "--workers", "8")
    assert result.exit_code == 0, result.output
    assert "warning: --workers 8: this process may use 1 CPUs; starting 1 workers" in result.output
    assert "grid (8 workers)" not in result.output


def test_threads_with_workers_are_reported_unused(cache: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lathadapter.experiments import launch

    monkeypatch.setattr(machine, "available_cpus", lambda: 4)
    monkeypatch.setattr(launch, "launch", lambda *a, **k: (_ for _ in ()).throw(ValueError("stop")))
    result = grid(cache, tmp_path / "g", "--workers", "2", "--threads", "2")
    assert "warning: --threads 2 is not used with --workers 2" in result.output


def test_grid_takes_select(cache: Path, tmp_path: Path) -> None:
    result = grid(cache, tmp_path / "g", "--select", "last,val")
    assert result.exit_code == 0, result.output
    with (tmp_path / "g" / "results.csv").open() as f:
        assert sorted(row["select"] for row in csv.DictReader(f)) == ["last", "val"]


def test_a_build_with_more_shots_than_images_says_so(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    """Each class of the test dataset has 20 train images: a 50-shot subset holds 20 a class (CoOp's sampler)."""
    result = runner.invoke(app, ["cache", "build", "--dataset", f"split:{coop_dataset.split_file}", "--model",
                                 str(tiny_clip.config), "--pretrained", str(tiny_clip.checkpoint), "--shots", "2,50",
                                 "--seeds", "1", "--views", "1", "--workers", "0", "--device", "cpu", "--no-progress",
                                 "--out", str(tmp_path / "c.h5")])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning: --shots")]
    assert len(warned) == 1 and "--shots 50: 8 of 8 classes have fewer than 50 train images" in warned[0]
    assert "has 20" in warned[0]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--method", "nope"], "--method nope: unknown method; valid: zeroshot"),
    (["--tune-preset", "bogus"], "--tune-preset bogus: unknown preset; valid: lr, none"),
    (["--shots", "0"], "--shots 0: shots per class must be at least 1"),
    (["--method", "zeroshot,zeroshot"], "--method 'zeroshot,zeroshot': zeroshot is given twice"),
])
def test_demo_checks_its_options_before_building_anything(tmp_path: Path, args: list[str], fragment: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from lathadapter.demo import pipeline

    monkeypatch.setattr(pipeline, "build_demo_cache", lambda *a, **k: pytest.fail("built before checking"))
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", *args])
    refused(result, 2, fragment)
    assert "0,16" not in result.output and not (tmp_path / "demo").exists()


def test_list_options_has_a_header_and_says_recipe_and_none() -> None:
    lines = runner.invoke(app, ["list", "options", "clip-adapter"]).output.splitlines()
    assert lines[0].split() == ["option", "type", "default", "valid", "values", "meaning"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["lr"][2] == "recipe" and rows["epochs"][2] == "recipe"  # set by the training recipe, not None
    assert "None" not in "\n".join(lines)
    zeroshot = runner.invoke(app, ["list", "options", "zeroshot"])
    assert zeroshot.exit_code == 0 and "zeroshot has no options" in zeroshot.output


def test_an_option_given_to_a_method_without_options_says_it_has_none(cache: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--set",
                                 "epochs=1", "--device", "cpu", "--out", str(tmp_path / "r")])
    refused(result, 2, "unknown option(s) epochs for method 'zeroshot'", "zeroshot has no options")
    assert "valid options: " not in result.output


def test_demo_does_not_advise_a_force_it_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lathadapter.cache.build import BuildError
    from lathadapter.demo import pipeline

    def differs(data_dir: Path, out: Path, **kwargs) -> None:
        raise BuildError(f"{out} is a cache built differently (differs in: views); pass --force to overwrite it, or "
                         "choose another --out")

    monkeypatch.setattr(pipeline, "build_demo_cache", differs)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--views", "3"])
    refused(result, 1, "built differently (differs in: views)", "give it another --out, or delete")
    assert "--force" not in result.output


def test_a_report_names_recipe_defaults_instead_of_an_empty_value(cache: Path, tmp_path: Path) -> None:
    """Two clip-adapter configurations, lr 0.01 and the recipe's: the label of the second is not `lr=`."""
    out = tmp_path / "g"
    for extra in ([], ["--set", "lr=0.01"]):
        result = runner.invoke(app, ["grid", "--cache", str(cache), "--method", "clip-adapter", "--shots", "1",
                                     "--seeds", "1", "--device", "cpu", "--out", str(out), "--set", "epochs=1",
                                     *extra])
        assert result.exit_code == 0, result.output
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert "clip-adapter lr=recipe" in report.output and "clip-adapter lr=0.01" in report.output
    assert "lr= " not in report.output and "lr=|" not in report.output
    # the ablation table of lr names the recipe's value too, never a blank cell
    tables = sorted((out / "report").glob("*ablation*lr*.csv"))
    assert tables, sorted(p.name for p in (out / "report").iterdir())
    first_column = [line.split(",")[0] for line in tables[0].read_text().splitlines()[1:]]
    assert sorted(first_column) == ["0.01", "recipe"], (tables[0], first_column)


def test_plots_keep_the_legend_off_the_data_and_the_disk_names_its_run(tmp_path: Path) -> None:
    """Legends lie outside the axes (`plots.outside_legend`, which every plot uses); the Poincaré disk's title
    names the run it draws and each class star's number sits at its own offset, so coinciding stars stay readable."""
    import matplotlib.pyplot as plt
    import torch

    from lathadapter.experiments import plots

    captured = {}
    saved = plots._save
    plots._save = lambda fig, path: captured.setdefault(path.name, fig) and path
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "config.json").write_text('{"key": "abc123", "cache": "/x/pets.h5", "classes": "all", "shots": 4, '
                                         '"seed": 2}')
        same = torch.tensor([0.3, 0.1, 0.0])
        torch.save({"curvature": 1.0, "class_names": ["a", "b"], "categories": torch.stack([same, same]),
                    "attributes": torch.tensor([[0.5, 0.0, 0.1], [0.0, 0.5, 0.2]]),
                    "images": torch.tensor([[0.8, 0.1, 0.0], [0.7, 0.3, 0.1]]), "image_labels": torch.tensor([0, 1]),
                    "strongest_attribute": torch.tensor([0, 1])}, run / "points.pt")
        plots.plot_poincare_disk(run, tmp_path)
        fig = captured["poincare_disk.png"]
        ax = fig.axes[0]
        assert "pets.h5, all classes, 4 shots, seed 2, run abc123" in ax.get_title()
        offsets = [a.xyann for a in ax.texts if a.get_text() in ("1", "2")]
        assert len(offsets) == 2 and offsets[0] != offsets[1]
        fig.canvas.draw()
        legend = ax.get_legend().get_window_extent()
        assert legend.x0 >= ax.get_window_extent().x1  # right of the disk, covering nothing
        plt.close(fig)
    finally:
        plots._save = saved
