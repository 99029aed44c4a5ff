"""`inspect --target` and `load(..., targets=[...])` of a transfer run: each target cache is checked against the
fingerprint its metrics.json records and scored as the protocol scored it. The oracle is metrics.json itself, written
when the run trained, and each target's test set read apart from the loaded run."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lathadapter
from lathadapter.adapter.options import StateError
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments import plots
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.report import write_report

COMMON = dict(dim=16, views=2, shots=(4,), seeds=(1,), train_per_class=6, val_per_class=2, test_per_class=5, seed=1)
KEEP = [9, 2, 5, 0, 7]  # the domain target's classes: source classes of the same wnids, in this order


def transfer_run(tmp_path: Path, protocol: str) -> tuple[Path, dict[str, Path]]:
    """A finished transfer run (clip-adapter, 2 epochs) of a 12-class source and its targets: two datasets of other
    classes (cross-dataset), or a class subset (domain, mapped onto the source's classes)."""
    source = write_synthetic_cache(tmp_path / "source.h5", num_classes=12, name="source", **COMMON)
    if protocol == "cross-dataset":
        targets = {name: write_synthetic_cache(tmp_path / f"{name}.h5", num_classes=6 + i, name=name,
                                               **{**COMMON, "seed": 3 + i}) for i, name in enumerate(("pets", "dtd"))}
    else:
        targets = {"subset": write_synthetic_cache(tmp_path / "subset.h5", num_classes=12, keep_classes=KEEP,
                                                   name="subset", **COMMON)}
    out = tmp_path / protocol
    run_protocol(protocol, [str(source)], out, ["clip-adapter"], [1], targets=[str(t) for t in targets.values()],
                 shots=[4], options={"epochs": ["2"]}, progress=False)
    (folder,) = [d for d in (out / "runs").iterdir() if d.is_dir()]
    return folder, targets


def source_size(cache: Path) -> int:
    with CacheReader(cache) as reader:
        return len(reader.load_test().test_labels)


@pytest.mark.parametrize("protocol", ["cross-dataset", "domain"])
def test_inspect_scores_each_target_as_metrics_json_records(tmp_path: Path, protocol: str) -> None:
    folder, targets = transfer_run(tmp_path, protocol)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["protocol"] == protocol
    fingerprints = {}
    for name, path in targets.items():
        with CacheReader(path) as reader:
            fingerprints[name] = reader.fingerprint
    assert (metrics["targets_fingerprint"], metrics["targets_cache"]) == (
        fingerprints, {name: str(path) for name, path in targets.items()})
    csv_path = tmp_path / "per_class.csv"
    args = ["inspect", str(folder), "--out", str(csv_path), "--device", "cpu", "--plots", str(tmp_path / "plots")]
    for path in targets.values():
        args += ["--target", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        [".inspect_plots.json", "reliability.png", "confusion_all.png",
         *(f"confusion_target_{name.lower()}.png" for name in targets)])
    lines = result.output.splitlines()
    for name in targets:
        line = next(x for x in lines if x.startswith(f"target {name}: "))
        assert line == (f"target {name}: {metrics['targets'][name]:.2f}% (as metrics.json), "
                        f"ECE {metrics['targets_ece'][name]:.2f}%")
    assert not any(x.startswith("targets: metrics.json records") for x in lines)  # every target was scored
    # T is fitted on the source's few-shot val images (12 classes × 2: the cache's val_per_class) for every test set;
    # a target's line says whose
    scaled = [x for x in lines if "after temperature scaling" in x]
    assert len(scaled) == 1 + len(targets) and scaled[0].endswith("fitted on 24 val images)")
    assert all(x.endswith("fitted on 24 val images of the source's classes)") for x in scaled[1:]), scaled

    run = lathadapter.load(folder, device="cpu", targets=list(targets.values()))
    assert run.targets == tuple(targets)
    for name in targets:
        scores = run.scores(target=name)
        assert (scores.accuracy, scores.ece) == (metrics["targets"][name], metrics["targets_ece"][name])
        assert scores.reliability.record() == metrics["targets_reliability"][name]
        assert run.accuracy(target=name) == metrics["targets"][name]

    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["classes", "label", "class", "correct", "count", "accuracy", "target"]
    own = [r for r in rows if r["target"] == "source"]
    assert {r["classes"] for r in own} == {"all"} and sum(int(r["count"]) for r in own) == source_size(
        tmp_path / "source.h5")
    for name, path in targets.items():
        mine = [r for r in rows if r["target"] == name]
        with CacheReader(path) as reader:
            data = reader.load_test()
        assert [(r["classes"], r["label"], r["class"]) for r in mine] == [
            ("all", str(i), n) for i, n in enumerate(data.class_names)]
        assert [int(r["count"]) for r in mine] == [int((data.test_labels == i).sum()) for i in range(len(mine))]
        correct = sum(int(r["correct"]) for r in mine)
        assert 100.0 * correct / len(data.test_labels) == pytest.approx(metrics["targets"][name], abs=1e-9)
    assert {r["target"] for r in rows} == {"source", *targets}


def test_inspect_without_target_names_the_recorded_targets(tmp_path: Path) -> None:
    folder, _ = transfer_run(tmp_path, "cross-dataset")
    result = CliRunner().invoke(app, ["inspect", str(folder), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "targets: metrics.json records dtd, pets; --target PATH (a cache of each) scores them" in \
        result.output.splitlines()
    assert not any(x.startswith("target ") for x in result.output.splitlines())


def test_a_wrong_target_cache_is_refused_in_one_line_with_exit_1(tmp_path: Path, baseline_cache: Path) -> None:
    folder, targets = transfer_run(tmp_path, "cross-dataset")
    metrics = json.loads((folder / "metrics.json").read_text())
    # the same dataset name, another cache: other images (another generator seed)
    (tmp_path / "impostor").mkdir()
    impostor = write_synthetic_cache(tmp_path / "impostor" / "pets.h5", num_classes=6, name="pets",
                                     **{**COMMON, "seed": 11})
    with CacheReader(impostor) as reader:
        fingerprint = reader.fingerprint
    plain = Path(lathadapter.fit(baseline_cache, "zeroshot", 2, 1, out=tmp_path / "fit", device="cpu")["run_dir"])
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "weights.pt"):
        (old / name).write_bytes((folder / name).read_bytes())
    (old / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items()
                                                  if k not in ("targets_fingerprint", "targets_cache", "protocol")}))
    cases = [
        ([str(folder), "--target", str(impostor)],
         f"error: target cache {impostor} (fingerprint {fingerprint}) is not the pets cache run {folder} was scored on "
         f"(fingerprint {metrics['targets_fingerprint']['pets']}, {targets['pets']})"),
        ([str(folder), "--target", str(baseline_cache)],
         f"error: target cache {baseline_cache} is dataset 'synthetic'; run {folder} was scored on targets dtd, pets "
         "(metrics.json)"),
        ([str(folder), "--target", str(tmp_path / "typo.h5")],
         f"error: target cache {tmp_path / 'typo.h5'} (given for run {folder}) is not a file"),
        ([str(plain), "--target", str(targets["pets"])],
         f"error: run {plain} is no transfer run (its metrics.json records no targets); --target scores the target "
         "caches of a cross-dataset or domain protocol's run"),
        ([str(old), "--target", str(targets["pets"])],
         f"error: run {old} was saved before metrics.json recorded its targets' fingerprints"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["inspect", *args, "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(message), result.output
    with pytest.raises(StateError, match="is not the pets cache run"):
        lathadapter.load(folder, device="cpu", targets=[impostor])


def test_load_imports_the_protocols_only_for_targets() -> None:
    """`lathadapter.load` of a plain run does without `protocols` and the grid driver it imports (75-90 ms)."""
    import subprocess
    import sys

    code = ("import sys, lathadapter; lathadapter.load; "
            "print(sorted(m for m in ('lathadapter.experiments.protocols', 'lathadapter.experiments.launch') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_targets_whose_names_share_a_file_name_get_a_file_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets `a b` and `a|b` both slug to `a_b`: `inspect --plots`' confusion matrices and the report's reliability
    figures of the two were one file, the second overwriting the first. Each has its own, its name followed by the
    first 6 hex digits of the target's SHA-1, and draws its own target."""
    source = write_synthetic_cache(tmp_path / "source.h5", num_classes=6, name="source", **COMMON)
    targets = {name: write_synthetic_cache(tmp_path / f"t{i}.h5", num_classes=3 + i, name=name,
                                           **{**COMMON, "seed": 3 + i}) for i, name in enumerate(("a b", "a|b"))}
    out = tmp_path / "grid"
    run_protocol("cross-dataset", [str(source)], out, ["zeroshot"], [1], targets=[str(t) for t in targets.values()],
                 shots=[4], progress=False)
    (folder,) = [d for d in (out / "runs").iterdir() if d.is_dir()]
    titles: dict[str, str] = {}  # file name → the figure's title and its first axes' title, as saved
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (
        titles.setdefault(path.name, f"{fig.get_suptitle()} | {fig.axes[0].get_title()}"), save(fig, path))[1])
    args = ["inspect", str(folder), "--plots", str(tmp_path / "plots"), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, *(a for t in targets.values() for a in ("--target", str(t)))])
    assert result.exit_code == 0, result.output
    write_report(out)
    files = {name: "a_b_" + hashlib.sha1(name.encode()).hexdigest()[:6] for name in targets}
    assert len(set(files.values())) == 2
    for name, file in files.items():
        assert f"target {name}: accuracy" in titles[f"confusion_target_{file}.png"]
        assert (tmp_path / "plots" / f"confusion_target_{file}.png").is_file()
        assert f"target {name}: reliability" in titles[f"reliability_transfer_source_4shot_{file}.png"]
        assert (out / "report" / f"reliability_transfer_source_4shot_{file}.png").is_file()
    # one target given alone: its file is named as when both are given (and as the report names it)
    titles.clear()
    name, cache = "a b", targets["a b"]
    result = CliRunner().invoke(app, [*args[:3], str(tmp_path / "one"), *args[4:], "--target", str(cache)])
    assert result.exit_code == 0, result.output
    assert f"target {name}: accuracy" in titles[f"confusion_target_{files[name]}.png"]
    drawn = sorted(p.name for p in (tmp_path / "one").glob("confusion_target_*"))
    assert drawn == [f"confusion_target_{files[name]}.png"]

