"""Grids (axes, cartesian product, resume), the four protocols' bookkeeping, and reports traced to the results."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import read_rows
from PIL import Image
from typer.testing import CliRunner

from lathadapter.adapter.catalog import method_class
from lathadapter.adapter.options import OptionError, option, parse_assignments
from lathadapter.cache.store import CacheError, CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch, train_round
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.report import write_report
from lathadapter.experiments.run import RunConfig
from lathadapter.experiments.spec import GridSpec, expand, load_spec_file
from lathadapter.experiments.table import option_column, write_results

QUICK = {"epochs": ["2"], "min_steps": ["0"]}


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("grid_caches")
    common = dict(dim=16, views=2, shots=(1, 2, 16), seeds=(1, 2), train_per_class=16, test_per_class=6)
    return {
        "source": write_synthetic_cache(folder / "source.h5", num_classes=8, seed=0, name="source", **common),
        "other": write_synthetic_cache(folder / "other.h5", num_classes=6, seed=7, name="other", **common),
        # Same latent classes as the source (same seed), only 4 of them, noisier: a domain-shifted subset.
        "shifted": write_synthetic_cache(folder / "shifted.h5", num_classes=8, seed=0, keep_classes=[6, 1, 3, 4],
                                         image_noise=0.9, name="shifted", **common),
    }


def test_axes_parse_and_expand_to_the_cartesian_product(caches: dict[str, Path]) -> None:
    axes = parse_assignments(["taskres.alpha=0.25,0.5", "lr=0.001,0.01"])
    assert axes == {"taskres.alpha": ["0.25", "0.5"], "lr": ["0.001", "0.01"]}
    spec = GridSpec([str(caches["source"])], ["zeroshot", "taskres"], [1, 2], [1, 2], options=axes)
    runs = expand(spec)
    # zeroshot has neither option: shots × seeds = 4; taskres: 2 alphas × 2 lrs × 4 = 16
    assert len(runs) == 4 + 16
    taskres = {(r.config.options.alpha, r.config.options.lr) for r in runs if r.config.method == "taskres"}
    assert taskres == {(0.25, 0.001), (0.25, 0.01), (0.5, 0.001), (0.5, 0.01)}
    assert len({r.config for r in runs}) == len(runs)
    with pytest.raises(OptionError, match="not in the grid's methods"):
        expand(GridSpec([str(caches["source"])], ["zeroshot"], options={"taskres.alpha": ["1"]}))
    with pytest.raises(OptionError, match="no method of the grid has option 'curvature'"):
        expand(GridSpec([str(caches["source"])], ["taskres"], options={"curvature": ["1"]}))
    with pytest.raises(OptionError, match="name=value"):
        parse_assignments(["alpha"])


def test_grid_files_give_the_same_axes_as_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(
        "caches: [a.h5]\nmethods: zeroshot,taskres\nshots: [1, 4]\nseeds: 1,2\noptions:\n  taskres.alpha: [0.25, 0.5]\n"
    )
    (tmp_path / "grid.toml").write_text(
        'caches = ["a.h5"]\nmethods = ["zeroshot", "taskres"]\nshots = [1, 4]\nseeds = "1,2"\n'
        '[options]\n"taskres.alpha" = [0.25, 0.5]\n'
    )
    # option values as the text `--set taskres.alpha=0.25,0.5` gives them, read by the same parser
    expected = {"caches": ["a.h5"], "methods": ["zeroshot", "taskres"], "options": {"taskres.alpha": ["0.25", "0.5"]},
                "shots": [1, 4], "seeds": [1, 2]}
    for name in ("grid.yaml", "grid.toml"):
        spec = load_spec_file(tmp_path / name)
        assert {k: spec[k] for k in expected} == expected
    (tmp_path / "bad.yaml").write_text("method: zeroshot\n")
    with pytest.raises(OptionError, match="unknown keys method"):
        load_spec_file(tmp_path / "bad.yaml")
    # a folder or a missing path given as the grid file is named as what it is, with the kinds of file accepted
    (tmp_path / "folder.yaml").mkdir()
    for name, found in (("folder.yaml", "is a folder"), ("absent.yaml", "does not exist")):
        with pytest.raises(OptionError, match=f"grid file {tmp_path / name} {found}; give a .yaml, .yml or .toml"):
            load_spec_file(tmp_path / name)


def test_resume_skips_exactly_the_finished_runs(caches: dict[str, Path], tmp_path: Path) -> None:
    spec = GridSpec([str(caches["source"])], ["zeroshot", "clip-adapter"], [1, 2], [1, 2], options=QUICK)
    runs = expand(spec)
    interrupted = train_round(runs, tmp_path, Execution(), progress=False)
    for _ in range(3):  # the grid is interrupted after three runs
        next(interrupted)
    interrupted.close()
    summary = launch(spec, tmp_path, progress=False)
    assert (summary["runs"], summary["skipped"], summary["done"]) == (8, 3, 5)
    again = launch(spec, tmp_path, progress=False)
    assert (again["skipped"], again["done"]) == (8, 0)
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    # `alpha` means different things to CLIP-Adapter, TaskRes and Tip-Adapter: its column names the method (and so
    # does `epochs`' once a method declares an `epochs` of its own)
    expected = {"opt.clip-adapter.alpha", option_column("clip-adapter", "epochs"), "acc_all", "train_seconds"}
    assert expected <= set(rows[0])
    assert "opt.alpha" not in rows[0]


def test_an_option_added_at_its_before_value_keeps_the_keys_and_groups_of_earlier_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A LatHAdapter option added later with `option(..., before=V)`: runs at V keep the run key and tuning group id
    they had before it existed (pinned literals: LatHAdapter's default run, and its lr-tuning group, before the
    option); another value, or the option without `before`, gives new ones."""
    fingerprint = "0123456789abcdef"
    spec = GridSpec(["a.h5"], ["lathadapter"], [4], [1], tune={"lr": ["0.01", "0.1"]})

    def keys() -> tuple[str, str]:
        plain = RunConfig.create("lathadapter", 4, 1).key(fingerprint)
        candidate = expand(spec)[0]
        return plain, candidate.tune.group(candidate.config, fingerprint)

    before = ("ad0a4d6342f7", "64e1cfd79bc6")
    assert keys() == before
    lathadapter = method_class("lathadapter")

    @dataclasses.dataclass(frozen=True)
    class Added(lathadapter.Options):
        lambda_new: float = option(1.0, "a weight added later; 1 trains as before it existed", least=0, before=1.0)

    @dataclasses.dataclass(frozen=True)
    class AddedWithoutBefore(lathadapter.Options):
        lambda_new: float = option(1.0, "a weight added later", least=0)

    monkeypatch.setattr(lathadapter, "Options", Added)
    assert keys() == before
    assert RunConfig.create("lathadapter", 4, 1, overrides={"lambda_new": 0.5}).key(fingerprint) != before[0]
    monkeypatch.setattr(lathadapter, "Options", AddedWithoutBefore)
    assert keys()[0] != before[0] and keys()[1] != before[1]


def test_run_keys_hash_the_requested_options_and_config_json_holds_the_resolved(caches: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    # keys written before recipes were resolved ahead of the run: existing grids find their finished runs
    fingerprint = "0123456789abcdef"
    # (TaskRes's and Tip-Adapter-F's changed on purpose at stop 14: `base_text` replaced TaskRes's `raw_text`, as
    # the official base changed; Tip-Adapter(-F), GDA and LP++ took `base_text`, their official ImageNet classifier)
    assert RunConfig.create("taskres", 4, 1).key(fingerprint) == "9b1d7d6a375a"
    assert RunConfig.create("clip-adapter", 16, 2, classes="base", overrides={"epochs": 3}).key(fingerprint) == \
        "82cd8f944654"
    assert RunConfig.create("tip-adapter-f", 1, 3).key(fingerprint) == "ff8b0b417ae9"
    spec = GridSpec([str(caches["source"])], ["clip-adapter", "lathadapter"], [1], [1], options=QUICK)
    launch(spec, tmp_path, progress=False)
    with CacheReader(caches["source"]) as reader:
        fingerprint = reader.info().fingerprint
    for item in expand(spec):
        config = json.loads((tmp_path / "runs" / item.config.key(fingerprint) / "config.json").read_text())
        # the options as requested (what the key hashes): None for CLIP-Adapter's recipe lr, LatHAdapter's own 1e-2
        assert config["options"]["lr"] == item.config.options.lr == (None if item.config.method == "clip-adapter"
                                                                       else 1e-2)
        if item.config.method == "clip-adapter":  # CoOp's rn50_ep50 (1 shot) with Dassl's defaults; epochs set
            assert config["resolved"] == {"lr": 2e-3, "weight_decay": 5e-4, "eps": 1e-8, "batch_size": 32,
                                          "final_relu": True}
        else:
            assert config["resolved"] == {}
    assert launch(spec, tmp_path, progress=False)["skipped"] == 2


def test_the_results_table_reads_a_run_again_when_its_files_change(caches: dict[str, Path], tmp_path: Path) -> None:
    """Rewrites keep the rows of runs already read (a big grid's rewrites would be quadratic), yet a run directory
    whose files change, or that is removed, shows as it is now."""
    spec = GridSpec([str(caches["source"])], ["zeroshot"], [1, 2], [1], options={})
    launch(spec, tmp_path, progress=False)
    folders = sorted((tmp_path / "runs").iterdir())
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    metrics["accuracy"]["all"] = 12.5
    (folders[0] / "metrics.json").write_text(json.dumps(metrics))
    write_results(tmp_path)
    with (tmp_path / "results.csv").open() as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    assert float(rows[folders[0].name]["acc_all"]) == 12.5 and len(rows) == 2
    for path in folders[1].iterdir():
        path.unlink()
    folders[1].rmdir()
    write_results(tmp_path)
    with (tmp_path / "results.csv").open() as f:
        assert [r["key"] for r in csv.DictReader(f)] == [folders[0].name]


def test_an_option_that_methods_mean_differently_must_be_scoped(caches: dict[str, Path], tmp_path: Path) -> None:
    cache = [str(caches["source"])]
    with pytest.raises(OptionError, match=r"tip-adapter, lathadapter each have an option 'beta'.*tip-adapter\.beta"):
        expand(GridSpec(cache, ["tip-adapter", "lathadapter"], [1], [1], options={"beta": ["0.5"]}))
    # one method that has it, or a name every method inherits from the shared training options, needs no scope
    assert len(expand(GridSpec(cache, ["zeroshot", "lathadapter"], [1], [1], options={"beta": ["0.5", "1"]}))) == 3
    assert len(expand(GridSpec(cache, ["clip-adapter", "lathadapter"], [1], [1], options={"lr": ["0.01"]}))) == 2
    spec = GridSpec(cache, ["tip-adapter", "lathadapter"], [1], [1],
                    options={"tip-adapter.beta": ["2"], "lathadapter.beta": ["0.3"], "epochs": ["1"],
                             "min_steps": ["1"], "tip-adapter.search": ["false"]})
    runs = expand(spec)
    assert {(r.config.method, r.config.options.beta) for r in runs} == {("tip-adapter", 2.0), ("lathadapter", 0.3)}
    launch(spec, tmp_path, progress=False)
    with (tmp_path / "results.csv").open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert "opt.beta" not in rows["lathadapter"]
    assert float(rows["tip-adapter"]["opt.tip-adapter.beta"]) == 2.0
    assert rows["tip-adapter"]["opt.lathadapter.beta"] == ""
    assert float(rows["lathadapter"]["opt.lathadapter.beta"]) == 0.3


def test_report_cells_trace_back_to_the_results_table(caches: dict[str, Path], tmp_path: Path) -> None:
    spec = GridSpec([str(caches["source"]), str(caches["other"])], ["zeroshot", "lathadapter"], [1, 2], [1, 2],
                    options=QUICK)
    launch(spec, tmp_path, progress=False)
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    written = write_report(tmp_path, tmp_path / "report")  # the grid folder, as well as its results.csv
    with (tmp_path / "report" / "few_shot_source.csv").open() as f:
        table = {line["method"]: line for line in csv.DictReader(f)}
    values = [float(r["acc_all"]) for r in rows if r["dataset"] == "source" and r["method"] == "lathadapter"
              and r["shots"] == "2"]
    assert len(values) == 2
    mean, std = statistics.fmean(values), statistics.stdev(values)
    assert float(table["lathadapter"]["2 shots mean"]) == pytest.approx(mean)
    assert float(table["lathadapter"]["2 shots std"]) == pytest.approx(std)
    assert table["lathadapter"]["2 shots n"] == "2"
    assert "| lathadapter |" in written["markdown"]
    assert f"{mean:.2f} ± {std:.2f}" in written["markdown"]
    with (tmp_path / "report" / "few_shot_average.csv").open() as f:
        average = {line["method"]: line for line in csv.DictReader(f)}
    means = [statistics.fmean(float(r["acc_all"]) for r in rows if r["dataset"] == d and r["method"] == "zeroshot"
                              and r["shots"] == "1") for d in ("source", "other")]
    assert float(average["zeroshot"]["1 shot mean"]) == pytest.approx(statistics.fmean(means))
    assert average["zeroshot"]["1 shot std"] == ""  # an average over datasets has no spread over seeds
    names = {Path(p).name for p in written["plots"]}
    assert {"accuracy_vs_shots_source.png", "accuracy_vs_shots_other.png", "poincare_disk.png"} <= names
    for path in written["plots"]:
        with Image.open(path) as image:
            colours = image.convert("L").getextrema()
            assert image.size[0] > 200 and colours[0] < colours[1], f"{path} is blank"


def test_base_to_novel_protocol_reports_base_novel_and_hm(caches: dict[str, Path], tmp_path: Path) -> None:
    summary = run_protocol("base-to-novel", [str(caches["source"])], tmp_path, ["zeroshot", "tip-adapter"], [1],
                           progress=False)
    assert summary["runs"] == 2
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    data = CacheReader(caches["source"]).load(16, 1)
    novel = data.test_labels >= 4  # 8 classes: 0-3 base, 4-7 novel, relabelled from 0
    scores = data.test_features[novel] @ data.text_features[4:].t()
    expected = float((scores.argmax(1) == data.test_labels[novel] - 4).float().mean() * 100)
    assert float(rows["zeroshot"]["acc_novel"]) == pytest.approx(expected)
    assert rows["tip-adapter"]["acc_novel"] == "" and rows["tip-adapter"]["hm"] == ""
    b, n = float(rows["zeroshot"]["acc_base"]), float(rows["zeroshot"]["acc_novel"])
    assert float(rows["zeroshot"]["hm"]) == pytest.approx(2 * b * n / (b + n))
    written = write_report(tmp_path / "results.csv", tmp_path / "report")
    assert any(Path(p).name == "base_novel_source.png" for p in written["plots"])


def test_cross_dataset_scores_targets_with_their_own_class_names(caches: dict[str, Path], tmp_path: Path) -> None:
    run_protocol("cross-dataset", [str(caches["source"])], tmp_path, ["zeroshot", "linear-probe"], [1],
                 targets=[str(caches["other"])], options=QUICK, progress=False)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    by = {(r["method"], r["target"]): r for r in rows}
    target = CacheReader(caches["other"]).load_test()
    expected = float(((target.test_features @ target.text_features.t()).argmax(1) == target.test_labels)
                     .float().mean() * 100)
    assert float(by[("zeroshot", "other")]["acc_all"]) == pytest.approx(expected)
    assert by[("linear-probe", "other")]["acc_all"] == ""  # tied to the source classes: not applicable
    assert by[("linear-probe", "source")]["acc_all"] != ""


def test_domain_generalisation_maps_target_classes_by_wnid(caches: dict[str, Path], tmp_path: Path) -> None:
    run_protocol("domain", [str(caches["source"])], tmp_path, ["zeroshot", "tip-adapter"], [1],
                 targets=[str(caches["shifted"])], progress=False)
    rows = {(r["method"], r["target"]): r for r in csv.DictReader((tmp_path / "results.csv").open())}
    source = CacheReader(caches["source"]).load(16, 1)
    target = CacheReader(caches["shifted"]).load_test()
    columns = torch.tensor([6, 1, 3, 4])  # target class j is source class columns[j] (same wnid)
    scores = (target.test_features @ source.text_features.t())[:, columns]
    expected = float((scores.argmax(1) == target.test_labels).float().mean() * 100)
    assert float(rows[("zeroshot", "shifted")]["acc_all"]) == pytest.approx(expected)
    assert rows[("tip-adapter", "shifted")]["acc_all"] != ""  # same classes as the source: applicable


def test_cli_grid_and_report(caches: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["grid", "--cache", str(caches["source"]), "--method", "zeroshot,taskres", "--shots", "1,2",
            "--seeds", "1", "--set", "taskres.epochs=1", "--set", "taskres.min_steps=0", "--out", str(tmp_path / "g"),
            "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 runs (4 done now, 0 already done)" in result.output
    assert "4 runs (0 done now, 4 already done)" in runner.invoke(app, args).output
    result = runner.invoke(app, ["report", str(tmp_path / "g" / "results.csv")])
    assert result.exit_code == 0, result.output
    assert "Few-shot accuracy" in result.output
    bad = runner.invoke(app, ["grid", "--cache", str(caches["source"]), "--method", "zeroshot", "--shots", "x"])
    assert bad.exit_code == 2 and "--shots" in bad.output


def test_grid_file_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    cases = {
        "broken.yaml": ("caches: [a.h5\nmethods: zeroshot\n", r"broken\.yaml: invalid YAML at line \d+, column \d+"),
        "broken.toml": ('caches = ["a.h5"\nmethods = 1\n', r"broken\.toml: invalid TOML: .*line \d+, column \d+"),
        "list.yaml": ("- caches\n- methods\n", r"list\.yaml: the top level must be a mapping with keys caches, "
                      r"methods.*; got a list"),
        "scalar.yaml": ("zeroshot\n", r"scalar\.yaml: the top level must be a mapping .*; got a str"),
        "options.yaml": ("caches: [a.h5]\noptions: [lr]\n", r"options\.yaml: options must be a mapping"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(OptionError, match=message) as raised:
            load_spec_file(tmp_path / name)
        assert "\n" not in str(raised.value)
    # a cache given as --config by mistake (binary), and a grid file saved in Latin-1: named, not a bare codec error
    binary = {"cache.h5": (b"\x89HDF\r\n\x1a\n\x00\x00", r"cache\.h5: expected a \.yaml, \.yml or \.toml file"),
              "latin.yaml": ("caches: [caf\u00e9.h5]\n".encode("latin-1"),
                             r"latin\.yaml: line 1: byte 0xe9 at offset 12 is not UTF-8; save the file as UTF-8")}
    for name, (data, message) in binary.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OptionError, match=f"grid file .*{message}"):
            load_spec_file(tmp_path / name)
    # a byte-order mark (Windows editors write one) is not part of the file's first key, in TOML as in YAML (TOML's
    # parser refused it: "Invalid statement (at line 1, column 1)")
    for name, text in (("bom.toml", 'methods = ["zeroshot"]\nseeds = [0]\n'),
                       ("bom.yaml", "methods: [zeroshot]\nseeds: [0]\n")):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        axes = load_spec_file(tmp_path / name)
        assert (axes["methods"], axes["seeds"]) == (["zeroshot"], [0])


GRID_FILE_MISTAKES = [  # (the file after its caches line, the error after "error: grid file NAME: ")
    ("methods: [zeroshot]\nshots: [1.5, 2.7]\nseeds: [1]\n", "shots 1.5: expected integers, e.g. [1, 2, 4, 8, 16]"),
    ("methods: [zeroshot]\nshots: [true]\nseeds: [1]\n", "shots true: expected integers"),
    ("methods: [zeroshot]\nshots: [1]\nseeds: [1.9]\n", "seeds 1.9: expected integers, e.g. [1, 2, 3]"),
    ("methods: [zeroshot]\nshots: [1]\nseeds: [1, -1]\n", "seeds -1: a seed is an integer from 0 to 4294967295"),
    ("methods: [zeroshot]\nshots: [one]\nseeds: [1]\n", "shots 'one': expected integers"),
    ("methods: [zeroshot]\nshots: ['1,2']\nseeds: [1]\n", "shots '1,2': expected integers"),
    ("methods: [zeroshot]\nshots: []\nseeds: [1]\n", "shots is empty; give one or more values"),
    ("methods: []\nshots: [1]\nseeds: [1]\n", "methods is empty"),
    ("methods: [lathadapter]\nshots: [1]\nseeds: [1]\noptions:\n  lr: []\n", "options lr is empty"),
    ("methods: [lathadapter]\nshots: [1]\nseeds: [1]\ntune:\n  lr: []\n", "tune lr is empty"),
    ("methods: [zeroshot, zeroshot]\nshots: [1]\nseeds: [1]\n", "methods: 'zeroshot' is given twice"),
    ("methods: [zeroshot]\nshots: [1, '1']\nseeds: [1]\n", "shots: 1 is given twice; give each value once"),
    ("methods: [lathadapter]\nshots: [1]\nseeds: [1]\noptions:\n  lr: [0.1, 0.1]\n", "options lr: 0.1 is given "
     "twice"),
    ("methods: [lathadapter]\nshots: [1]\nseeds: [1]\noptions:\n  lr: [null]\n", "options lr: null is not a "
     "value"),
    ("methods: [lathadapter]\nshots: [1]\nseeds: [1]\noptions:\n  lr: [abc]\n", "options lr: option lr='abc' is "
     "not a valid float"),
    ("methods: [lathadapter]\nshots: [1]\nseeds: [1]\ntune:\n  curvature: [1, 50]\n", "tune curvature: option "
     "curvature=50.0 of lathadapter is not valid: it must be in [0.1, 10.0]"),
    ("methods: [lathadapter]\nshots: [1]\nseeds: [1]\noptions:\n  lathadaptr.lr: [0.1]\n",
     "options lathadaptr.lr: method 'lathadaptr' is not in the grid's methods (lathadapter)"),
    ("methods: [zeroshot]\nshots: [1]\nseeds: [1]\ntune:\n  lr: [0.1, 1]\n", "tune lr: zeroshot has no options"),
    ("methods: [zeroshot]\nshots: [1]\nseeds: [1]\ntune_preset: bogus\n", "tune_preset bogus: unknown preset; "
     "valid: lr, none"),
    # the word axes take the command line's choices (usage.md's grid file: all | base, coop | ensemble, last | val,
    # augmented | all), and methods the method names
    ("methods: [zeroshot]\nshots: [1]\nseeds: [1]\nclasses: [all, novel]\n", "classes 'novel': choose one of all, "
     "base"),
    ("methods: [zeroshot]\nshots: [1]\nseeds: [1]\ntext: [clip]\n", "text 'clip': choose one of coop, ensemble"),
    ("methods: [zeroshot]\nshots: [1]\nseeds: [1]\nselect: [best]\n", "select 'best': choose one of last, val"),
    ("methods: [zeroshot]\nshots: [1]\nseeds: [1]\ntrain_views: [1]\n", "train_views 1: choose one of augmented, "
     "all"),
    ("methods: [zeroshot, lathadaptr]\nshots: [1]\nseeds: [1]\n", "methods 'lathadaptr': choose one of zeroshot, "
     "linear-probe, clip-adapter"),
    ("methods: [zeroshot]\nshots: [1]\nseeds: [1]\ntune_score: val\n", "tune_score val: nothing is tuned; add "
     "a tune or tune_preset key to the grid file, or --tune"),
    ("methods: [lathadapter]\nshots: [1]\nseeds: [1]\ntune:\n  lr: [0.1, 1]\ntune_preset: lr\n",
     "tune_preset lr tunes lr of lathadapter already; drop grid file"),
]


@pytest.mark.parametrize(("text", "message"), GRID_FILE_MISTAKES, ids=[m.split(":")[0] for _, m in GRID_FILE_MISTAKES])
def test_grid_file_values_are_checked_as_the_command_line_checks_them(caches: dict[str, Path], tmp_path: Path,
                                                                       text: str, message: str) -> None:
    """Not integers, empty lists, values given twice, options of no method: refused with the file and key named,
    exit 2, before anything is written (the grid files of audit finding 1, 2, 7 and 8)."""
    config = tmp_path / "g.yaml"
    config.write_text(f"caches: [{caches['source']}]\n{text}")
    result = CliRunner().invoke(app, ["grid", "--config", str(config), "--out", str(tmp_path / "out"), "--device",
                                      "cpu"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: grid file {config}: {message}"), result.output
    assert not (tmp_path / "out").exists()  # no lock, no results.csv


# Each key of a grid file with a value it refuses when read (GRID_FILE_MISTAKES), the flag that replaces it, and the
# results column (or the line of the output) that shows the flag's value ran: (key: bad value, flags, column, value).
REPLACED_KEYS = [
    ("caches: []", ["--cache", "SOURCE"], "dataset", "source"),
    ("methods: [tip-adapter, lathadaptr]", ["--method", "tip-adapter"], "method", "tip-adapter"),
    ("shots: [1.5]", ["--shots", "2"], "shots", "2"),
    ("seeds: [-1]", ["--seeds", "2"], "seed", "2"),
    ("classes: [novel]", ["--classes", "base"], "classes", "base"),
    ("text: [clip]", ["--text", "ensemble"], "text", "ensemble"),
    ("select: [best]", ["--select", "val"], "select", "val"),
    ("train_views: [1]", ["--train-views", "all"], "train_views", "all"),
    ("options: {alpha: [1, 1]}", ["--set", "alpha=2"], "opt.tip-adapter.alpha", "2.0"),
    ("tune: {alpha: []}", ["--tune", "alpha=1,2"], "tune.names", "alpha"),
    ("tune_preset: bogus", ["--tune-preset", "none"], "method", "tip-adapter"),
    ("tune_score: bogus", ["--tune-score", "auto"], "method", "tip-adapter"),
    ("tune_set: bogus", ["--tune-set", "subset"], "method", "tip-adapter"),
]


@pytest.mark.parametrize(("line", "flags", "column", "value"), REPLACED_KEYS,
                         ids=[line.split(":")[0] for line, *_ in REPLACED_KEYS])
def test_a_grid_file_key_a_flag_replaces_is_not_read(caches: dict[str, Path], tmp_path: Path, line: str,
                                                     flags: list[str], column: str, value: str) -> None:
    """docs/usage.md: a flag replaces the file's key (an option or tuned axis name by name), which the grid then
    never reads, so its value is not checked either; the same file without the flag is refused, naming the key."""
    keys = {"caches": f"caches: [{caches['source']}]", "methods": "methods: [tip-adapter]", "shots": "shots: [1]",
            "seeds": "seeds: [1]"}
    key = line.split(":")[0]
    config = tmp_path / "g.yaml"
    config.write_text("\n".join([*(text for name, text in keys.items() if name != key), line]) + "\n")
    command = ["grid", "--config", str(config), "--device", "cpu"]
    refused = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 2 and f"error: grid file {config}: {key}" in refused.output, refused.output
    flags = [str(caches["source"]) if flag == "SOURCE" else flag for flag in flags]
    result = CliRunner().invoke(app, [*command, *flags, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output and "error:" not in result.output, result.output
    rows = read_rows(tmp_path / "out")
    assert rows and {row[column] for row in rows} == {value}, rows


def test_an_option_given_unscoped_and_scoped_for_one_method_is_refused(caches: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """A grid file's `lr` and `--set lathadapter.lr` (or two flags) gave one method its option twice: it ran at one
    of the two values, chosen by the order of the method's name against the option's (LatHAdapter took the unscoped
    lr, TaskRes its scoped one), the other dropped without a word. Refused, naming both, as `--tune` refuses it."""
    config = tmp_path / "g.yaml"
    config.write_text(f"caches: [{caches['source']}]\nmethods: [lathadapter, taskres]\nshots: [1]\nseeds: [1]\n"
                      "options:\n  lr: [0.001]\n")
    for flags, message in (
            (["--config", str(config), "--set", "lathadapter.lr=0.01"],
             f"grid file {config}: options lr and --set lathadapter.lr both set lr of lathadapter; give it once"),
            (["--config", str(config), "--method", "taskres", "--set", "taskres.lr=0.01,0.1"],
             f"grid file {config}: options lr and --set taskres.lr both set lr of taskres; give it once"),
            (["--cache", str(caches["source"]), "--method", "zeroshot,taskres", "--set", "taskres.lr=0.01",
              "--set", "lr=0.001"], "--set taskres.lr and --set lr both set lr of taskres; give it once")):
        result = CliRunner().invoke(app, ["grid", *flags, "--out", str(tmp_path / "out"), "--device", "cpu"])
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == f"error: {message}", result.output
        assert not (tmp_path / "out").exists()
    # scoped to different methods, or to one method alone, each option is given once: the grid runs
    spec = GridSpec([str(caches["source"])], ["lathadapter", "taskres"], [1], [1],
                    options={"lathadapter.lr": ["0.01"], "taskres.lr": ["0.1"]})
    assert [(run.config.method, run.config.options.lr) for run in expand(spec)] == [("lathadapter", 0.01),
                                                                                    ("taskres", 0.1)]


def test_grid_file_values_mean_what_they_mean_on_the_command_line(tmp_path: Path) -> None:
    """`attr_proto: [1]` is true as `--set attr_proto=1` is; numbers parse to the same typed options; a command-line
    axis of the same name overrides the file's, and its errors then name the option, not the file."""
    (tmp_path / "g.yaml").write_text("caches: [a.h5]\nmethods: [lathadapter]\nshots: [1]\nseeds: [1]\noptions:\n"
                                     "  attr_proto: [1, false]\n  lr: [0.001, 1]\ntune_preset: none\n")
    axes = load_spec_file(tmp_path / "g.yaml")
    assert axes["tune_preset"] is None  # `none`: no preset, as `demo --tune-preset none`
    from_file = expand(GridSpec(**axes))
    from_cli = expand(GridSpec(["a.h5"], ["lathadapter"], [1], [1], options=parse_assignments(
        ["attr_proto=1,false", "lr=0.001,1"])))
    assert [r.config for r in from_file] == [r.config for r in from_cli]
    assert {(r.config.options.attr_proto, r.config.options.lr) for r in from_file} == {
        (True, 0.001), (True, 1.0), (False, 0.001), (False, 1.0)}
    # a single value is a list of one (docs/usage.md), as `--shots 4` is
    (tmp_path / "one.yaml").write_text("caches: a.h5\nmethods: lathadapter\nshots: 4\nseeds: 2\noptions:\n"
                                       "  lr: 0.001\n")
    assert [(r.config.shots, r.config.seed, r.config.options.lr) for r in expand(GridSpec(
        **load_spec_file(tmp_path / "one.yaml")))] == [(4, 2, 0.001)]
    from lathadapter.experiments.spec import override

    axes = load_spec_file(tmp_path / "g.yaml")
    override(axes, "options", {"attr_proto": ["1"], "lathadaptr.lr": ["0.1"]})
    with pytest.raises(OptionError, match=r"^--set lathadaptr\.lr: method 'lathadaptr' is not in the grid"):
        expand(GridSpec(**axes))


def test_one_run_given_twice_is_refused_before_anything_is_written(caches: dict[str, Path], tmp_path: Path) -> None:
    """A cache given twice (under two spellings), or two values that parse to one, would be one run listed twice,
    its copy counted as left to another process."""
    source = str(caches["source"])
    spellings = GridSpec([source, f"{Path(source).parent}/./{Path(source).name}"], ["zeroshot"], [1], [1])
    with pytest.raises(OptionError, match="the grid holds one run twice .*zeroshot, 1-shot seed 1"):
        launch(spellings, tmp_path / "g", progress=False)
    same = GridSpec([source], ["lathadapter"], [1], [1], options={"lr": ["0.1", "0.10"]})
    with pytest.raises(OptionError, match="two values mean the same"):
        launch(same, tmp_path / "g", progress=False)
    with pytest.raises(OptionError, match="the grid has no runs: its methods is empty"):
        launch(GridSpec([source], [], [1], [1]), tmp_path / "g", progress=False)
    assert not (tmp_path / "g").exists()


def test_epochs_and_search_columns_are_scoped_in_every_grid(caches: dict[str, Path], tmp_path: Path) -> None:
    """A results column's name does not depend on the grid's methods: `epochs`, which LP++ declares on its own, is
    `opt.METHOD.epochs` even in a grid without LP++ (where `--set epochs=` applies unscoped), as `search` is; the
    shared training options are `opt.NAME` (docs/architecture.md, docs/usage.md)."""
    assert option_column("lathadapter", "epochs") == "opt.lathadapter.epochs"
    assert option_column("tip-adapter", "search") == "opt.tip-adapter.search"
    assert option_column("lathadapter", "lr") == option_column("taskres", "lr") == "opt.lr"
    result = CliRunner().invoke(app, ["grid", "--cache", str(caches["source"]), "--method", "lathadapter,taskres",
                                      "--shots", "1", "--seeds", "1", "--set", "epochs=1", "--set", "min_steps=0",
                                      "--device", "cpu", "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    with (tmp_path / "g" / "results.csv").open() as f:
        columns = next(csv.reader(f))
    assert {"opt.lathadapter.epochs", "opt.taskres.epochs", "opt.min_steps"} <= set(columns)
    assert "opt.epochs" not in columns


def test_a_grid_checks_its_caches_before_the_first_run(caches: dict[str, Path], tmp_path: Path) -> None:
    source, other, absent = str(caches["source"]), str(caches["other"]), str(tmp_path / "absent.h5")
    # the caches hold shots 1, 2, 16 and seeds 1, 2
    spec = GridSpec([source, other, absent], ["zeroshot"], [1, 4], [1, 3])
    with pytest.raises(CacheError) as raised:
        launch(spec, tmp_path / "g", progress=False)
    lines = str(raised.value).splitlines()
    missing = "shots=1 seed=3, shots=4 seed=1, shots=4 seed=3"
    assert any(line.strip().startswith(f"{source} holds no few-shot subset for {missing}") for line in lines)
    assert any(line.strip().startswith(f"{other} holds no few-shot subset for {missing}") for line in lines)
    assert any(absent in line and "does not exist" in line for line in lines)
    assert not (tmp_path / "g").exists()  # nothing ran
    common = dict(dim=16, views=2, shots=(1,), seeds=(1,), train_per_class=4, test_per_class=2)
    one = write_synthetic_cache(tmp_path / "one.h5", num_classes=1, name="one", **common)
    with pytest.raises(CacheError, match="classes=base needs at least 2 classes; it has 1"):
        launch(GridSpec([str(one)], ["zeroshot"], [1], [1], ["base"]), tmp_path / "g", progress=False)
    # selecting on the val set of a cache without one is a warning of the trainer, not an error of the grid
    no_val = write_synthetic_cache(tmp_path / "no_val.h5", num_classes=4, val_per_class=0, name="no_val", **common)
    with pytest.warns(UserWarning, match="no few-shot val subset"):
        summary = launch(GridSpec([str(no_val)], ["clip-adapter"], [1], [1], select=["val"], options=QUICK),
                           tmp_path / "g", progress=False)
    assert summary["done"] == 1


def test_results_table_has_what_post_training_searches_chose(caches: dict[str, Path], tmp_path: Path) -> None:
    launch(GridSpec([str(caches["source"])], ["zeroshot", "tip-adapter"], [2], [1]), tmp_path, progress=False)
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    chosen = json.loads((tmp_path / "runs" / rows["tip-adapter"]["key"] / "metrics.json").read_text())["chosen"]
    assert {"alpha", "beta", "val_accuracy"} <= set(chosen)
    for name in ("alpha", "beta", "val_accuracy"):
        assert float(rows["tip-adapter"][f"chosen.{name}"]) == pytest.approx(chosen[name])
        assert rows["zeroshot"][f"chosen.{name}"] == ""
    # the option columns stay (empty where an option is left to the method's recipe)
    config = json.loads((tmp_path / "runs" / rows["tip-adapter"]["key"] / "config.json").read_text())
    assert rows["tip-adapter"]["opt.tip-adapter.alpha"] == ("" if config["options"]["alpha"] is None
                                                            else str(config["options"]["alpha"]))


def test_grid_progress_goes_to_stderr(caches: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    launch(GridSpec([str(caches["source"])], ["zeroshot"], [1], [1]), tmp_path, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "grid" in captured.err


GRID_PROCESS = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from lathadapter.experiments.launch import launch
    from lathadapter.experiments.spec import GridSpec

    cache, out, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    (ready / sys.argv[4]).touch()
    deadline = time.monotonic() + 120
    while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:  # start together
        time.sleep(0.01)
    spec = GridSpec([cache], ["clip-adapter", "lathadapter"], [1, 2], [1, 2],
                    options={"epochs": ["1"], "min_steps": ["0"]})
    print(json.dumps(launch(spec, out, progress=False)))
""")


def test_two_grid_processes_share_one_output_folder(caches: dict[str, Path], tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ready.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", GRID_PROCESS, str(caches["source"]), str(tmp_path / "g"),
                                   str(ready), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in ("a", "b")]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    # each of the 8 runs was trained by exactly one process; the other skipped it (finished, or running elsewhere)
    assert sum(s["done"] for s in summaries) == 8
    assert all(s["done"] + s["skipped"] + s["elsewhere"] == 8 for s in summaries)
    rows = list(csv.DictReader((tmp_path / "g" / "results.csv").open()))
    finished = {p.name for p in (tmp_path / "g" / "runs").iterdir() if (p / "metrics.json").is_file()}
    assert len(finished) == 8
    assert sorted(r["key"] for r in rows) == sorted(finished)  # every run, exactly once
    assert not list((tmp_path / "g" / "runs").glob("*.lock"))  # a finished run leaves no lock file
