"""Behaviours that a fifth mutation campaign (stop 26) found untested, in modules no earlier campaign covered (a
report's cells and labels, its stale-file list and LaTeX, grid files and their expansion, work chunks and the worker
count, run folders and atomic writes, option parsing, progress lines and relayed warnings, APE's search): each test
here fails on a mutant that the rest of the suite let pass, and checks the code against an independent oracle (a
documented rule or formula restated, a hand-built input with a known answer)."""

from __future__ import annotations

import errno
import hashlib
import json
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import helpers
import pytest
import torch

from lathadapter.adapter.catalog import make_options
from lathadapter.adapter.methods.ape import search_cells
from lathadapter.adapter.options import OptionError, changed_fields, environment_choice
from lathadapter.experiments import machine, pool
from lathadapter.experiments import run as runs
from lathadapter.experiments.cells import (
    MISSING,
    Cell,
    config_label,
    dataset_slug,
    few_shot_average,
    few_shot_cells,
    ordered_configs,
)
from lathadapter.experiments.chunks import Collector, to_cpu
from lathadapter.experiments.records import Configuration, Record
from lathadapter.experiments.report import write_report
from lathadapter.experiments.run import (
    RunConfig,
    RunOutcome,
    check_out,
    check_replaceable,
    run_folder,
    save_run,
    write_atomic,
)
from lathadapter.experiments.spec import GridSpec, expand, extended, load_spec_file
from lathadapter.progress import LogProgress, relayed, show_relayed

# ------------------------------------------------------------------------------------------ a report's cells


def test_the_harmonic_mean_of_accuracies_below_one_percent_is_2bn_over_b_plus_n() -> None:
    """HM = 2·b·n / (b + n) (the denominator floored only against 0, not at 1 %)."""
    hm = Cell.hm(Cell(0.5, None, 1), Cell(0.25, None, 1))
    assert hm.mean == pytest.approx(2 * 0.5 * 0.25 / (0.5 + 0.25))
    assert Cell.hm(Cell(0.0, None, 1), Cell(0.0, None, 1)).mean == 0.0


def test_the_harmonic_mean_of_a_diverged_side_reads_diverged() -> None:
    """Cell.hm's rule: a side whose every seed diverged makes the HM `diverged`, never `n/a` or `—`."""
    assert Cell.hm(Cell(diverged=True), Cell(50.0, None, 1)).text() == "diverged"
    assert Cell.hm(Cell(60.0, None, 1), Cell(diverged=True)).text() == "diverged"


def record(dataset: str, method: str, shots: int, seed: int, acc: float | None, ece: float | None = None,
           lr: str = "0.001") -> Record:
    return Record(dataset, Configuration(method, (("opt.lr", lr),)), shots, "all", "", acc, None, None, seed=seed,
                  ece_all=ece)


def test_a_cell_whose_runs_recorded_no_ece_is_kept_as_no_run() -> None:
    """`cells_over_seeds`: a cell of runs that did not record the metric is `—` (the ECE table keeps the accuracy
    table's rows), not left out."""
    records = [record("d", "tip-adapter", 1, 1, 50.0, ece=3.0), record("d", "lathadapter", 1, 1, 60.0)]
    cells = few_shot_cells(records, "ece_all", Record.ece_recorded)
    assert set(cells) == {("d", r.config, 1) for r in records}
    assert cells[("d", records[1].config, 1)] is MISSING
    assert cells[("d", records[0].config, 1)].mean == 3.0


def test_the_average_over_datasets_has_every_shots_of_any_configuration() -> None:
    """`few_shot_average`: every configuration at every number of shots of any dataset; one without a run at some
    shots is `—` there."""
    a = [record("d", "lathadapter", k, 1, 50.0 + k) for k in (1, 2)]
    b = [record("d", "tip-adapter", 1, 1, 40.0)]
    average = few_shot_average(few_shot_cells(a + b))
    assert set(average) == {(c, k) for c in (a[0].config, b[0].config) for k in (1, 2)}
    assert average[(b[0].config, 2)].missing
    assert average[(a[0].config, 2)].mean == 52.0


def test_a_dataset_named_average_in_any_case_gets_its_own_file_name() -> None:
    """A dataset called `Average` would share `few_shot_average` with the average over datasets on a
    case-insensitive file system (macOS, Windows)."""
    assert dataset_slug("Average").lower() != "average"
    assert dataset_slug("AVERAGE").lower() != "average"
    assert dataset_slug("caltech101") == "caltech101"


def test_an_unknown_method_is_ordered_after_the_catalogs() -> None:
    """`ordered_configs`: methods in the catalog's order, unknown names after."""
    known = [Configuration("lathadapter", ()), Configuration("zeroshot", ())]
    ordered = ordered_configs([Configuration("my-method", ()), *known])
    assert [c.method for c in ordered] == ["zeroshot", "lathadapter", "my-method"]


def test_tuned_values_in_a_label_are_in_numeric_order() -> None:
    """`lr=9/10 (tuned)`: the values its runs chose, numbers by value (not `10/9` as text sorts them)."""
    config = Configuration("clip-adapter", (("opt.lr", "tuned"),))
    label = config_label(config, {"clip-adapter": ["opt.lr"]}, [(("lr", "10"),), (("lr", "9"),)])
    assert label == "clip-adapter lr=9/10 (tuned)"


# ------------------------------------------------------------------------------------------ a report's files

COLUMNS = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
           "acc_all", "acc_base", "acc_novel", "ece_all", "opt.lr"]


def results(path: Path, eces: dict[str, list[float]]) -> Path:
    """Two configurations of clip-adapter (lr), one seed each at 1 shot, with their accuracies and ECEs."""
    rows = [{"key": f"k{lr}-{seed}", "cache": "d.h5", "dataset": "d", "fingerprint": "f" * 16, "method": "clip-adapter",
             "shots": 1, "seed": seed, "classes": "all", "text": "coop", "select": "last", "target": "",
             "acc_all": 50.0, "ece_all": ece, "opt.lr": lr} for lr, values in eces.items()
            for seed, ece in enumerate(values, 1)]
    return helpers.write_rows(path, rows, COLUMNS)


def test_a_report_removes_only_files_of_its_own_folder_an_earlier_list_names(tmp_path: Path) -> None:
    """`.report_files.json` names files of the report folder: a name with a folder in it (edited by hand, or
    another folder's list copied) removes nothing outside the report's own files."""
    out = tmp_path / "report"
    source = results(tmp_path / "results.csv", {"0.1": [5.0], "0.01": [7.0]})
    write_report(source, out)
    (tmp_path / "outside.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "inner.txt").write_text("mine")
    listed = json.loads((out / ".report_files.json").read_text())
    (out / ".report_files.json").write_text(json.dumps([*listed, "../outside.txt", "sub/inner.txt"]))
    write_report(source, out)
    assert (tmp_path / "outside.txt").read_text() == "mine" and (out / "sub" / "inner.txt").read_text() == "mine"


def test_the_ece_tables_latex_bolds_the_lowest_ece(tmp_path: Path) -> None:
    """Lower is better for ECE (`Table.lower_better`): its best mean, the one in bold, is the lowest."""
    out = tmp_path / "report"
    write_report(results(tmp_path / "results.csv", {"0.1": [5.0], "0.01": [7.0]}), out)
    (tex,) = [p for p in out.glob("*.tex") if "ece" in p.name and "seed" not in p.name]
    bold = [line for line in tex.read_text().splitlines() if "textbf" in line]
    assert len(bold) == 1 and "5.00" in bold[0] and "7.00" not in bold[0]


def test_a_results_path_with_a_line_break_stays_inside_the_latex_comment(tmp_path: Path) -> None:
    """The first line of a `.tex` names the results in a `%` comment: a line break in that path would leave the rest
    of it as LaTeX text."""
    folder = tmp_path / "a\nb"
    folder.mkdir()
    out = tmp_path / "report"
    write_report(results(folder / "results.csv", {"0.1": [5.0], "0.01": [7.0]}), out)
    for tex in out.glob("*.tex"):
        lines = tex.read_text().splitlines()
        assert lines[0].startswith("%") and lines[1].startswith("\\begin{table}"), tex.name


# ------------------------------------------------------------------------------------------ grid files and expansion


def test_a_yml_grid_file_is_read(tmp_path: Path) -> None:
    """`.yml` is a YAML grid file, as `.yaml` is."""
    path = tmp_path / "grid.yml"
    path.write_text("shots: [1, 2]\nmethods: zeroshot\n")
    assert load_spec_file(path)["shots"] == [1, 2]


def test_an_empty_yaml_grid_file_is_an_empty_grid_description(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("")
    spec = load_spec_file(path)
    assert spec["options"] == {} and not any(key in spec for key in ("shots", "methods", "caches"))


def test_yaml_errors_name_the_line_and_column_counted_from_one(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("shots: [1, 2]\nmethods: [a, b\n")  # the list is never closed: YAML stops at line 3, column 1
    with pytest.raises(OptionError, match="line 3, column 1"):
        load_spec_file(path)


@pytest.mark.parametrize("values", ["[true, 'true']", "[0.5, ' 0.5']"])
def test_a_grid_files_option_value_given_twice_in_two_spellings_is_refused(tmp_path: Path, values: str) -> None:
    """A value is read as the text `--set` would give (`true`, `0.5`, stripped): two spellings of it are one value
    given twice."""
    path = tmp_path / "grid.yaml"
    path.write_text(f"options:\n  lathadapter.curvature: {values}\n")
    with pytest.raises(OptionError, match="given twice"):
        load_spec_file(path)


def test_a_tune_preset_that_is_no_name_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("tune_preset: [lr]\n")
    with pytest.raises(OptionError, match="tune_preset must be one name"):
        load_spec_file(path)


def test_a_tuning_score_without_tuning_is_refused_from_python_too() -> None:
    """`refuse_untuned`: a grid described in Python (`launch`) with a `tune_score` but nothing tuned."""
    with pytest.raises(OptionError, match="nothing is tuned"):
        expand(GridSpec(caches=["c.h5"], methods=["clip-adapter"], shots=[1], seeds=[1], tune_score="val"))


def test_a_preset_alone_tunes_so_its_score_is_taken() -> None:
    runs = expand(GridSpec(caches=["c.h5"], methods=["clip-adapter"], shots=[1], seeds=[1], tune_preset="lr",
                           tune_score="val"))
    assert len(runs) == 3 and {r.tune.score for r in runs if r.tune is not None} == {"val"}


def test_an_extension_candidate_carries_its_own_value() -> None:
    """A preset's candidate past an edge (`extended`): its values (`extra`) hold the preset's option at factor × the
    method's default, not the original candidate's."""
    root = expand(GridSpec(caches=["c.h5"], methods=["lathadapter"], shots=[1], seeds=[1], tune_preset="lr"))[0]
    default = make_options("lathadapter").lr
    grown = extended(root, "origin-key", 100.0, 3)
    assert grown.tune.extra == (pytest.approx(100.0 * default),)
    assert grown.config.options.lr == pytest.approx(100.0 * default)


# ------------------------------------------------------------------------------------------ chunks and workers


def test_a_number_sent_back_is_a_run_finished_meanwhile() -> None:
    """`Collector.take`: a worker's bare index is a run found finished (skipped), not one it trained."""
    collector = Collector(SimpleNamespace(pending=[(3, None), (4, None)]))
    assert collector.take(3) == [(3, "skipped")]
    assert collector.unfinished == {4}


def test_tensors_go_to_the_cpu_inside_tuples_kept_tuples() -> None:
    moved = to_cpu({"points": (torch.ones(2, requires_grad=True), [torch.zeros(1)])})
    assert isinstance(moved["points"], tuple) and isinstance(moved["points"][1], list)
    assert not moved["points"][0].requires_grad


@pytest.mark.parametrize(("pending", "expected"), [(3, 1), (7, 1), (8, 2), (11, 2), (100, 6)])
def test_the_default_worker_count_is_one_per_four_whole_runs_up_to_the_free_cpus(
        monkeypatch: pytest.MonkeyPatch, pending: int, expected: int) -> None:
    """`auto_workers` on the CPU: min(free CPUs, ⌊pending / 4⌋), at least 1; on a GPU, 1 (this process)."""
    monkeypatch.setattr(machine, "default_threads", lambda: 6)
    assert pool.auto_workers(pending, "cpu") == expected
    assert pool.auto_workers(pending, "cuda") == 1


def test_a_script_inside_the_package_gets_no_guard_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """`script_hint`: the hint is for the user's own scripts, not the package's modules run as `__main__`."""
    package = Path(pool.__file__).absolute().parent.parent
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(package / "cli.py"), raising=False)
    assert pool.script_hint() == ""
    monkeypatch.setattr(sys.modules["__main__"], "__file__", "/elsewhere/train.py", raising=False)
    assert "/elsewhere/train.py" in pool.script_hint()


class Unpicklable(Exception):
    def __init__(self, text: str, extra: int) -> None:
        super().__init__(text)
        self.extra = extra


def test_an_error_that_cannot_cross_to_the_driver_keeps_its_type_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's error that cannot be unpickled is sent back as a RuntimeError naming its type and message."""
    from lathadapter.experiments import chunks

    def failing(*args: object) -> list[object]:
        raise Unpicklable("the chunk broke", 1)

    monkeypatch.setattr(chunks, "train_chunk", failing)
    _, error, _ = pool.unpack(pool.work_chunk("c.h5", [], "out", None, None))  # type: ignore[arg-type]
    assert type(error) is RuntimeError and str(error) == "Unpicklable: the chunk broke"


def test_val_hm_refuses_a_training_view_of_one_class(tmp_path: Path) -> None:
    """`--tune-score val_hm` splits the training classes in two: a base-to-novel run of a 2-class dataset trains on
    one base class, which cannot be split."""
    from lathadapter.cache.store import CacheReader
    from lathadapter.cache.synthetic import write_synthetic_cache
    from lathadapter.experiments.run import pseudo_split

    cache = write_synthetic_cache(tmp_path / "c.h5", num_classes=2, dim=8, shots=(1,), seeds=(1,))
    with CacheReader(cache) as reader:
        data = reader.load(1, 1)
    with pytest.raises(OptionError, match="leaves 1"):
        pseudo_split(RunConfig("clip-adapter", 1, 1, classes="base"), data)
    assert [d.num_classes for d in pseudo_split(RunConfig("clip-adapter", 1, 1), data)] == [1, 1]


# ------------------------------------------------------------------------------------------ runs and atomic writes


def test_shots_of_zero_are_refused() -> None:
    with pytest.raises(OptionError, match="--shots 0"):
        RunConfig("zeroshot", 0, 1)


def test_a_run_key_is_the_documented_hash_of_its_sorted_configuration() -> None:
    """`RunConfig.key`: the first 12 hex digits of the SHA-256 of the configuration as JSON with sorted keys (with
    the fingerprint; `train_views` left out at `augmented` and options at their `before` value), so that grids of
    other versions keep resuming."""
    config = RunConfig.create("cross-modal", 2, 3)
    options = {k: v for k, v in vars(config.options).items()}
    before = {f: v for f, v in (("init", "zeroshot"),) if options.get(f) == v}
    payload = {"method": "cross-modal", "shots": 2, "seed": 3, "classes": "all", "text": "coop", "select": "last",
               "options": {k: v for k, v in options.items() if k not in before}, "fingerprint": "fp"}
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert config.key("fp") == expected
    other = RunConfig.create("cross-modal", 2, 3, train_views="all")
    assert other.key("fp") == hashlib.sha256(json.dumps({**payload, "train_views": "all"}, sort_keys=True,
                                                          default=str).encode()).hexdigest()[:12]


def test_a_failed_atomic_write_leaves_no_temporary_file_and_names_the_file(tmp_path: Path) -> None:
    def full(temporary: Path) -> None:
        temporary.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="metrics.json") as raised:
        write_atomic(tmp_path / "metrics.json", full)
    assert raised.value.filename == str(tmp_path / "metrics.json")
    assert list(tmp_path.iterdir()) == []


def test_an_error_that_names_its_file_is_raised_as_it_is(tmp_path: Path) -> None:
    def missing(temporary: Path) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file", "/some/input")

    with pytest.raises(FileNotFoundError) as raised:
        write_atomic(tmp_path / "out.json", missing)
    assert raised.value.filename == "/some/input"


def test_an_empty_file_may_be_replaced(tmp_path: Path) -> None:
    empty = tmp_path / "out.csv"
    empty.write_text("")
    check_replaceable(empty, "--out", b"key,", "a compare CSV")  # no error: nothing to lose


def test_an_out_folder_below_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(OptionError, match="is a file"):
        check_out(tmp_path / "taken" / "runs", tmp_path / "taken" / "runs" / "r", force=False)


def test_force_trains_a_finished_run_again(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(OptionError, match="finished run"):
        check_out(tmp_path / "runs", folder, force=False)
    check_out(tmp_path / "runs", folder, force=True)


def test_a_run_directory_names_dataset_method_classes_shots_seed_and_key() -> None:
    """docs/architecture.md: `OUT/<dataset>-<method>-<classes>-<shots>shot-seed<seed>-<key>/` (a base-to-novel run
    and an all-class run of one seed in folders of their own names)."""
    config = RunConfig("zeroshot", 4, 2, classes="base")
    assert run_folder(Path("out"), "dtd", config, "abc") == Path("out/dtd-zeroshot-base-4shot-seed2-abc")


def test_a_failed_save_into_an_existing_folder_leaves_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """`save_run` on a full disk removes a run folder it made, never one that was there (`--force` over a finished
    run keeps its files)."""
    def full(value: object) -> bytes:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "torch_bytes", full)
    outcome = RunOutcome(SimpleNamespace(state_dict=dict), {"accuracy": 1.0}, None)  # type: ignore[arg-type]
    config = RunConfig("zeroshot", 1, 1)
    kept, made = tmp_path / "kept", tmp_path / "made"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for folder in (kept, made):
        with pytest.raises(OSError):
            save_run(folder, config, outcome, tmp_path / "c.h5", "fp", {}, "cpu")
    assert (kept / "notes.txt").read_text() == "mine" and not made.exists()


# ------------------------------------------------------------------------------------------ option parsing


@pytest.mark.parametrize(("name", "value"), [("lr", "0"), ("lr", "nan"), ("lr", "inf"), ("batch_size", "0"),
                                             ("weight_decay", "-1e-9")])
def test_option_ranges_refuse_their_edges_where_open(name: str, value: str) -> None:
    """`lr` > 0 (0 refused), `batch_size` ≥ 1, `weight_decay` ≥ 0, and every number finite."""
    with pytest.raises(OptionError, match=f"option {name}="):
        make_options("lathadapter", {name: value})


@pytest.mark.parametrize(("name", "value", "rule"), [("lr", "0", "> 0"), ("batch_size", "0", ">= 1"),
                                                     ("lr", "inf", "finite and > 0"), ("alpha_v", "1.5", "in [0, 1]"),
                                                     ("alpha_v", "nan", "finite and in [0, 1]")])
def test_a_refused_value_says_the_valid_range(name: str, value: str, rule: str) -> None:
    with pytest.raises(OptionError, match=rf"it must be {re.escape(rule)} "):
        make_options("lathadapter", {name: value})


def test_a_closed_upper_edge_is_valid() -> None:
    """`alpha_v` in [0, 1]: 1 is valid."""
    assert make_options("lathadapter", {"alpha_v": "1"}).alpha_v == 1.0


def test_the_changed_fields_are_those_set() -> None:
    """`changed_fields` (config.json's `overrides`): the options a user set, not every option."""
    epochs = make_options("lathadapter").epochs  # set to its default: not a change
    assert changed_fields(make_options("lathadapter", {"lr": "0.123", "epochs": str(epochs)})) == {"lr": 0.123}


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("on", True), ("no", False), ("off", False)])
def test_boolean_options_read_yes_on_no_off(text: str, value: bool) -> None:
    name = next(n for n, v in vars(make_options("lathadapter")).items() if isinstance(v, bool))
    assert getattr(make_options("lathadapter", {name: text}), name) is value


@pytest.mark.parametrize("name", ["lr", "epochs"])
def test_a_python_bool_is_no_number(name: str) -> None:
    """`fit(..., lr=True)`: a bool is refused for a float or an integer option, not read as 1."""
    with pytest.raises(OptionError, match=f"option {name}=True"):
        make_options("lathadapter", {name: True})


def test_an_assignment_without_a_name_is_refused() -> None:
    from lathadapter.adapter.options import parse_assignments

    with pytest.raises(OptionError, match="expects name=value"):
        parse_assignments([" =0.1"])


def test_an_unset_environment_switch_takes_the_first_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATHADAPTER_TEST_SWITCH", raising=False)
    assert environment_choice("LATHADAPTER_TEST_SWITCH", ("auto", "on", "off")) == "auto"


# ------------------------------------------------------------------------------------------ progress and warnings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_past_an_hour_shows_minutes_within_the_hour(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    with LogProgress(clock=clock) as progress:
        task = progress.add_task("grid", total=2)
        clock.now = 3725.0  # 1 h 2 min 5 s
        progress.update(task, advance=1)
    assert "elapsed 1:02:05" in capsys.readouterr().err


def test_a_task_that_reaches_its_total_prints_its_last_line_once_without_eta(capsys: pytest.CaptureFixture[str]
                                                                            ) -> None:
    """The end line when `completed` reaches the total (not only past it); no ETA on it; nothing more on exit."""
    clock = Clock()
    with LogProgress(clock=clock) as progress:
        task = progress.add_task("grid", total=4)
        clock.now = 1.0
        progress.update(task, advance=4)
        lines = capsys.readouterr().err.strip().splitlines()  # at the update that reached it, not on exit
    assert [line.split(" · ")[0] for line in lines] == ["grid: 0/4 (0%)", "grid: 4/4 (100%)"]
    assert "ETA" not in lines[-1]
    assert capsys.readouterr().err == ""


def test_an_unfinished_task_without_progress_prints_nothing_more_on_exit(capsys: pytest.CaptureFixture[str]) -> None:
    with LogProgress(clock=Clock()) as progress:
        progress.add_task("grid", total=4)
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_line_waits_for_one_whole_item_on_a_short_task(capsys: pytest.CaptureFixture[str]) -> None:
    """The 5 % step is at least 1: half an item of a 4-item task after 31 s prints nothing."""
    clock = Clock()
    with LogProgress(clock=clock) as progress:
        task = progress.add_task("grid", total=4)
        clock.now = 31.0
        progress.update(task, advance=0.5)
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        clock.now = 62.0
        progress.update(task, advance=0.5)
    assert "grid: 1/4" in capsys.readouterr().err


def test_the_eta_of_a_resumed_task_counts_only_the_items_done_since(capsys: pytest.CaptureFixture[str]) -> None:
    """A task added at 50/100 that does 10 more in 60 s has 40 left at 10 a minute: ETA 4 minutes."""
    clock = Clock()
    with LogProgress(clock=clock) as progress:
        task = progress.add_task("grid", total=100, completed=50)
        clock.now = 60.0
        progress.update(task, advance=10)
    assert "ETA 0:04:00" in capsys.readouterr().err


class NeedsTwo(UserWarning):
    def __init__(self, text: str, extra: int) -> None:
        super().__init__(text)
        self.extra = extra


def test_warnings_relayed_keep_their_order_and_the_nearest_builtin_category() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("first", RuntimeWarning, stacklevel=1)
        warnings.warn(NeedsTwo("second", 2), stacklevel=1)
    sent = relayed(caught)
    assert [str(w) for w in sent] == ["first", "second"]
    assert type(sent[0]) is RuntimeWarning and type(sent[1]) is UserWarning  # NeedsTwo cannot be unpickled


def test_a_relayed_warning_shown_once_per_text() -> None:
    shown: set[str] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        show_relayed([UserWarning("a"), UserWarning("a"), UserWarning("b")], shown)
        show_relayed([UserWarning("a")], shown)
    assert [str(w.message) for w in caught] == ["a", "b"]


# ------------------------------------------------------------------------------------------ APE's search


def test_apes_search_reads_a_tie_with_an_earlier_class_as_a_miss() -> None:
    """One val image of class 1, zero-shot scores (1, 0), one key of class 1 at affinity 1: its logits are
    (1, α). At α = 1 the two tie and argmax picks class 0 (a miss, as the official argmax); at α = 2 it is right:
    the search chooses α = 2, the first α of full accuracy."""
    zero_shot = torch.tensor([[1.0, 0.0]])
    alphas = torch.tensor([1.0, 2.0])
    official = [int((zero_shot + a * torch.tensor([[0.0, 1.0]])).argmax(1).item() == 1) for a in alphas]
    assert official == [0, 1]
    b, a, g, accuracy = search_cells(zero_shot, torch.ones(1, 1), torch.ones(1, 1), torch.tensor([1]),
                                     torch.tensor([1]), alphas, torch.tensor([1.0]), None)
    assert (b, a, g, accuracy) == (0, official.index(1), 0, 100.0)

