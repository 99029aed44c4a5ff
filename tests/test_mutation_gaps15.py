"""Behaviours that a fifteenth mutation campaign (stop 29) found untested, in code no earlier campaign mutated (the
command line's own parsing and printing, the results table's records and labels, the demo's pre-training recipe, the
Ray backend's probe task): each test here fails on a mutant that the rest of the suite let pass, and checks the code
against an independent oracle (a documented rule restated, click's own parsing, a hand-built input with a known
answer, the committed model card)."""

from __future__ import annotations

import errno
import hashlib
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lathadapter import cli
from lathadapter.adapter.catalog import make_options
from lathadapter.adapter.options import OptionError
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app, given_options, repeated_option
from lathadapter.demo.pretrain import PretrainSettings, train_arguments
from lathadapter.experiments import ray_backend
from lathadapter.experiments.cells import Cell
from lathadapter.experiments.records import Results, ResultsError, distinct_slugs, percent, records, slug
from lathadapter.experiments.report_tables import Chosen, Table
from lathadapter.experiments.trained import check_per_class_out, load

COMMANDS = typer.main.get_command(app)

# ------------------------------------------------------------------------------------------ the command line's parsing


def test_nothing_after_a_double_dash_is_an_option() -> None:
    """click's rule: `--` ends the options, so an `--method` after it is an argument, not the option given again."""
    grid = COMMANDS.commands["grid"]
    assert repeated_option(grid, ["--method", "lathadapter", "--", "--method", "tip-adapter"]) is None
    assert "given twice" in repeated_option(grid, ["--method", "lathadapter", "--method", "tip-adapter"])


def cluster_command() -> typer.core.TyperCommand:
    """A command with short options: flags -a and -c, -b taking a value, and -m/--method taking a value."""
    probe = typer.Typer()

    @probe.command()
    def x(a: bool = typer.Option(False, "-a"), b: str = typer.Option("", "-b"), c: bool = typer.Option(False, "-c"),
          method: str = typer.Option("", "-m", "--method")) -> None:
        """The command."""

    return typer.main.get_command(probe)


def test_a_short_option_taking_a_value_ends_its_cluster_as_click_reads_it() -> None:
    """`-abc`: -a a flag, -b takes the rest (`c`) as its value; -c is not given. click's own parse is the oracle."""
    command = cluster_command()
    parsed = command.make_context("x", ["-abc"]).params
    assert (parsed["a"], parsed["b"], parsed["c"]) == (True, "c", False)
    assert {param.name: values for param, values in given_options(command, ["-abc"]).items()} == {
        "a": ["on"], "b": ["c"]}


def test_a_repeated_option_is_named_by_its_long_form() -> None:
    """docs/usage.md's message names the option as `--method`, also when it was given as its short form."""
    problem = repeated_option(cluster_command(), ["-m", "p", "--method", "q"])
    assert problem is not None and problem.startswith("--method given twice (p, q)")


def test_a_repeated_list_option_s_advice_lists_each_value_trimmed() -> None:
    """`--shots "1, 2" --shots 4`: the advice gives the list as one comma-separated value, `--shots 1,2,4`."""
    problem = repeated_option(COMMANDS.commands["grid"], ["--shots", "1, 2", "--shots", "4"])
    assert problem is not None and problem.endswith("give several values comma-separated, --shots 1,2,4")


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(("value", "empty"), [(",1", True), ("1,", True), ("x", False)])
def test_an_integer_list_with_an_empty_item_says_so(value: str, empty: bool) -> None:
    """`--shots ,1`: two items, one empty, is named as an empty item; `x` is no empty item (exit 2 both)."""
    code, output = run_cli("grid", "--shots", value)
    assert code == 2 and f"--shots {value!r}: expected comma-separated integers" in output
    assert ("(an empty item)" in output) == empty


def test_an_old_tune_set_name_is_read_as_its_new_one_with_a_note() -> None:
    """`--tune-set fewshot` (its name before) is `subset`, with a note naming the new name; an unknown one refused."""
    notes: list[str] = []
    original = cli._note
    try:
        cli._note = notes.append
        assert cli._choice("--tune-set", "fewshot") == "subset"
    finally:
        cli._note = original
    assert len(notes) == 1 and "subset" in notes[0]



def test_an_interrupt_with_no_run_finished_says_0_runs_and_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/usage.md: `interrupted: N runs finished, rerun the same command to resume` (exit 130 on Ctrl-C)."""
    with pytest.raises(typer.Exit) as stop:
        cli._interrupted(KeyboardInterrupt(), None)
    assert stop.value.exit_code == 130
    assert capsys.readouterr().err == "interrupted: 0 runs finished, rerun the same command to resume\n"


@pytest.mark.parametrize(("classes", "parts"), [("all", ["all"]), ("base", ["base", "novel", "HM"])])
def test_fit_prints_the_hm_of_a_base_to_novel_run_only(tmp_path: Path, classes: str, parts: list[str]) -> None:
    """`fit`'s line names each part it scored: `all`, or base, novel and their HM (base-to-novel alone has an HM)."""
    cache = write_synthetic_cache(tmp_path / "c.h5", num_classes=6, dim=16, shots=(1,), seeds=(1,))
    code, output = run_cli("fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--classes",
                           classes, "--out", str(tmp_path / "runs"), "--device", "cpu")
    line = output.strip().splitlines()[-1]
    scored = re.findall(r"(all|base|novel|HM) [0-9.]+%", line.split(" · ECE ")[0])
    assert code == 0 and scored == parts

# ------------------------------------------------------------------------------------------ write errors


def test_a_hidden_lock_or_temporary_file_beside_out_and_a_parent_of_out_are_named_as_out(tmp_path: Path) -> None:
    """A write fails at `.results.csv.lock` beside `results.csv`, or creating a folder above `--out`: both are the
    user's `--out` (docs/usage.md: the error names the path given and the fix, not an internal file)."""
    out = tmp_path / "a" / "results.csv"
    for failed in (tmp_path / "a" / ".results.csv.lock", tmp_path / "a"):
        message = cli._write_error(OSError(errno.ENOSPC, "No space left", str(failed)), out)
        assert message is not None and message.startswith(f"--out {out}: cannot write there: no space left")
    assert cli._write_error(OSError(errno.ENOSPC, "No space left", str(tmp_path / "b")), out) is None


# ------------------------------------------------------------------------------------------ list


def test_list_methods_says_which_train_and_which_cannot_score_novel_classes() -> None:
    """Zero-shot trains nothing and scores any class; the linear probe trains and cannot score novel classes
    (docs/usage.md: linear probe, CLAP, cross-modal, Tip-Adapter(-F), GDA, LP++, APE(-T) cannot)."""
    code, output = run_cli("list", "methods")
    rows = {line.split()[0]: line.split(None, 1)[1] for line in output.splitlines()}
    assert code == 0
    assert rows["zeroshot"] == "training-free"
    assert rows["linear-probe"] == "trained, cannot score novel classes"
    assert rows["lathadapter"] == "trained"


def test_list_options_shows_bools_as_true_false_and_recipe_defaults_as_recipe() -> None:
    """An option left to the training recipe shows `recipe`; a bool its default as `true`/`false`, its valid values
    `true, false` (the spelling `--set` takes); a method without options says so."""
    def rows(method: str) -> dict[str, list[str]]:
        code, output = run_cli("list", "options", method)
        assert code == 0
        return {line.split()[0]: re.split(r"\s{2,}", line) for line in output.splitlines()[1:]}

    assert rows("linear-probe")["epochs"][2] == "recipe"
    bools = [row for row in rows("lathadapter").values() if row[1] == "bool"]
    assert bools and all(row[2] in ("true", "false") and row[3] == "true, false" for row in bools)
    code, output = run_cli("list", "options", "zeroshot")
    assert code == 0 and output.startswith("zeroshot has no options")


# ------------------------------------------------------------------------------------------ results records

ROW = {"key": "k1", "dataset": "d", "fingerprint": "f" * 16, "method": "m", "shots": "4", "seed": "1",
       "classes": "all", "text": "coop", "select": "last", "target": "", "acc_all": "50.0", "acc_base": "",
       "acc_novel": ""}


def read(*rows: dict[str, str]) -> list:
    return records(Results(Path("results.csv"), [dict(ROW, **row) for row in rows], {}))


def test_accuracies_are_percentages_from_0_to_100_inclusive() -> None:
    assert [r.acc_all for r in read({"acc_all": "0"}, {"key": "k2", "seed": "2", "acc_all": "100"})] == [0.0, 100.0]
    with pytest.raises(ResultsError, match="acc_all is 100.5, not a percentage in"):
        read({"acc_all": "100.5"})


def test_a_slug_keeps_letters_digits_dots_and_dashes_and_trims_underscores() -> None:
    assert slug("caltech101 (fp 1a2b3c4d)") == "caltech101_fp_1a2b3c4d"
    assert slug("imagenet-v1.5") == "imagenet-v1.5"


def test_names_sharing_a_slug_get_six_hex_digits_of_their_sha1() -> None:
    def tail(name: str) -> str:
        return hashlib.sha1(name.encode()).hexdigest()[:6]

    assert distinct_slugs(["a b", "a|b", "c"]) == {"a b": f"a_b_{tail('a b')}", "a|b": f"a_b_{tail('a|b')}",
                                                   "c": "c"}


TUNED = {"opt.lr": "0.01", "tune.names": "lr", "tune.selected": "true", "tune.group": "g"}


def test_a_kept_candidate_s_score_is_val_by_default_and_names_the_whole_val_split() -> None:
    """A tuned row without `tune.score` was chosen by val accuracy (docs: the default); `tune.set=split` adds the
    whole-split suffix."""
    (plain,) = read(TUNED)
    assert dict(plain.tuned)["tune.score"] == "val"
    (split,) = read({**TUNED, "tune.score": "val_hm", "tune.set": "split"})
    assert dict(split.tuned)["tune.score"] == "val_hm on the whole val split"



def test_a_tuning_setting_a_row_lacks_is_the_saved_default_for_a_tuning_candidate_only() -> None:
    """A table without `tune.score` read beside one that has it: a tuning candidate's run was scored by `val` (the
    default before the column existed), a run without tuning has no score (empty)."""
    columns = ["text", "select", "train_views", "tune.score"]
    plain = records(Results(Path("results.csv"), [dict(ROW)], {}), columns)[0]
    tuned = records(Results(Path("results.csv"), [dict(ROW, **TUNED)], {}), columns)[0]
    assert dict(plain.config.settings)["tune.score"] == ""
    assert dict(tuned.config.settings)["tune.score"] == "val"


def test_a_tuned_option_is_read_from_the_method_s_own_scoped_column_first() -> None:
    """`opt.m.lr` names method m's lr; an unscoped `opt.lr` beside it (another method's grid) is not m's choice."""
    (record,) = read({**TUNED, "opt.m.lr": "0.1", "opt.lr": "0.5"})
    assert ("lr", "0.1") in record.tuned


def test_an_accuracy_prints_with_two_decimals() -> None:
    assert (percent(81.25), percent(7.0), percent(None)) == ("81.25%", "7.00%", "n/a")


# ------------------------------------------------------------------------------------------ report tables


def choice(value: str, edge: str = "") -> tuple:
    return (("lr", value), ("tune.score", "val")) + ((("tune.edge", edge),) if edge else ())


def test_a_tuned_cell_names_its_choices_their_seed_counts_and_edge_marks() -> None:
    """docs/usage.md: a choice on the highest value tried is marked ▲, on the lowest ▼; seeds that chose differently
    are counted (`×n`), one choice alone is shown as it is; no choice is `—` in markdown and empty in the CSV."""
    assert Chosen((choice("0.1", "high"),) * 2).text() == "lr=0.1 ▲"
    assert Chosen((choice("0.1"), choice("0.1"), choice("0.01", "low"))).text() == "lr=0.1 ×2, lr=0.01 ▼ ×1"
    assert (Chosen().text(), Chosen().numbers()) == ("—", [""])


def test_a_cell_without_a_mean_is_not_marked_as_resting_on_fewer_seeds() -> None:
    """`(n=k)` marks a mean over fewer seeds than the fullest cell; `n/a` is no mean, so it carries no mark."""
    table = Table("t", "T", ["method"], ["a", "b"], [(["m"], [Cell(mean=50.0, std=1.0, n=3), Cell(n=2)])])
    row = table.markdown().splitlines()[-1]
    assert "(n=2)" not in row and row.endswith(f"| {Cell(n=2).text()} |")


# ------------------------------------------------------------------------------------------ loading a run


def test_load_refuses_a_run_dir_of_none_and_a_single_target_path() -> None:
    """`load`'s path arguments are checked first (a clear OptionError, not pathlib's TypeError); one target path
    given alone, not in a list, is refused (it was read letter by letter)."""
    with pytest.raises(OptionError, match="run_dir=None: expected a path"):
        load(None)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="targets='t.h5': expected a list of target cache paths"):
        load("runs/x", targets="t.h5")  # type: ignore[arg-type]



def test_a_per_class_csv_written_before_the_target_column_may_be_replaced(tmp_path: Path) -> None:
    """`inspect --out` replaces a per-class CSV of its own, also one of the six columns it had before `target`; any
    other file is refused."""
    old = tmp_path / "old.csv"
    old.write_text("classes,label,class,correct,count,accuracy\nall,0,cat,3,4,75.0000\n")
    check_per_class_out(old)
    other = tmp_path / "metrics.csv"
    other.write_text("key,dataset\n")
    with pytest.raises(OptionError, match="--out"):
        check_per_class_out(other)


def test_a_method_name_that_is_no_string_is_an_unknown_method() -> None:
    """A Python caller's `make_options(["lathadapter"])` is a clear OptionError naming the valid methods, not a
    TypeError from a dictionary lookup."""
    with pytest.raises(OptionError, match="unknown method \\['lathadapter'\\]; valid methods: "):
        make_options(["lathadapter"])  # type: ignore[arg-type]

# ------------------------------------------------------------------------------------------ the demo's pre-training


def test_the_pretraining_defaults_are_the_committed_checkpoint_s_recipe() -> None:
    """demo/assets/MODEL_CARD.md: 20000 images (corpus seed 0), 5 epochs, batch 64, AdamW lr 0.001, weight decay
    0.1, 100 warm-up steps, seed 0, 1 torch thread; open_clip_train gets those values."""
    settings = PretrainSettings()
    assert (settings.corpus_size, settings.corpus_seed, settings.epochs, settings.batch_size, settings.lr,
            settings.wd, settings.warmup, settings.seed, settings.threads) == (20000, 0, 5, 64, 1e-3, 0.1, 100, 0, 1)
    arguments = train_arguments(settings, Path("corpus.tsv"), Path("logs"))
    given = dict(zip(arguments[::2], arguments[1::2], strict=False))
    assert {flag: float(given[flag]) for flag in ("--epochs", "--batch-size", "--lr", "--wd", "--warmup", "--seed")
            } == {"--epochs": 5, "--batch-size": 64, "--lr": 1e-3, "--wd": 0.1, "--warmup": 100, "--seed": 0}


# ------------------------------------------------------------------------------------------ the Ray probe


def test_the_ray_probe_task_asks_no_cpu(tmp_path: Path) -> None:
    """docs/usage.md: the one task that checks the shared storage asks no CPU, so it runs at once on a cluster whose
    CPUs other work holds (one CPU would queue it behind that work)."""
    asked: list[dict] = []

    class Remote:
        def options(self, **resources: object) -> Remote:
            asked.append(resources)
            return self

        def remote(self, *args: object) -> list[str]:
            return []  # the probe found no problem

    class FakeRay:
        exceptions = type("exceptions", (), {"RayTaskError": type("RayTaskError", (Exception,), {})})

        @staticmethod
        def remote(function: object) -> Remote:
            return Remote()

        @staticmethod
        def get(result: list[str]) -> list[str]:
            return result

    ray_backend.check_shared(FakeRay, [], tmp_path)
    assert asked == [{"num_cpus": 0}]
