"""Calibration of every run (ECE, Guo et al. 2017: 15 equal-width bins of the top-1 confidence over (0, 1], the
image-weighted mean of |accuracy − mean confidence| over the bins, in percent) against ECE restated here in numpy and
an example worked out by hand; its records (metrics.json, results.csv) and report tables, and runs saved before it
was recorded."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lathadapter.adapter import evaluate as evaluate_module
from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.evaluate import evaluate, evaluate_mapped
from lathadapter.cache.store import CacheReader, FewShotData
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.protocols import run_protocol
from lathadapter.experiments.report import write_report
from lathadapter.experiments.run import fit

QUICK = {"epochs": ["2"]}  # the linear probe's training cut short: these tests read its scores, not its quality


def ece_oracle(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (%) restated: each image in the bin (k/bins, (k+1)/bins] of its top-1 probability; Σ_k (n_k / n) ×
    |accuracy_k − mean confidence_k| over the non-empty bins."""
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return 100.0 * total


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def zero_shot_data(text: torch.Tensor, test: torch.Tensor, labels: torch.Tensor) -> FewShotData:
    """A few-shot set whose zero-shot scores are `100 test @ textᵀ` (the train set is unused by zero-shot)."""
    dim = text.shape[1]
    return FewShotData(class_names=[f"c{i}" for i in range(len(text))], text_features=text,
                       attribute_features=torch.zeros(0, dim), train_features=test[:2], train_augmented=test[:2, None],
                       train_labels=labels[:2], val_features=test, val_labels=labels, test_features=test,
                       test_labels=labels, fingerprint="test")


def test_ece_over_chunks_is_the_restated_whole_set_ece(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random zero-shot scores over 5 classes (spread so that the confidences fill many bins), scored in chunks of 7
    rows over 53 (the last chunk partial): ECE and accuracy are the whole set's, restated in numpy, and the same bit
    for bit as in one chunk; over a subset of the classes (`evaluate_mapped`) too."""
    generator = torch.Generator().manual_seed(3)
    text = torch.eye(5)
    test = 0.03 * torch.randn(53, 5, generator=generator)  # scores 100 x: a few units apart
    labels = torch.randint(0, 5, (53,), generator=generator)
    method = create_method("zeroshot", zero_shot_data(text, test, labels))
    scores = 100.0 * test.double().numpy() @ text.double().numpy().T
    probabilities = softmax(scores)
    assert len(np.unique(np.ceil(probabilities.max(axis=1) * 15))) >= 6  # the bins are exercised
    whole = evaluate(method, test, labels)
    monkeypatch.setattr(evaluate_module, "CHUNK", 7)
    chunked = evaluate(method, test, labels)
    assert chunked.ece == pytest.approx(ece_oracle(probabilities, labels.numpy()), abs=1e-4)
    assert chunked.accuracy == pytest.approx(100.0 * np.mean(scores.argmax(1) == labels.numpy()))
    assert chunked == whole
    columns = [3, 0, 4]  # target class j is training class columns[j]
    mapped_labels = torch.randint(0, 3, (53,), generator=generator)
    mapped = evaluate_mapped(method, test, mapped_labels, columns)
    assert mapped.ece == pytest.approx(ece_oracle(softmax(scores[:, columns]), mapped_labels.numpy()), abs=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by benchmarks/gpu_check.sh)")
def test_ece_and_bins_on_cuda_are_the_restated_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tally of `evaluate` on CUDA tensors (bins, index_add_ on the device) against the numpy restatement, over
    chunks, and for a subset of the classes."""
    generator = torch.Generator().manual_seed(5)
    text = torch.eye(5)
    test = 0.03 * torch.randn(61, 5, generator=generator)
    labels = torch.randint(0, 5, (61,), generator=generator)
    method = create_method("zeroshot", zero_shot_data(text.cuda(), test.cuda(), labels.cuda()))
    scores = 100.0 * test.double().numpy() @ text.double().numpy().T
    monkeypatch.setattr(evaluate_module, "CHUNK", 7)
    on_cuda = evaluate(method, test.cuda(), labels.cuda())
    assert on_cuda.ece == pytest.approx(ece_oracle(softmax(scores), labels.numpy()), abs=1e-4)
    assert on_cuda.accuracy == pytest.approx(100.0 * np.mean(scores.argmax(1) == labels.numpy()))
    mapped = evaluate_mapped(method, test.cuda(), labels.remainder(3).cuda(), [3, 0, 4])
    assert mapped.ece == pytest.approx(ece_oracle(softmax(scores[:, [3, 0, 4]]), labels.remainder(3).numpy()),
                                       abs=1e-4)


def test_ece_of_five_images_worked_out_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two classes, scores (ℓ, 0): the top-1 confidence is sigmoid(|ℓ|). Confidences 0.9 (right), 0.9 (wrong), 0.7
    (right), 0.55 (wrong), 0.95 (right) fall in bins 13, 13, 10, 8 and 14 of 15: ECE = 2/5 · |0.5 − 0.9| + 1/5 ·
    |1 − 0.7| + 1/5 · |0 − 0.55| + 1/5 · |1 − 0.95| = 0.16 + 0.06 + 0.11 + 0.01 = 34 %, at 60 % accuracy (one bin
    for all would give |0.6 − 0.8| = 20 %). Chunks of 2 rows, so that no chunk holds a whole bin's images."""
    confidences = [0.9, 0.9, 0.7, 0.55, 0.95]
    right = [True, False, True, False, True]
    logit = torch.tensor([math.log(p / (1 - p)) for p in confidences])
    test = torch.stack([logit / 100, torch.zeros(5)], dim=1)  # zero-shot scores 100 x tᵀ with t = I: (ℓ, 0)
    labels = torch.tensor([0 if r else 1 for r in right])
    method = create_method("zeroshot", zero_shot_data(torch.eye(2), test, labels))
    monkeypatch.setattr(evaluate_module, "CHUNK", 2)
    scores = evaluate(method, test, labels)
    assert scores.accuracy == pytest.approx(60.0)
    assert scores.ece == pytest.approx(34.0, abs=1e-4)


def test_lathadapter_fused_confidence_is_the_mean_of_its_two_softmaxes() -> None:
    """`infer=fused` predicts by softmax(ℓ) + softmax(−d/τ_h): its confidence is their mean (a distribution), not a
    softmax of that sum; `infer=euclid` softmaxes its logits 100 <v, p>."""
    generator = torch.Generator().manual_seed(5)
    classes, dim = 4, 8
    text = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    labels = torch.arange(classes).repeat_interleave(6)
    test = F.normalize(text[labels] + 0.9 * torch.randn(len(labels), dim, generator=generator), dim=-1)
    data = FewShotData([f"c{i}" for i in range(classes)], text, torch.zeros(0, dim), test, test[:, None], labels,
                       test, labels, test, labels, fingerprint="test")
    for infer in ("fused", "euclid"):
        torch.manual_seed(0)
        method = create_method("lathadapter", data, infer=infer, attr_init="random").eval()
        with torch.no_grad():
            euclid, hyper = method.scores(test)
        e, h = euclid.double().numpy(), hyper.double().numpy()
        probabilities = (softmax(e) + softmax(h)) / 2 if infer == "fused" else softmax(e)
        found = evaluate(method, test, labels)
        assert found.ece == pytest.approx(ece_oracle(probabilities, labels.numpy()), abs=1e-4)
        if infer == "fused":  # a softmax of the summed probabilities would be near uniform: another number
            assert found.ece != pytest.approx(ece_oracle(softmax(softmax(e) + softmax(h)), labels.numpy()), abs=1.0)


def test_fit_records_ece_beside_accuracy_and_none_where_not_applicable(baseline_cache: Path, tmp_path: Path) -> None:
    """metrics.json's `ece` has `accuracy`'s keys: zero-shot's base and novel ECE restated from the cache's features;
    the linear probe cannot score novel classes, so its novel ECE is None (not 0), as its accuracy."""
    zero = fit(baseline_cache, "zeroshot", 2, 1, classes="base", out=tmp_path)
    saved = json.loads((Path(zero["run_dir"]) / "metrics.json").read_text())
    assert saved["ece"].keys() == saved["accuracy"].keys() == {"base", "novel"}
    data = CacheReader(baseline_cache).load(2, 1)
    features, text, labels = (t.double().numpy() for t in (data.test_features, data.text_features, data.test_labels))
    base, novel = labels < 4, labels >= 4  # 8 classes: 0-3 base, 4-7 novel
    expected = {"base": ece_oracle(softmax(100 * features[base] @ text[:4].T), labels[base]),
                "novel": ece_oracle(softmax(100 * features[novel] @ text[4:].T), labels[novel] - 4)}
    assert saved["ece"] == pytest.approx(expected, abs=1e-4)
    probe = fit(baseline_cache, "linear-probe", 2, 1, classes="base", out=tmp_path, epochs=2)
    assert probe["accuracy"]["novel"] is None and probe["ece"]["novel"] is None
    assert probe["ece"]["base"] is not None and 0 <= probe["ece"]["base"] <= 100


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def strip_ece(out: Path) -> int:
    """Rewrite every run's metrics.json as a run saved before ECE (and its bins) was recorded wrote it; returns how
    many."""
    folders = sorted((out / "runs").glob("*/metrics.json"))
    for path in folders:
        metrics = json.loads(path.read_text())
        del metrics["ece"], metrics["reliability"]
        metrics.pop("targets_ece", None)
        metrics.pop("targets_reliability", None)
        path.write_text(json.dumps(metrics, indent=2) + "\n")
    return len(folders)


def test_results_and_report_carry_ece_and_runs_saved_before_it_are_empty(baseline_cache: Path,
                                                                         tmp_path: Path) -> None:
    """A base-to-novel protocol: results.csv's `ece_all`, `ece_base`, `ece_novel` follow the `acc_*` columns, equal
    to metrics.json's, empty where not applicable; the report adds an ECE table (its CSV and LaTeX twin, bold on the
    lowest mean). With `ece` taken out of every metrics.json (runs saved before it was recorded), a rerun trains
    nothing, the ECE cells are empty, and the report's tables are the accuracy tables alone, byte for byte."""
    summary = run_protocol("base-to-novel", [str(baseline_cache)], tmp_path, ["zeroshot", "linear-probe"], [1],
                           shots=[2], options=QUICK, progress=False)
    assert summary["done"] == 2
    columns, rows = read_rows(tmp_path / "results.csv")
    at = columns.index("acc_novel")
    assert columns[at + 1:at + 4] == ["ece_all", "ece_base", "ece_novel"]
    by = {r["method"]: r for r in rows}
    for found in rows:
        metrics = json.loads((tmp_path / "runs" / found["key"] / "metrics.json").read_text())
        assert float(found["ece_base"]) == pytest.approx(metrics["ece"]["base"])
        if found["method"] == "zeroshot":
            assert float(found["ece_novel"]) == pytest.approx(metrics["ece"]["novel"])
    assert by["linear-probe"]["ece_novel"] == "" and by["linear-probe"]["ece_all"] == ""
    report = write_report(tmp_path, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "### Base-to-novel ECE (%): 2 shots on base classes" in text
    ece_rows = {r["method"]: r for r in csv.DictReader((tmp_path / "report" / "ece_base_to_novel.csv").open())}
    assert float(ece_rows["zeroshot"]["synthetic novel mean"]) == pytest.approx(float(by["zeroshot"]["ece_novel"]))
    assert ece_rows["linear-probe"]["synthetic novel mean"] == ""
    tex = (tmp_path / "report" / "ece_base_to_novel.tex").read_text()
    lowest = min(float(r["ece_base"]) for r in rows)
    highest = max(float(r["ece_base"]) for r in rows)
    assert rf"\textbf{{{lowest:.2f}}}" in tex and rf"\textbf{{{highest:.2f}}}" not in tex
    accuracy_tables = text.split("### Base-to-novel ECE")[0]

    assert strip_ece(tmp_path) == 2
    again = run_protocol("base-to-novel", [str(baseline_cache)], tmp_path, ["zeroshot", "linear-probe"], [1],
                         shots=[2], options=QUICK, progress=False)
    assert (again["done"], again["skipped"]) == (0, 2)
    columns, rows = read_rows(tmp_path / "results.csv")
    assert {"ece_all", "ece_base", "ece_novel"} <= set(columns)
    assert all(r[c] == "" for r in rows for c in ("ece_all", "ece_base", "ece_novel"))
    write_report(tmp_path, tmp_path / "old_report")
    old = (tmp_path / "old_report" / "report.md").read_text()
    assert "ECE" not in old and not (tmp_path / "old_report" / "ece_base_to_novel.csv").exists()
    assert not list((tmp_path / "old_report").glob("reliability*")) and "reliability" not in old
    assert old.split("![")[0].rstrip("\n") == accuracy_tables.rstrip("\n")
    assert report["latex"]


def test_cross_dataset_targets_record_ece_as_accuracy(baseline_cache: Path, tmp_path: Path) -> None:
    """A transfer run's ECE on each target sits beside its accuracy (`targets_ece` beside `targets`; one results row
    per target with `ece_all`): zero-shot's on the target restated from the target's features; the linear probe
    scores no other classes (empty); the report's transfer ECE table averages the targets."""
    target = write_synthetic_cache(tmp_path / "other.h5", num_classes=6, dim=16, views=2, shots=(2,), seeds=(1,),
                                   seed=7, name="other")
    run_protocol("cross-dataset", [str(baseline_cache)], tmp_path / "g", ["zeroshot", "linear-probe"], [1],
                 targets=[str(target)], shots=[2], options=QUICK, progress=False)
    _, rows = read_rows(tmp_path / "g" / "results.csv")
    by = {(r["method"], r["target"]): r for r in rows}
    data = CacheReader(target).load_test()
    features, text, labels = (t.double().numpy() for t in (data.test_features, data.text_features, data.test_labels))
    expected = ece_oracle(softmax(100 * features @ text.T), labels)
    assert float(by[("zeroshot", "other")]["ece_all"]) == pytest.approx(expected, abs=1e-4)
    assert by[("linear-probe", "other")]["ece_all"] == "" and by[("linear-probe", "source")]["ece_all"] != ""
    write_report(tmp_path / "g", tmp_path / "report")
    table = {r["method"]: r for r in csv.DictReader((tmp_path / "report" / "ece_transfer.csv").open())}
    assert float(table["zeroshot"]["Average (targets) mean"]) == pytest.approx(expected, abs=1e-4)


COLUMNS = ["key", "cache", "dataset", "fingerprint", "method", "shots", "seed", "classes", "text", "select", "target",
           "acc_all", "acc_base", "acc_novel", "ece_all", "ece_base", "ece_novel"]


def row(method: str, seed: int, shots: int, **values: Any) -> dict[str, Any]:
    return {"cache": "caltech101.h5", "dataset": "caltech101", "fingerprint": "fp", "method": method, "shots": shots,
            "seed": seed, "classes": "all", "text": "coop", "select": "last", "target": "", **values}


def test_report_ece_cells_are_mean_and_std_over_seeds_and_old_runs_are_left_out(tmp_path: Path) -> None:
    """Hand-written rows: an ECE cell is the mean ± sample std of its seeds' ECE; a run with an accuracy and no ECE
    (saved before it was recorded) counts in the accuracy cell but in no ECE cell, and the note says so."""
    eces = {("zeroshot", 4): [20.0, 22.0, 27.0], ("lathadapter", 4): [5.0, 6.0, 10.0],
            ("lathadapter", 16): [3.0, 4.0]}
    rows = [row(m, s, k, acc_all=60.0 + s, ece_all=e) for (m, k), values in eces.items()
            for s, e in enumerate(values, 1)]
    rows.append(row("lathadapter", 3, 16, acc_all=80.0))  # an old run: accuracy, no ECE
    helpers.write_rows(tmp_path / "results.csv", rows, COLUMNS)
    write_report(tmp_path / "results.csv", tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    table = text.split("### Few-shot ECE (%) on caltech101")[1]
    for (method, shots), values in eces.items():
        line = next(line for line in table.splitlines() if line.startswith(f"| {method} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        shown = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
        assert cells[1 + [4, 16].index(shots)].startswith(shown)
    assert "(n=2)" in table and "1 run left out" in table
    tex = (tmp_path / "report" / "ece_few_shot_caltech101.tex").read_text()
    assert re.search(r"\\textbf\{7\.00 \$\\pm\$ 2\.65\}", tex)  # lathadapter's 4-shot mean, the lowest
    assert r"\textbf{23.00" not in tex


def test_an_infinite_score_has_no_probabilities_and_is_refused_as_nan_scores() -> None:
    """A +inf score's softmax is NaN: neither an ECE nor the accuracy beside it is reported (`NaNScores`, whence the
    run counts as diverged), as for NaN scores."""
    from lathadapter.adapter.evaluate import NaNScores
    from lathadapter.adapter.methods.base import Method

    class Infinite(torch.nn.Module):
        name, options = "infinite", None
        probabilities = Method.probabilities

        def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
            return torch.tensor([[float("inf"), 0.0]]).expand(len(features), 2)

    with pytest.raises(NaNScores, match="infinite gave infinite scores"):
        evaluate(Infinite(), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))


def test_confidences_next_to_a_bin_edge_fall_in_the_bin_their_exact_value_is_in() -> None:
    """Bin b is (b/15, (b+1)/15] of the confidence's exact value: float32 confidences at and one ulp either side of
    each edge k/15 (none of which float32 holds exactly, but 1) are binned as exact rational arithmetic bins them;
    1.0 is in the last bin, and so is a confidence rounded above 1."""
    from fractions import Fraction

    class Given(torch.nn.Module):  # scores (c, 0) whose probabilities are the scores themselves: confidence c
        name, options = "given", None

        def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
            return scores

        def logits(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
            return torch.stack([features[:, 0], torch.zeros(len(features))], dim=1)

    edges = np.float32([k / 15 for k in range(1, 16)])
    confidences = np.concatenate([edges, np.nextafter(edges, np.float32(0)), np.nextafter(edges, np.float32(2))])
    expected = [0] * 15
    for c in confidences:
        exact = Fraction(float(c))  # a float32 held exactly
        expected[min(next(b for b in range(15) if exact <= Fraction(b + 1, 15)) if exact <= 1 else 14, 14)] += 1
    features = torch.from_numpy(confidences)[:, None]
    found = evaluate(Given(), features, torch.zeros(len(features), dtype=torch.long))
    assert list(found.reliability.images) == expected
    rounded_edges = np.bincount(np.minimum(np.searchsorted(edges, confidences), 14), minlength=15)
    assert list(rounded_edges) != expected  # binning against float32 edges would put some elsewhere


def test_ece_tables_keep_the_accuracy_tables_rows_and_labels_beside_runs_saved_before_ece(tmp_path: Path) -> None:
    """A grid resumed with a new configuration: lathadapter at curvature 0.5 trained before ECE was recorded (an
    accuracy, no ECE), at curvature 1.0 after. The ECE table has the accuracy table's rows, labelled alike
    (`curvature=1.0`, not a bare `lathadapter`), the old configuration's cell `—`; a dataset of old runs alone has
    no ECE table."""
    columns = [*COLUMNS, "opt.curvature"]
    rows = [row("zeroshot", s, 4, acc_all=50.0, ece_all=20.0 + s) for s in (1, 2)]
    rows += [row("lathadapter", s, 4, acc_all=70.0, **{"opt.curvature": 0.5}) for s in (1, 2)]  # before ECE
    rows += [row("lathadapter", s, 4, acc_all=71.0, ece_all=5.0 + s, **{"opt.curvature": 1.0}) for s in (1, 2)]
    rows += [{**row("zeroshot", 1, 4, acc_all=40.0), "dataset": "dtd", "cache": "dtd.h5"}]  # before ECE
    helpers.write_rows(tmp_path / "results.csv", rows, columns)
    write_report(tmp_path / "results.csv", tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()

    def table_rows(title: str) -> dict[str, list[str]]:
        lines = text.split(f"### {title}\n")[1].strip().split("\n\n")[0].splitlines()[2:]
        return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}

    accuracy = table_rows("Few-shot accuracy (%) on caltech101")
    ece = table_rows("Few-shot ECE (%) on caltech101")
    assert list(ece) == list(accuracy) == ["zeroshot", "lathadapter curvature=0.5", "lathadapter curvature=1.0"]
    assert ece["lathadapter curvature=0.5"] == ["—"] and ece["lathadapter curvature=1.0"] == ["6.50 ± 0.71"]
    assert "Few-shot accuracy (%) on dtd" in text and "ECE (%) on dtd" not in text
