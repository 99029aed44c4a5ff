"""`lathadapter.load`: a finished run directory (fit's, a grid's, a protocol's) back as the model that was scored,
per-class accuracy and the confusion matrix against restatements, `lathadapter inspect`, and the refusals."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lathadapter
from lathadapter.adapter.catalog import method_class, method_names, option_names
from lathadapter.adapter.methods.base import NotApplicable
from lathadapter.adapter.options import OptionError, StateError
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.launch import launch
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.spec import GridSpec

FAST = {"epochs": 2, "min_steps": 0}


def fast(method: str) -> dict[str, int]:
    """Two epochs for the methods that train by epochs; nothing for the others."""
    return {k: v for k, v in FAST.items() if k in option_names(method)}


def fit(cache: Path, method: str, out: Path, classes: str = "all", shots: int = 4) -> dict:
    return lathadapter.fit(cache, method, shots, 1, classes=classes, out=out, device="cpu", **fast(method))


def stored_test(cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The cache's test features and labels and its class names, read apart from the loaded run."""
    with CacheReader(cache) as reader:
        data = reader.load(4, 1)
    return data.test_features.numpy(), data.test_labels.numpy(), data.class_names


def per_label(predicted: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Right predictions and images of each label, counted in numpy."""
    counts = np.bincount(labels, minlength=classes)
    correct = np.bincount(labels[predicted == labels], minlength=classes)
    return correct, counts


@pytest.mark.parametrize("method", method_names())
def test_every_method_loads_back_as_it_was_scored(baseline_cache: Path, tmp_path: Path, method: str) -> None:
    metrics = fit(baseline_cache, method, tmp_path)
    run = lathadapter.load(metrics["run_dir"])
    features, labels, names = stored_test(baseline_cache)
    assert run.config.method == method and not run.method.training
    assert run.class_names == names and run.parts == ("all",)
    assert run.accuracy() == metrics["accuracy"]["all"]  # the evaluation's own sum: equal, not close
    logits = run.logits(torch.from_numpy(features)).numpy()
    predicted = logits.argmax(axis=1)
    assert 100.0 * np.mean(predicted == labels) == pytest.approx(metrics["accuracy"]["all"], abs=1e-9)
    assert np.array_equal(run.predict(torch.from_numpy(features)).numpy(), predicted)
    correct, counts = per_label(predicted, labels, len(names))
    classes = run.per_class_accuracy()
    assert [(c.label, c.name, c.correct, c.count) for c in classes] == [
        (i, names[i], int(correct[i]), int(counts[i])) for i in range(len(names))]
    mean = sum(c.accuracy * c.count for c in classes) / sum(c.count for c in classes)
    assert mean == pytest.approx(metrics["accuracy"]["all"], abs=1e-9)
    for name in getattr(method_class(method), "searched", ()):  # chosen on val after training, restored by load
        assert getattr(run.method, name) == metrics["chosen"][name], name


def test_the_confusion_matrix_counts_true_rows_against_predicted_columns(baseline_cache: Path, tmp_path: Path) -> None:
    run = lathadapter.load(fit(baseline_cache, "clip-adapter", tmp_path)["run_dir"])
    features, labels, names = stored_test(baseline_cache)
    predicted = run.logits(torch.from_numpy(features)).numpy().argmax(axis=1)
    oracle = np.zeros((len(names), len(names)), dtype=np.int64)
    for true, guess in zip(labels, predicted, strict=True):
        oracle[true, guess] += 1
    assert np.array_equal(run.confusion().numpy(), oracle)
    assert oracle.sum() - np.trace(oracle) > 0  # the run makes mistakes: off-diagonal cells are tested


@pytest.mark.parametrize("method", ["lathadapter", "tip-adapter"])
def test_a_base_to_novel_run_is_scored_per_class_as_the_run_evaluated_it(baseline_cache: Path, tmp_path: Path,
                                                                         method: str) -> None:
    metrics = fit(baseline_cache, method, tmp_path, classes="base")
    run = lathadapter.load(metrics["run_dir"])
    features, labels, names = stored_test(baseline_cache)
    base, novel = names[:math.ceil(len(names) / 2)], names[math.ceil(len(names) / 2):]  # CoOp's rule: sorted, halves
    assert run.parts == ("base", "novel") and run.class_names == base
    assert {part: run.accuracy(part) for part in run.parts} == metrics["accuracy"]
    keep = labels < len(base)
    predicted = run.predict(torch.from_numpy(features[keep])).numpy()
    correct, counts = per_label(predicted, labels[keep], len(base))
    assert [(c.correct, c.count) for c in run.per_class_accuracy("base")] == list(zip(correct, counts, strict=True))
    if method == "tip-adapter":  # it cannot score unseen classes: n/a, as metrics.json says
        assert metrics["accuracy"]["novel"] is None
        with pytest.raises(NotApplicable):
            run.per_class_accuracy("novel")
        return
    novel_labels = labels[~keep] - len(base)
    scores = run.logits(torch.from_numpy(features[~keep]), run.novel.text_features).numpy()
    correct, counts = per_label(scores.argmax(axis=1), novel_labels, len(novel))
    rows = run.per_class_accuracy("novel")
    assert [c.name for c in rows] == novel and [(c.correct, c.count) for c in rows] == list(zip(correct, counts,
                                                                                                 strict=True))
    assert 100.0 * correct.sum() / counts.sum() == pytest.approx(metrics["accuracy"]["novel"], abs=1e-9)
    with pytest.raises(OptionError, match="scored on base, novel"):
        run.per_class_accuracy("all")


def test_grid_run_directories_load_tuned_candidates_included(baseline_cache: Path, tmp_path: Path) -> None:
    spec = GridSpec([str(baseline_cache)], ["zeroshot", "clip-adapter"], [2], [1], options={"epochs": ["2"]},
                    tune={"clip-adapter.lr": ["0.001", "0.01"]})
    launch(spec, tmp_path, progress=False)
    folders = sorted(d for d in (tmp_path / "runs").iterdir() if d.is_dir())
    assert len(folders) == 3  # zeroshot, and two clip-adapter candidates (keys salted by their tuning group)
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        run = lathadapter.load(folder)
        assert run.accuracy() == metrics["accuracy"]["all"], folder.name
        if run.config.method == "clip-adapter":
            assert run.config.options.lr == metrics["tune"]["values"]["lr"]
            assert run.config.key(run.record["cache_fingerprint"]) != folder.name  # salted: not recomputed


def test_a_transfer_run_loads_its_source_model(baseline_cache: Path, tmp_path: Path) -> None:
    target = write_synthetic_cache(tmp_path / "target.h5", num_classes=6, dim=16, views=3, shots=(2,), seeds=(1,),
                                   name="target")
    run_protocol("cross-dataset", [str(baseline_cache)], tmp_path / "out", ["clip-adapter"], [1],
                 targets=[str(target)], shots=[2], options={"epochs": ["2"]}, progress=False)
    (folder,) = [d for d in (tmp_path / "out" / "runs").iterdir() if d.is_dir()]
    metrics = json.loads((folder / "metrics.json").read_text())
    run = lathadapter.load(folder)
    assert run.accuracy() == metrics["accuracy"]["all"]
    with CacheReader(target) as reader:
        data = reader.load_test()
    scores = run.logits(data.test_features, data.text_features)  # the target's classes, as the protocol scored them
    assert 100.0 * float((scores.argmax(1) == data.test_labels).double().mean()) == pytest.approx(
        metrics["targets"]["target"], abs=1e-9)


def test_a_moved_cache_is_given_as_cache_and_another_cache_is_refused(baseline_cache: Path, tmp_path: Path) -> None:
    trained_on = tmp_path / "trained_on.h5"
    shutil.copy(baseline_cache, trained_on)
    metrics = fit(trained_on, "clip-adapter", tmp_path / "runs")
    moved = trained_on.rename(tmp_path / "moved.h5")
    with pytest.raises(OptionError, match=f"trained on cache {trained_on}, which is not a file; pass the moved file "
                                          r"as cache= \(--cache PATH\)"):
        lathadapter.load(metrics["run_dir"])
    with pytest.raises(OptionError) as error:  # a wrong --cache is named as given, not as the run's own cache
        lathadapter.load(metrics["run_dir"], cache=tmp_path / "typo.h5")
    assert str(error.value) == f"cache {tmp_path / 'typo.h5'} (given for run {metrics['run_dir']}) is not a file"
    assert lathadapter.load(metrics["run_dir"], cache=moved).accuracy() == metrics["accuracy"]["all"]
    other = write_synthetic_cache(tmp_path / "other.h5", num_classes=8, dim=16, views=3, shots=(4,), seeds=(1,),
                                  seed=7)
    fingerprint = CacheReader(other).fingerprint
    with pytest.raises(OptionError) as error:
        lathadapter.load(metrics["run_dir"], cache=other)
    assert str(error.value) == (f"cache {other} (fingerprint {fingerprint}) is not the cache run {metrics['run_dir']} "
                                f"was trained on (fingerprint {CacheReader(moved).fingerprint}, {trained_on})")


def test_a_relative_cache_path_is_named_as_read_from_the_current_folder(baseline_cache: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "caches").mkdir()
    shutil.copy(baseline_cache, tmp_path / "caches" / "c.h5")
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / fit(Path("caches/c.h5"), "zeroshot", Path("runs"))["run_dir"]
    monkeypatch.chdir(tmp_path / "runs")  # config.json's "caches/c.h5" is not a file from here
    with pytest.raises(OptionError) as error:
        lathadapter.load(run_dir)
    assert str(error.value) == (f"run {run_dir} was trained on cache caches/c.h5, which is not a file from this folder "
                                "(config.json records the path as given, relative to the folder the run was trained "
                                "from); pass the moved file as cache= (--cache PATH)")


def test_a_run_saved_before_searched_values_were_in_its_weights_takes_them_from_chosen(baseline_cache: Path,
                                                                                      tmp_path: Path) -> None:
    metrics = fit(baseline_cache, "ape", tmp_path)
    folder = Path(metrics["run_dir"])
    weights = torch.load(folder / "weights.pt")
    assert weights["_extra_state"].tolist() == [metrics["chosen"][n] for n in ("alpha", "beta", "gamma")]
    del weights["_extra_state"]  # as weights.pt was written before stop 22
    torch.save(weights, folder / "weights.pt")
    run = lathadapter.load(folder)
    assert (run.method.alpha, run.method.beta, run.method.gamma) == tuple(
        metrics["chosen"][n] for n in ("alpha", "beta", "gamma"))
    assert run.accuracy() == metrics["accuracy"]["all"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, baseline_cache: Path) -> Path:
    """A finished zero-shot run directory, copied by each test that spoils it."""
    out = tmp_path_factory.mktemp("finished")
    return Path(lathadapter.fit(baseline_cache, "zeroshot", 2, 1, out=out, device="cpu")["run_dir"])


def spoiled(finished: Path, tmp_path: Path) -> Path:
    folder = tmp_path / finished.name
    shutil.copytree(finished, folder)
    return folder


@pytest.mark.parametrize("missing", ["metrics.json", "weights.pt", "config.json"])
def test_an_unfinished_run_is_refused_naming_what_it_lacks(finished: Path, tmp_path: Path, missing: str) -> None:
    folder = spoiled(finished, tmp_path)
    (folder / missing).unlink()
    with pytest.raises(OptionError, match=f"{folder} is not a finished run directory: it has no {missing} "):
        lathadapter.load(folder)


def test_a_diverged_run_and_a_run_keyed_otherwise_are_refused(finished: Path, tmp_path: Path) -> None:
    folder = spoiled(finished, tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "diverged": "loss is NaN at step 3"}))
    with pytest.raises(OptionError, match=r"diverged \(loss is NaN at step 3\): it has no trained model"):
        lathadapter.load(folder)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "text": "ensemble"}))  # as if read otherwise
    with pytest.raises(StateError) as error:
        lathadapter.load(folder)
    assert f"run {folder} has key {config['key']}, but its config.json read by this version keys as " in str(
        error.value)
    assert str(error.value).split("keys as ")[1][:12] not in ("", config["key"])
    (folder / "config.json").write_text(json.dumps({**config, "options": {"retired": 1}}))
    with pytest.raises(StateError, match="cannot read: unknown option"):
        lathadapter.load(folder)


def test_inspect_prints_the_accuracy_the_extremes_and_writes_the_csv(baseline_cache: Path, tmp_path: Path) -> None:
    metrics = fit(baseline_cache, "clip-adapter", tmp_path)
    csv_path = tmp_path / "per_class.csv"
    result = CliRunner().invoke(app, ["inspect", metrics["run_dir"], "--out", str(csv_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # ECE restated: 15 equal-width bins of the top-1 softmax probability, |right − confidence| summed over bins / n
    features, labels, names = stored_test(baseline_cache)
    logits = lathadapter.load(metrics["run_dir"]).logits(torch.from_numpy(features)).double()
    confidence, predicted = torch.softmax(logits, dim=-1).max(dim=-1)
    bins = np.minimum(np.ceil(confidence.numpy() * 15).astype(int) - 1, 14)
    right = predicted.numpy() == labels
    ece = 100 * sum(abs(right[bins == b].sum() - confidence.numpy()[bins == b].sum()) for b in range(15)) / len(labels)
    line = next(x for x in result.output.splitlines() if x.startswith("all: "))
    assert line.startswith(f"all: {metrics['accuracy']['all']:.2f}% (as metrics.json), ECE ")
    assert float(line.split("ECE ")[1].split()[0].rstrip("%")) == pytest.approx(ece, abs=0.006)
    assert "(metrics.json:" not in line  # the recomputed ECE equals the recorded one
    assert "  worst: " in result.output and "  best: " in result.output
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    predicted = lathadapter.load(metrics["run_dir"]).predict(torch.from_numpy(features)).numpy()
    correct, counts = per_label(predicted, labels, len(names))
    assert [(r["classes"], r["class"], int(r["correct"]), int(r["count"])) for r in rows] == [
        ("all", names[i], int(correct[i]), int(counts[i])) for i in range(len(names))]
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(list(100.0 * correct / counts), abs=1e-4)


def test_inspect_says_when_a_run_saved_before_ece_has_none_recorded(finished: Path, tmp_path: Path) -> None:
    folder = spoiled(finished, tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items()
                                                     if k not in ("ece", "reliability")}))
    result = CliRunner().invoke(app, ["inspect", str(folder), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("all: "))
    assert line == (f"all: {metrics['accuracy']['all']:.2f}% (as metrics.json), ECE {metrics['ece']['all']:.2f}% "
                    "(metrics.json: none, saved before ECE)")


def test_inspect_errors_are_one_line_with_exit_code_1(finished: Path, tmp_path: Path, baseline_cache: Path) -> None:
    # a run or cache that is missing, unfinished, corrupt or another is a runtime failure (docs/usage.md: exit 1, as
    # `fit` with a missing cache and `report` of a folder without runs), not a usage mistake
    other = write_synthetic_cache(tmp_path / "other.h5", num_classes=8, dim=16, views=3, shots=(2,), seeds=(1,),
                                  seed=7)
    folder = spoiled(finished, tmp_path)
    (folder / "weights.pt").unlink()
    corrupt, diverged = spoiled(finished, tmp_path / "corrupt"), spoiled(finished, tmp_path / "diverged")
    (corrupt / "metrics.json").write_text("{")
    metrics = json.loads((diverged / "metrics.json").read_text())
    (diverged / "metrics.json").write_text(json.dumps({**metrics, "diverged": "loss is NaN at step 3"}))
    for args, fragment in ((["inspect", str(finished), "--cache", str(other)], f"is not the cache run {finished}"),
                           (["inspect", str(finished), "--cache", str(tmp_path / "typo.h5")], "is not a file"),
                           (["inspect", str(folder)], "it has no weights.pt"),
                           (["inspect", str(corrupt)], "unreadable run files"),
                           (["inspect", str(diverged)], "it has no trained model to load"),
                           (["inspect", str(tmp_path / "nowhere")], "does not exist")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output


def test_inspect_plots_that_fail_to_score_leave_no_folder_behind(finished: Path, tmp_path: Path) -> None:
    """A run whose loaded model scores NaN (weights.pt filled with NaN) fails in one line; the --plots folders it
    made for the plots (two levels here) are removed again, not left empty; a folder that was there stays."""
    folder = spoiled(finished, tmp_path)
    weights = torch.load(folder / "weights.pt")
    torch.save({k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
               folder / "weights.pt")
    there = tmp_path / "there"
    there.mkdir()
    for plots, kept in ((tmp_path / "new" / "plots", False), (there, True)):
        result = CliRunner().invoke(app, ["inspect", str(folder), "--plots", str(plots), "--device", "cpu"])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.startswith(("error", "Traceback"))]
        assert len(lines) == 1 and "gives NaN or infinite scores on all, where metrics.json records" in lines[0] \
            and "weights.pt (or its cache) is not what the run saved" in lines[0], result.output
        assert (tmp_path / "new").exists() is False and plots.is_dir() is kept


def test_inspect_out_overwrites_no_file_but_its_own_csv(finished: Path, tmp_path: Path) -> None:
    """`--out` naming the run's own metrics.json (or a grid's results.csv) overwrote it with the per-class CSV: the
    run was lost. An existing file that is not a per-class CSV is refused in one line and left as it was; a CSV the
    command wrote before is written again."""
    folder = spoiled(finished, tmp_path)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    result = CliRunner().invoke(app, ["inspect", str(folder), "--out", str(folder / "metrics.json")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --out {folder / 'metrics.json'}: the file exists"), lines
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    again = tmp_path / "per_class.csv"
    for _ in range(2):
        result = CliRunner().invoke(app, ["inspect", str(folder), "--out", str(again)])
        assert result.exit_code == 0, result.output
        assert again.read_text().startswith("classes,label,class,correct,count,accuracy,target\n")


def test_inspect_plots_the_reliability_and_each_sets_confusion_matrix(baseline_cache: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.axes

    shown: list[np.ndarray] = []  # what each confusion heat map draws
    imshow = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda self, data, *args, **kwargs: (shown.append(np.asarray(data)),
                                                             imshow(self, data, *args, **kwargs))[1])
    metrics = fit(baseline_cache, "clip-adapter", tmp_path, classes="base")
    plots = tmp_path / "plots"
    result = CliRunner().invoke(app, ["inspect", metrics["run_dir"], "--plots", str(plots), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    names = ["reliability.png", "confusion_base.png", "confusion_novel.png"]
    assert sorted(p.name for p in plots.iterdir()) == sorted([*names, ".inspect_plots.json"])
    assert all((plots / name).read_bytes().startswith(b"\x89PNG") for name in names)
    assert f"plots: {', '.join(str(plots / name) for name in names)}" in result.output
    # restated: base classes are the first ceil(C/2) labels, novel the rest relabelled from 0; each row of a heat map
    # is the share (%) of that true class's test images predicted as each class, counted here in numpy
    features, labels, _ = stored_test(baseline_cache)
    run = lathadapter.load(metrics["run_dir"])
    half = math.ceil(8 / 2)
    for drawn, novel in zip(shown, (False, True), strict=True):
        keep = labels >= half if novel else labels < half
        truth = labels[keep] - (half if novel else 0)
        text = run.novel.text_features if novel else None
        predicted = run.predict(torch.from_numpy(features[keep]), text).numpy()
        counts = np.zeros((half, half))
        np.add.at(counts, (truth, predicted), 1)
        assert drawn == pytest.approx(100 * counts / counts.sum(axis=1, keepdims=True))
    # a LatHAdapter run also gets its Poincaré disk, as a report draws it (its lifted points, points.pt)
    lathadapter_run = fit(baseline_cache, "lathadapter", tmp_path / "hyperbolic")["run_dir"]
    result = CliRunner().invoke(app, ["inspect", lathadapter_run, "--plots", str(tmp_path / "disk"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == [".inspect_plots.json", "confusion_all.png",
                                                                     "poincare_disk.png", "reliability.png"]
    # another run's plots into that folder: the disk of the LatHAdapter run and its `all` matrix, which would look
    # like this run's, are removed (the folder's list of what the last inspect drew); a file of the user's stays
    (tmp_path / "disk" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["inspect", metrics["run_dir"], "--plots", str(tmp_path / "disk")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == sorted([*names, ".inspect_plots.json",
                                                                            "notes.txt"])
    assert json.loads((tmp_path / "disk" / ".inspect_plots.json").read_text()) == sorted(names)
    # a --plots path that cannot be a folder names the option, as --out does
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = CliRunner().invoke(app, ["inspect", metrics["run_dir"], "--plots", str(blocked)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: --plots {blocked}: cannot write there: a part of the path is a file, "
                                     "not a folder; choose another --plots")


def test_confusion_shares_are_each_true_class_split_in_percent() -> None:
    from lathadapter.experiments.plots import confusion_shares

    matrix = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    assert confusion_shares(matrix).tolist() == [[75.0, 25.0, 0.0], [0.0, 0.0, 0.0], [25.0, 25.0, 50.0]]


def test_inspect_into_a_closed_pipe_ends_quietly(finished: Path) -> None:
    # `lathadapter inspect RUN | head -1`: the reader closes the pipe; the command ends without an error line
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "lathadapter.cli", "inspect", str(finished), "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()  # before the first line is written: every write fails with EPIPE
    _, stderr = process.communicate(timeout=120)
    assert stderr.decode() == "" and process.returncode == 1


def test_python_api_mistakes_of_load_name_the_argument(finished: Path) -> None:
    """`load(3)` and `load(run, cache=5)` failed in pathlib without naming the argument; `targets="dtd.h5"`, one path
    where a list goes, was read letter by letter (`target cache d ... is not a file`); features of another width
    failed in a matrix product. Each is an `OptionError` naming the argument and what is valid."""
    for arguments, message in (({"run_dir": 3}, r"^run_dir=3: expected a path"),
                               ({"run_dir": finished, "cache": 5}, r"^cache=5: expected a path"),
                               ({"run_dir": finished, "targets": "dtd.h5"},
                                r"^targets='dtd\.h5': expected a list of target cache paths"),
                               ({"run_dir": finished, "targets": [finished / "x.h5", 2]}, r"^targets=\["),
                               ({"run_dir": finished, "device": 0}, r"^device=0: expected 'cpu', 'cuda'")):
        with pytest.raises(OptionError, match=message):
            lathadapter.load(**arguments)
    run = lathadapter.load(finished, device="cpu")
    dim = run.data.text_features.shape[1]
    features = torch.nn.functional.normalize(torch.randn(5, dim), dim=-1)
    expected = 100 * features @ run.data.text_features.cpu().t()  # zero-shot: CLIP's logit scale times the cosine
    assert torch.allclose(run.logits(features.tolist()), expected, atol=1e-4)
    for shape in ((5, dim + 1), (dim,)):
        with pytest.raises(OptionError, match=rf"^features of shape \[{', '.join(map(str, shape))}\]: expected "
                                              rf"\[N, {dim}\]"):
            run.logits(torch.zeros(shape))
