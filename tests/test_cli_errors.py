"""A user's mistake on the command line ends in one `error:` line naming the option, value or file and what would
be valid, exit code 1, and no traceback; before any training. Plus the CLI's discoverability: version, lists, help."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from rich.progress import Progress
from typer.testing import CliRunner

from lathadapter.adapter.methods.base import ProtocolWarning
from lathadapter.adapter.options import OptionError, StateError
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments import machine
from lathadapter.experiments.machine import default_threads, resolve_device, use_threads
from lathadapter.experiments.run import RunConfig, fit, fit_config
from lathadapter.experiments.table import run_rows
from lathadapter.experiments.trained import read_run

QUICK = ["--set", "epochs=1", "--set", "min_steps=2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("cli") / "c.h5", num_classes=6, dim=16, shots=(1, 2),
                                 seeds=(1,))


@pytest.fixture(scope="module")
def no_val_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache without a few-shot val subset, as ImageNet's."""
    return write_synthetic_cache(tmp_path_factory.mktemp("cli") / "noval.h5", num_classes=6, dim=16, shots=(2,),
                                 seeds=(1,), val_per_class=0)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


USAGE, RUNTIME = 2, 1  # the exit codes of a usage mistake and of a runtime failure (cli.USAGE, cli.RUNTIME)


def assert_clean_error(result, *fragments: str, code: int = USAGE) -> None:
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), output
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, output)


BAD_OPTIONS = [
    ("lathadapter", "batch_size=0", ">= 1"),
    ("clip-adapter", "reduction=0", ">= 1"),
    ("clip-adapter", "reduction=17", "feature width 16"),
    ("tip-adapter", "search_alpha_steps=0", ">= 1"),
    ("lathadapter", "tau_attr=0", "> 0"),
    ("lathadapter", "scale_img=0", "> 0"),
    ("lathadapter", "tau_hyp=0", "> 0"),
    ("lathadapter", "lr=nan", "> 0"),
    ("taskres", "lr=inf", "> 0"),
    ("lathadapter", "epochs=-1", ">= 1"),
    ("lathadapter", "margin=-0.1", ">= 0"),
    ("lathadapter", "margin_radial=-1", ">= 0"),
    ("lathadapter", "hier=tree", "cone, triplet"),
    ("lathadapter", "curvature=20", "[0.1, 10.0]"),
]


@pytest.mark.parametrize(("method", "assignment", "valid"), BAD_OPTIONS, ids=[a for _, a, _ in BAD_OPTIONS])
def test_bad_option_values_are_refused_before_any_work(cache: Path, tmp_path: Path, method: str, assignment: str,
                                                        valid: str) -> None:
    result = invoke("fit", "--cache", str(cache), "--method", method, "--shots", "1", "--device", "cpu",
                    "--out", str(tmp_path), "--set", assignment)
    assert_clean_error(result, assignment.split("=")[0], valid)
    assert not any(tmp_path.iterdir())  # nothing was written


@pytest.mark.parametrize(("args", "fragment"), [
    (["--shots", "0"], "--shots 0"),
    (["--shots", "-1"], "--shots -1"),
    (["--device", "tpu"], "cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "cpu, cuda or cuda:N"),
    (["--classes", "novel"], "all, base"),
    (["--threads", "0"], "--threads 0"),
    (["--set", "lr=0.1,0.2"], "one value per option"),
    (["--set", "epochs=1", "--set", "epochs=2"], "--set epochs=2: epochs is given twice; give it once"),
    (["--set", "epochs=1", "--set", "lathadapter.epochs=2"],
     "epochs is given twice (as epochs and lathadapter.epochs)"),
    (["--set", "tip-adapter.epochs=2"], "--set tip-adapter.epochs: an option of tip-adapter, and this fit trains "
                                        "lathadapter; give --method tip-adapter"),
])
def test_bad_run_arguments_are_refused(cache: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    result = invoke("fit", "--cache", str(cache), "--out", str(tmp_path), *args)
    assert_clean_error(result, fragment)
    assert "V1,V2" not in result.output  # fit takes one value: no advice to give several
    assert not any(tmp_path.iterdir())  # nothing was written


def test_fit_takes_its_methods_scoped_option_names_as_a_grid_writes_them(cache: Path, tmp_path: Path) -> None:
    """`--set lathadapter.lambda_hier=…` (a grid's scoped name, its `opt.lathadapter.` column) sets the option
    `lambda_hier` of a LatHAdapter fit, as `--set lambda_hier=…` does: config.json records the values given."""
    result = invoke("fit", "--cache", str(cache), "--out", str(tmp_path), "--shots", "1", "--set",
                    "lathadapter.epochs=1", "--set", "lathadapter.min_steps=2", "--set", "lambda_hier=0.25")
    assert result.exit_code == 0, result.output
    (config,) = tmp_path.glob("*/config.json")
    options = json.loads(config.read_text())["options"]
    assert (options["epochs"], options["min_steps"], options["lambda_hier"]) == (1, 2, 0.25)


SEED_MISTAKES = [["fit", "--seed", "-1"], ["fit", "--seed", "4294967296"], ["grid", "--seeds", "-1,2"],
                 ["protocol", "few-shot", "--seeds", "1,4294967296"], ["demo", "--seeds", "-1"]]


@pytest.mark.parametrize("args", SEED_MISTAKES, ids=lambda args: " ".join(args))
def test_a_seed_numpy_cannot_take_is_refused_naming_its_flag(cache: Path, tmp_path: Path, args: list[str]) -> None:
    """CoOp seeds Python, NumPy and torch with a run's seed; -1 and 2**32 were accepted (NumPy refuses both), each
    trained and recorded as a run (seed -1's folder `...-seed-1-...`)."""
    import numpy as np

    for seed in (-1, 2**32):
        with pytest.raises(ValueError):
            np.random.seed(seed)
    np.random.seed(2**32 - 1)  # the range's ends, NumPy's
    np.random.seed(0)
    flag, value = args[-2], args[-1]
    bad = next(v for v in value.split(",") if not 0 <= int(v) <= 2**32 - 1)
    where = ["--cache", str(cache)] if args[0] != "demo" else []
    result = invoke(*args, *where, "--out", str(tmp_path / "out"))
    assert_clean_error(result, f"{flag} {bad}: a seed is an integer from 0 to {2**32 - 1}")
    assert not any(tmp_path.iterdir())


def test_base_to_novel_on_one_class_is_refused_before_training(tmp_path: Path) -> None:
    """One class has no novel half: fit trained and then failed in an IndexError traceback."""
    cache = write_synthetic_cache(tmp_path / "one.h5", num_classes=1, dim=8, shots=(1,), seeds=(1,))
    result = invoke("fit", "--cache", str(cache), "--method", "tip-adapter", "--shots", "1", "--classes", "base",
                    "--out", str(tmp_path / "runs"))
    assert_clean_error(result, "--classes base splits the classes into a base and a novel half and needs at least 2; "
                       "this cache has 1: use --classes all", code=RUNTIME)
    assert not (tmp_path / "runs").exists()
    done = invoke("fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--out", str(tmp_path / "r"))
    assert done.exit_code == 0 and "100.00%" in done.output, done.output  # one class: all of it


def test_seeds_zero_and_numpys_largest_train(tmp_path: Path) -> None:
    cache = write_synthetic_cache(tmp_path / "ends.h5", num_classes=3, dim=8, shots=(1,), seeds=(0, 2**32 - 1))
    for seed in (0, 2**32 - 1):
        result = invoke("fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--seed", str(seed),
                        "--out", str(tmp_path / "runs"))
        assert result.exit_code == 0 and f"seed {seed}" in result.output, result.output


@pytest.mark.parametrize("args", [
    ["fit", "--text", "foo"], ["grid", "--text", "coop,foo"], ["protocol", "few-shot", "--text", "foo"],
    ["fit", "--select", "best"], ["grid", "--select", "last,best"],
    ["grid", "--classes", "novel"], ["grid", "--train-views", "clean"], ["protocol", "few-shot", "--train-views", "x"],
    ["protocol", "few-shot", "--shots", ""], ["grid", "--shots", ""],
], ids=lambda args: " ".join(args))
def test_a_value_outside_a_flags_choices_names_the_flag(cache: Path, tmp_path: Path, args: list[str]) -> None:
    """`--text foo` was refused as `text='foo' is not valid` (the configuration's field, not the flag); an empty
    `protocol --shots` fell back to the protocol's shots instead of being refused as grid refuses it."""
    flag, value = args[-2], args[-1].split(",")[-1]
    message = {"--text": "choose one of coop, ensemble", "--select": "choose one of last, val",
               "--classes": "choose one of all, base", "--train-views": "choose one of augmented, all",
               "--shots": "expected comma-separated integers, e.g. 1,2,4,8,16"}[flag]
    shown = repr(value) if flag == "--shots" else value
    result = invoke(*args, "--method", "zeroshot", "--cache", str(cache), "--device", "cpu", "--out",
                    str(tmp_path / "out"))
    assert result.exit_code == USAGE, result.output
    assert result.output.strip() == f"error: {flag} {shown}: {message}"
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", ["fit", "grid", "protocol"])
def test_cuda_without_a_gpu_is_a_clear_error(cache: Path, tmp_path: Path, command: str) -> None:
    args = {"fit": ["fit", "--cache", str(cache)], "grid": ["grid", "--cache", str(cache), "--method", "zeroshot"],
            "protocol": ["protocol", "few-shot", "--cache", str(cache), "--method", "zeroshot"]}[command]
    assert_clean_error(invoke(*args, "--device", "cuda", "--out", str(tmp_path)), "no CUDA GPU", "--device cpu",
                       code=RUNTIME)
    with pytest.raises(OptionError, match="no CUDA GPU"):
        resolve_device("cuda:0")


def test_an_out_that_is_a_file_fails_before_training(cache: Path, tmp_path: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("mine\n")
    assert_clean_error(invoke("fit", "--cache", str(cache), "--shots", "1", "--out", str(target), *QUICK),
                       "is a file", code=RUNTIME)
    assert target.read_text() == "mine\n"


def test_a_finished_run_is_never_overwritten_without_force(cache: Path, tmp_path: Path) -> None:
    first = fit(cache, "clip-adapter", shots=1, out=tmp_path, device="cpu", epochs=1, min_steps=2)
    metrics_file = Path(first["run_dir"]) / "metrics.json"
    before = metrics_file.read_bytes()
    with pytest.raises(OptionError, match=r"finished run.*--force \(in Python: force=True\)"):  # README's cell twice
        fit(cache, "clip-adapter", shots=1, out=tmp_path, device="cpu", epochs=1, min_steps=2)
    assert metrics_file.read_bytes() == before
    assert_clean_error(invoke("fit", "--cache", str(cache), "--method", "clip-adapter", "--shots", "1", "--out",
                              str(tmp_path), "--device", "cpu", *QUICK), "--force", code=RUNTIME)
    result = invoke("fit", "--cache", str(cache), "--method", "clip-adapter", "--shots", "1", "--out", str(tmp_path),
                    "--device", "cpu", "--force", *QUICK)
    assert result.exit_code == 0, result.output
    assert json.loads(metrics_file.read_text())["train_seconds"] != json.loads(before)["train_seconds"]


def test_a_protocol_over_a_cache_without_its_shots_names_both_ways_out(cache: Path, tmp_path: Path) -> None:
    """`protocol few-shot` asks for shots 1-16 × seeds 1-3; a cache built with fewer (here shots 1,2 × seed 1) is
    refused before anything trains, naming what it lacks, what it holds and both fixes: a rebuild, or fewer shots."""
    result = invoke("protocol", "few-shot", "--cache", str(cache), "--method", "zeroshot", "--out",
                    str(tmp_path / "p"), "--device", "cpu")
    assert result.exit_code == RUNTIME and "Traceback" not in result.output, result.output
    assert f"{cache} holds no few-shot subset for shots=1 seed=2" in result.output
    assert "(it holds: shots=1 seed=1, shots=2 seed=1)" in result.output
    assert "or ask this command for --shots/--seeds it holds" in result.output
    assert not (tmp_path / "p" / "runs").exists()
    done = invoke("protocol", "few-shot", "--cache", str(cache), "--method", "zeroshot", "--shots", "1,2", "--seeds",
                  "1", "--out", str(tmp_path / "p"), "--device", "cpu")
    assert done.exit_code == 0, done.output  # the advice works


def test_several_caches_and_no_cache_option_is_one_usage_line_naming_them(cache: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`lathadapter fit --shots 4` picks the one cache under caches/; with several it asks for --cache in one line
    (it was a list over several lines, exit 1) naming each: a missing option, exit 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "caches").mkdir()
    for name in ("dtd", "oxford_pets"):
        (tmp_path / "caches" / f"{name}.h5").write_bytes(cache.read_bytes())
    assert_clean_error(invoke("fit", "--shots", "1", "--device", "cpu", *QUICK),
                       "several caches in caches/ (caches/dtd.h5, caches/oxford_pets.h5); choose one with --cache PATH",
                       code=USAGE)
    assert len(invoke("fit", "--shots", "1", "--device", "cpu", *QUICK).output.strip().splitlines()) == 1


def test_version_and_lists() -> None:
    from lathadapter.version import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"lathadapter {__version__}"
    methods = [line.split()[0] for line in invoke("list", "methods").output.splitlines()]
    assert methods == ["zeroshot", "linear-probe", "clip-adapter", "tip-adapter", "tip-adapter-f", "taskres",
                       "gda", "lp++", "clap", "ape", "ape-t", "cross-modal", "lathadapter"]
    datasets = invoke("list", "datasets").output
    assert "caltech101" in datasets and "imagenet_r" in datasets and "split:PATH" in datasets
    assert "ViT-B-16" in invoke("list", "models").output.split()
    options = {line.split()[0]: line for line in invoke("list", "options", "lathadapter").output.splitlines()}
    assert set(options) >= {"lr", "epochs", "curvature", "hier", "infer"}
    assert "0.07" in options["tau_hyp"] and "> 0" in options["tau_hyp"] and "cone, triplet" in options["hier"]
    assert_clean_error(invoke("list", "options", "maple"), "valid methods")
    assert_clean_error(invoke("list", "options"), "name a method")
    assert_clean_error(invoke("list", "everything"), "methods, datasets, models, options")


def test_help_keeps_bracketed_defaults_and_flags_take_no_value() -> None:
    text = CliRunner().invoke(app, ["cache", "build", "--help"], terminal_width=200).output
    assert "default: ViT-B-16" in text and "default: openai" in text
    assert "<bool>" not in text
    grid_help = CliRunner().invoke(app, ["grid", "--help"], terminal_width=200).output
    assert "Comma-separated methods [default: lathadapter]" in grid_help
    assert "[default: 0.25, four tasks share a GPU]" in grid_help  # --gpus-per-chunk: None until given
    demo_help = " ".join(CliRunner().invoke(app, ["demo", "--help"], terminal_width=200).output.split())
    assert "Shots of the few-shot grid; 16 is always added" in demo_help  # base-to-novel's 16 shots


def test_busy_cpus_reads_the_busy_share_of_proc_stat_and_falls_back_to_the_load_average(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # two samples of /proc/stat's first line: over the interval 300 of 400 ticks were idle (+ iowait), so a quarter
    # of the machine was busy
    samples = iter(["cpu  100 0 100 1000 0 0 0 0 0 0\n", "cpu  150 0 150 1250 50 0 0 0 0 0\n"])
    stat = tmp_path / "stat"

    def fake_times(path: Path = stat):
        stat.write_text(next(samples))
        return real_times(stat)

    real_times = machine.cpu_times
    monkeypatch.setattr(machine, "cpu_times", fake_times)
    monkeypatch.setattr(machine.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert machine.busy_cpus() == pytest.approx(0.25 * 8)
    monkeypatch.setattr(machine, "cpu_times", lambda: None)  # no /proc: the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 0.0, 0.0))
    assert machine.busy_cpus() == 3.5


def test_threads_default_follows_omp_num_threads_and_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 7))
    assert default_threads() == cpus
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(machine, "busy_cpus", lambda: cpus + 6.0)  # every CPU taken by other work
    assert default_threads() == 1
    monkeypatch.setattr(machine, "busy_cpus", lambda: 0.0)
    assert default_threads() == cpus
    before = torch.get_num_threads()
    try:
        assert use_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_skipped_searches_and_selections_warn(no_val_cache: Path, tmp_path: Path) -> None:
    with pytest.warns(ProtocolWarning, match="no few-shot val subset.*not searched"):
        fit(no_val_cache, "tip-adapter", shots=2, out=None, device="cpu")
    with pytest.warns(ProtocolWarning, match="--select val.*last epoch"):
        fit(no_val_cache, "clip-adapter", shots=2, select="val", out=None, device="cpu", epochs=1, min_steps=1)
    result = invoke("fit", "--cache", str(no_val_cache), "--method", "tip-adapter", "--shots", "2",
                    "--out", str(tmp_path), "--device", "cpu")
    assert "warning: tip-adapter: the cache has no few-shot val subset" in result.output


def test_fit_reports_its_epochs_to_a_progress_display(cache: Path) -> None:
    config = RunConfig.create("clip-adapter", 1, 1, overrides={"epochs": 3, "min_steps": 0})
    with Progress(disable=True) as progress:
        fit_config(config, cache, device="cpu", out=None, progress=progress)
        (task,) = progress.tasks
    assert task.total == 3 and task.completed == 3


DIVERGING = [("clip-adapter", ["lr=1e30"], "lr=1e+30"), ("lathadapter", ["lr=1e6", "radius=head"], "lr=1000000.0"),
             ("lathadapter", ["lr=1e6"], "lr=1000000.0")]


@pytest.mark.parametrize(("method", "assignments", "named"), DIVERGING,
                         ids=["clip-adapter", "lathadapter-head", "lathadapter-kind"])
def test_a_run_whose_training_diverges_is_an_error_naming_its_lr_never_an_accuracy(
        cache: Path, tmp_path: Path, method: str, assignments: list[str], named: str) -> None:
    """A NaN model predicts class 0 for every image (argmax of NaN): that chance-level number once landed in
    metrics.json as the run's accuracy. Now the run stops with one line naming lr, exit 2, and writes no run folder.
    (`radius=kind` at lr=1e6 drove a radius to exactly 0, where the radial distance's backward divided by zero.)"""
    sets = [part for assignment in assignments for part in ("--set", assignment)]
    result = invoke("fit", "--cache", str(cache), "--method", method, "--shots", "2", "--out", str(tmp_path),
                    "--device", "cpu", *sets, "--set", "epochs=3", "--set", "min_steps=0")
    assert_clean_error(result, f"{method} diverged", "loss was nan", named)
    assert not list(tmp_path.glob("*/metrics.json"))


@pytest.mark.parametrize("method", ["lathadapter", "tip-adapter-f"])
def test_a_diverged_run_names_the_options_it_was_given_not_the_values_its_recipe_filled(
        cache: Path, tmp_path: Path, method: str) -> None:
    """weight_decay=1e6 at the default lr blows the parameters up: the message names it (it once named lr alone), and
    none of the values the recipe filled in and the user never set (Tip-Adapter-F's search ranges, α, β, ...)."""
    result = invoke("fit", "--cache", str(cache), "--method", method, "--shots", "2", "--out", str(tmp_path),
                    "--device", "cpu", "--set", "weight_decay=1e6", "--set", "epochs=3", "--set", "min_steps=0")
    assert_clean_error(result, f"{method} diverged", "weight_decay=1000000.0")
    named = result.output.split(" diverged in training: ")[1].split("); a smaller lr")[0].split(" (", 1)[1]
    names = [item.split("=")[0] for item in named.split(", ")]
    # the options given (min_steps=0 is Tip-Adapter-F's recipe value, so it may be left out), lr first
    assert names[0] == "lr" and "weight_decay" in names and set(names) <= {"lr", "epochs", "min_steps", "weight_decay"}


def test_nan_scores_are_never_an_accuracy() -> None:
    """`evaluate` refuses NaN scores (a method that trains nothing, as GDA, has no training loss to check)."""
    from lathadapter.adapter.evaluate import evaluate

    class Broken(torch.nn.Module):
        name, options = "broken", None

        def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
            return torch.full((len(features), 3), float("nan"))

    with pytest.raises(ValueError, match="broken gave NaN scores"):
        evaluate(Broken(), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))


def test_the_python_api_refuses_a_seed_numpy_cannot_take(cache: Path, tmp_path: Path) -> None:
    """`lathadapter.fit(seed=-1)` trained and wrote `...-seed-1-...` as the command line did; NumPy refuses the seed."""
    import lathadapter

    for seed in (-1, 2**32):
        with pytest.raises(OptionError, match=f"--seed {seed}: a seed is an integer from 0 to {2**32 - 1}"):
            lathadapter.fit(cache, "zeroshot", shots=1, seed=seed, out=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


# benchmarks/fuzz_cli.py's findings. docs/usage.md: a mistake is one `error:` line naming the option, value or file
# and what would be valid; exit 2 for a bad value or combination of options, 1 for a missing or damaged input.

@pytest.mark.parametrize(("args", "fragments"), [
    (["--device", "cpux"], ["cpux"]),
    (["--views", "-1"], ["--views -1", "at least 0"]),
    (["--val", "subse"], ["--val", "subset", "split"]),
    (["--shots", "-1"], ["--shots -1", ">= 1"]),
    (["--address", "127.0.0.1:6379"], ["--address 127.0.0.1:6379", "--backend ray"]),
    # a misspelt backend is named first, not the --address it makes look misplaced
    (["--backend", "rya", "--address", "127.0.0.1:6379"], ["--backend rya", "local or ray"]),
])
def test_build_many_refuses_a_bad_option_before_any_build(tmp_path: Path, args: list[str],
                                                          fragments: list[str]) -> None:
    # every dataset's build failed alike, after the others ran, in `cache builds failed:` (exit 1), or (--address)
    # the option was ignored without a word
    out = tmp_path / "caches"
    result = invoke("cache", "build-many", "--dataset", f"split:{tmp_path / 'split.json'}", "--out", str(out), *args)
    assert_clean_error(result, *fragments, code=USAGE)
    assert not out.exists()


@pytest.mark.parametrize(("args", "fragments"), [
    (["--views", "1001"], ["--views 1001", "at most 1000"]),  # 2**63 views ended in HDF5's own words
    (["--val", ""], ["--val ''", "subset", "split"]),  # an empty --val was the default
])
def test_cache_build_refuses_views_past_the_bound_and_an_empty_val(tmp_path: Path, args: list[str],
                                                                   fragments: list[str]) -> None:
    result = invoke("cache", "build", "--dataset", f"split:{tmp_path / 'split.json'}", "--out",
                    str(tmp_path / "c.h5"), *args)
    assert_clean_error(result, *fragments, code=USAGE)


def test_cache_subset_refuses_shots_below_one_and_an_empty_out(cache: Path) -> None:
    assert_clean_error(invoke("cache", "subset", str(cache), "--shots", "0", "--seed", "1"), "--shots 0",
                       "at least 1", code=USAGE)
    # `--out ''` is the folder `.`: pathlib's "PosixPath('.') has an empty name" was the message
    assert_clean_error(invoke("cache", "subset", str(cache), "--shots", "1", "--seed", "1", "--out", ""), "--out",
                       "JSON file", code=USAGE)


@pytest.mark.parametrize(("name", "edit", "fragments"), [
    ("config.json", lambda config: [], ["config.json holds list, not an object"]),
    ("config.json", lambda config: {k: v for k, v in config.items() if k != "cache"},
     ["config.json: cache is missing"]),
    ("config.json", lambda config: config | {"options": [1]}, ["config.json: options is list, not dict"]),
    ("metrics.json", lambda metrics: metrics | {"accuracy": "x"}, ["metrics.json: accuracy is str, not an object"]),
    ("metrics.json", lambda metrics: metrics | {"accuracy": []}, ["metrics.json: accuracy is list, not an object"]),
    ("metrics.json", lambda metrics: metrics | {"accuracy": None}, ["metrics.json: accuracy is NoneType, not an"]),
    ("metrics.json", lambda metrics: None, ["metrics.json holds NoneType, not an object"]),
])
def test_a_run_folder_edited_badly_is_named_without_a_traceback(cache: Path, tmp_path: Path, name: str, edit,
                                                                 fragments: list[str]) -> None:
    """`inspect`, `compare` and `report` of a run whose JSON files were edited by hand: exit 1 (a damaged input),
    naming the run folder and what is wrong, where a KeyError or AttributeError was raised."""
    assert invoke("fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--device", "cpu", "--out",
                  str(tmp_path / "a")).exit_code == 0
    assert invoke("fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "2", "--device", "cpu", "--out",
                  str(tmp_path / "b")).exit_code == 0
    run, other = (next((tmp_path / side).iterdir()) for side in "ab")
    (run / name).write_text(json.dumps(edit(json.loads((run / name).read_text()))))
    for args in (["inspect", str(run), "--device", "cpu"], ["compare", str(run), str(other), "--device", "cpu"],
                 ["report", str(tmp_path / "a"), "--out", str(tmp_path / "report")]):
        if args[0] == "report" and fragments[0].endswith("not an object") and " holds " in fragments[0]:
            continue  # report's own reader names a file that is not a JSON object in its words (test_report)
        assert_clean_error(invoke(*args), str(run), *fragments, code=RUNTIME)


# Run folders as each version wrote them, by hand: the oldest config.json (no train_views, overrides, resolved,
# versions), metrics.json without ECE, a diverged run (no accuracy), a transfer run, an old tuning candidate (no score
# or set) and a training-free method (no options). (metrics, the rows' (target, acc_all, ece_all) expected)
OLD_CONFIG = {"key": "0123456789ab", "cache": "caches/dtd.h5", "cache_fields": {"dataset": "dtd"},
              "cache_fingerprint": "f" * 16, "method": "lathadapter", "shots": 4, "seed": 1, "classes": "all",
              "text": "coop", "select": "last", "options": {"lr": 0.001}}
RUN_SHAPES = [
    ({"accuracy": {"all": 61.5}}, [("", 61.5, None)]),
    ({"accuracy": {"all": None}, "ece": {"all": None}, "diverged": "loss NaN"}, [("", None, None)]),
    ({"accuracy": {"all": 61.5}, "ece": None, "targets": {"source": 61.5, "eurosat": 30.0},
      "targets_ece": {"source": 2.0, "eurosat": 9.0}}, [("eurosat", 30.0, 9.0), ("source", 61.5, 2.0)]),
    ({"accuracy": {"all": 61.5}, "ece": {"all": 3.0}, "targets": None}, [("", 61.5, 3.0)]),
    ({"accuracy": {"all": 61.5}, "tune": {"group": "g", "names": ["lr"], "values": {"lr": 0.001}, "index": 0,
                                          "candidates": 1}, "tune_val_accuracy": 60.0}, [("", 61.5, None)]),
]


@pytest.mark.parametrize(("method", "options"), [("lathadapter", {"lr": 0.001}), ("zeroshot", {})])
@pytest.mark.parametrize(("metrics", "expected"), RUN_SHAPES)
def test_run_folders_of_every_shape_the_tool_wrote_still_read(tmp_path: Path, method: str, options: dict,
                                                              metrics: dict, expected: list) -> None:
    """`malformed_run` refuses a wrong shape only: every run folder an earlier version wrote reads into the results
    table, with the values written, and loads (`read_run`) unless it diverged."""
    run = tmp_path / "run"
    run.mkdir()
    config = OLD_CONFIG | {"method": method, "options": options}
    for name, payload in (("config.json", config), ("metrics.json", metrics), ("weights.pt", {})):
        (run / name).write_text(json.dumps(payload))
    rows = run_rows([run])
    assert [(row["target"], row["acc_all"], row["ece_all"]) for row in rows] == expected
    assert {(row["method"], row["shots"], row["train_views"]) for row in rows} == {(method, 4, "augmented")}
    if "diverged" in metrics:
        with pytest.raises(StateError, match="diverged"):
            read_run(run)
    else:
        assert read_run(run) == (config, metrics)


def test_inspect_with_a_byte_flipped_cache_names_it(cache: Path, tmp_path: Path) -> None:
    """HDF5's "Can't synchronously read data" named no file: the damaged cache is named, as `fit` names it."""
    assert invoke("fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--device", "cpu", "--out",
                  str(tmp_path / "r")).exit_code == 0
    data = bytearray(cache.read_bytes())
    for i in range(4000, 6000):  # the fingerprint attribute's bytes among them (benchmarks/audit_cli.py's flip)
        data[i] ^= 0x5A
    flipped = tmp_path / "flipped.h5"
    flipped.write_bytes(bytes(data))
    result = invoke("inspect", str(next((tmp_path / "r").iterdir())), "--cache", str(flipped), "--device", "cpu")
    assert_clean_error(result, str(flipped), "corrupt", code=RUNTIME)
