"""How the cross-dataset and domain protocols score their targets: with the run's own text features, over the
target's classes alone (before any softmax), and never through an ambiguous class mapping."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.options import OptionError
from lathadapter.cache.store import CacheError, CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.protocols import map_classes, run_protocol


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(dim=1) == labels).float().mean() * 100)


def stored_test(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cache's stored test features, labels and per-template class text features [T, C, D], read with h5py."""
    with h5py.File(path, "r") as f:
        features = torch.from_numpy(f["splits/test/features"][()].astype(np.float32))
        labels = torch.from_numpy(f["splits/test/labels"][()]).long()
        per_template = torch.from_numpy(f["text/features"][()].astype(np.float32))
    return features, labels, per_template


def rows_of(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (out / "results.csv").open(newline="") as f:
        return {(r["method"], r["target"]): r for r in csv.DictReader(f)}


def test_cross_dataset_targets_are_scored_with_the_runs_text_features(tmp_path: Path) -> None:
    common = dict(dim=16, views=2, shots=(16,), seeds=(1,), train_per_class=16, val_per_class=2)
    source = write_synthetic_cache(tmp_path / "source.h5", num_classes=6, seed=5, name="source", **common)
    # a target whose zero-shot accuracy differs between the two text choices (checked below)
    target = write_synthetic_cache(tmp_path / "target.h5", num_classes=12, seed=0, test_per_class=15, text_noise=0.6,
                                   name="target", **common)
    features, labels, per_template = stored_test(target)
    assert len(per_template) == 2  # the CoOp template, then one more
    oracle = {"coop": accuracy(features @ unit(per_template[0]).t(), labels),
              # DATA.md: the mean of the normalised per-template features, normalised again
              "ensemble": accuracy(features @ unit(unit(per_template).mean(dim=0)).t(), labels)}
    assert oracle["coop"] != oracle["ensemble"]  # the world tells the two apart
    for text in ("coop", "ensemble"):
        run_protocol("cross-dataset", [str(source)], tmp_path / text, ["zeroshot"], [1], targets=[str(target)],
                     text=text, progress=False)
        rows = rows_of(tmp_path / text)
        assert rows[("zeroshot", "target")]["text"] == text
        assert float(rows[("zeroshot", "target")]["acc_all"]) == pytest.approx(oracle[text])


def test_a_domain_target_on_a_class_subset_takes_the_fused_softmaxes_over_its_classes(tmp_path: Path) -> None:
    keep = [20, 3, 7, 11, 15, 1]  # the target's classes: source classes of the same wnids, in this order
    common = dict(dim=16, views=2, shots=(4,), seeds=(1,), train_per_class=6, val_per_class=2, test_per_class=15,
                  image_noise=0.9, seed=1)
    source = write_synthetic_cache(tmp_path / "source.h5", num_classes=24, name="source", **common)
    target = write_synthetic_cache(tmp_path / "subset.h5", num_classes=24, keep_classes=keep, name="subset", **common)
    out = tmp_path / "domain"
    run_protocol("domain", [str(source)], out, ["lathadapter"], [1], targets=[str(target)], shots=[4],
                 options={"epochs": ["2"], "min_steps": ["0"], "radius": ["norm"], "infer": ["fused"]},
                 progress=False)
    recorded = float(rows_of(out)[("lathadapter", "subset")]["acc_all"])
    (folder,) = [d for d in (out / "runs").iterdir() if d.is_dir()]
    config = json.loads((folder / "config.json").read_text())
    with CacheReader(source) as reader:
        data = reader.load(4, 1)
    method = create_method("lathadapter", data, **config["overrides"])
    method.load_state_dict(torch.load(folder / "weights.pt"))
    method.eval()
    assert method.options.infer == "fused"
    features, labels, _ = stored_test(target)
    columns = torch.tensor(keep)
    with torch.no_grad():
        euclid, hyper = method.scores(features)  # the method's two logit kinds over all 24 source classes
        # a 6-way classifier of the target's classes: each kind's softmax over those 6 classes, then summed
        oracle = torch.softmax(euclid[:, columns], dim=1) + torch.softmax(hyper[:, columns], dim=1)
        over_all = (torch.softmax(euclid, dim=1) + torch.softmax(hyper, dim=1))[:, columns]  # the softmax over 24
        assert (oracle.argmax(dim=1) != over_all.argmax(dim=1)).any()  # the world tells the two apart
        assert torch.allclose(method.logits_over(features, columns), oracle, atol=1e-6)
    assert recorded == pytest.approx(accuracy(oracle, labels))


def rewrite_classes(path: Path, names: list[str], wnids: list[str]) -> None:
    """Give a cache other class names and wnids (`""`: none), as a `folder:` or `split:` cache has."""
    with h5py.File(path, "r+") as f:
        for key, values in (("classes/names", names), ("classes/wnids", wnids)):
            del f[key]
            f.create_dataset(key, data=np.array(values, dtype=object), dtype=h5py.string_dtype())


def test_mapping_by_name_refuses_names_that_several_classes_share(tmp_path: Path) -> None:
    common = dict(dim=16, views=2, shots=(16,), seeds=(1,), train_per_class=16, val_per_class=2, test_per_class=3)
    source = write_synthetic_cache(tmp_path / "source.h5", num_classes=6, name="source", **common)
    target = write_synthetic_cache(tmp_path / "target.h5", num_classes=6, keep_classes=[4, 1], name="target",
                                   **common)
    # open_clip's ImageNet names repeat "missile" and "sunglasses"; "Sunglasses" cleans to the same name
    names = ["tench", "missile", "sunglasses", "missile", "Sunglasses", "goldfish"]
    rewrite_classes(source, names, [""] * 6)  # no wnids: classes map by name
    rewrite_classes(target, ["Sunglasses", "missile"], ["n1", "n2"])
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["protocol", "domain", "--cache", str(source), "--target", str(target),
                                 "--method", "zeroshot", "--seeds", "1", "--device", "cpu", "--out", str(out)])
    assert result.exit_code != 0
    message = result.output.strip()
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"error: {target}: cannot map its classes onto the source {source} by name")
    assert f"{source} has several classes with the name 'missile', 'sunglasses'" in message
    assert "wnids" in message
    assert not list(out.glob("runs/*/metrics.json"))  # refused before anything trained
    # a duplicated name the target does not use is no ambiguity
    source_keys = (names, [])
    assert map_classes(source_keys, (["goldfish", "tench"], []), "s.h5", "t.h5") == [5, 0]
    # two target classes with one name would share one source column
    with pytest.raises(CacheError, match=r"t\.h5 has several classes with the name 'goldfish'; build both caches "
                                         r"with wnids"):
        map_classes(source_keys, (["goldfish", "Goldfish"], []), "s.h5", "t.h5")
    # with wnids on both sides, names play no part
    wnids = [f"n{i}" for i in range(6)]
    assert map_classes((names, wnids), (["x", "y"], ["n3", "n1"]), "s.h5", "t.h5") == [3, 1]


def test_a_domain_target_with_classes_the_source_lacks_is_a_usage_mistake(tmp_path: Path) -> None:
    """A dataset of other classes given to `protocol domain` (a cross-dataset target): exit 2, one line naming the
    target, the classes it cannot map and the protocol that takes it; it was exit 1 and named no way out."""
    common = dict(dim=16, views=2, shots=(16,), seeds=(1,), train_per_class=16, val_per_class=2, test_per_class=3)
    source = write_synthetic_cache(tmp_path / "source.h5", num_classes=4, name="source", **common)
    target = write_synthetic_cache(tmp_path / "target.h5", num_classes=3, name="target", **common)
    rewrite_classes(source, ["tench", "goldfish", "shark", "ray"], [""] * 4)
    rewrite_classes(target, ["goldfish", "red thing", "blue_thing"], [""] * 3)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["protocol", "domain", "--cache", str(source), "--target", str(target),
                                      "--method", "zeroshot", "--seeds", "1", "--device", "cpu", "--out", str(out)])
    message = result.output.strip()
    assert result.exit_code == 2 and "\n" not in message and "Traceback" not in message, result.output
    assert message.startswith(f"error: --target {target}: 2 of its 3 classes have no class with the same name in "
                              f"the source {source}: 'red thing', 'blue thing'; "), message
    assert message.endswith("`protocol cross-dataset`")
    assert not list(out.glob("runs/*/metrics.json"))  # refused before anything trained


def set_encoder(path: Path, **fields: object) -> None:
    """Give a cache's fingerprint other encoder fields (model, pretrained, checkpoint_sha256, ...), as a cache built
    with another --model or --pretrained has."""
    with h5py.File(path, "r+") as f:
        f.attrs["fingerprint_json"] = json.dumps({**json.loads(f.attrs["fingerprint_json"]), **fields})


@pytest.mark.parametrize("protocol", ["cross-dataset", "domain"])
def test_a_target_from_another_encoder_is_refused_before_anything_trains(tmp_path: Path, protocol: str) -> None:
    common = dict(views=2, shots=(16,), seeds=(1,), train_per_class=16, val_per_class=2, test_per_class=3)
    source = write_synthetic_cache(tmp_path / "source.h5", num_classes=6, dim=16, name="source", **common)
    narrow = write_synthetic_cache(tmp_path / "narrow.h5", num_classes=6, dim=8, name="narrow", **common)
    other = write_synthetic_cache(tmp_path / "other.h5", num_classes=6, dim=16, name="other", **common)
    set_encoder(other, model="ViT-B-16", pretrained="file", checkpoint_sha256="ab" * 32)
    same = write_synthetic_cache(tmp_path / "same.h5", num_classes=6, dim=16, name="same", **common)
    runner = CliRunner()
    for target, encoders in (
            (narrow, f"was encoded by synthetic (dim 8), the source {source} by synthetic (dim 16)"),
            (other, f"was encoded by ViT-B-16 (checkpoint sha256 {'ab' * 6}, dim 16), the source {source} by "
                    "synthetic (dim 16)")):
        out = tmp_path / f"out-{target.stem}"
        # the target after a good one: every target is checked before the first run trains
        result = runner.invoke(app, ["protocol", protocol, "--cache", str(source), "--target", str(same), "--target",
                                     str(target), "--method", "zeroshot,clip-adapter", "--seeds", "1", "--device",
                                     "cpu", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0] == (f"error: --target {target} {encoders}: a transfer target must use "
                                                "the source's encoder; build it with the source's --model and "
                                                "--pretrained"), result.output
        assert not out.exists()  # nothing written: no results.csv, no runs, no lock
    # fields the short description leaves out are named
    set_encoder(other, model="synthetic", pretrained=None, checkpoint_sha256=None, quick_gelu=False,
                model_config={"embed_dim": 16})
    with pytest.raises(OptionError, match=r"\(they differ in model_config\): a transfer target must use"):
        run_protocol(protocol, [str(source)], tmp_path / "api", ["zeroshot"], [1], targets=[str(other)],
                     progress=False)
    assert not (tmp_path / "api").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["fewshot", "--cache", "{source}"], "unknown protocol 'fewshot'; valid: few-shot, base-to-novel, cross-dataset, "
                                         "domain"),
    (["cross-dataset", "--cache", "{source}"], "protocol cross-dataset needs at least one --target cache (the "
                                               "datasets the source's runs are scored on)"),
    (["domain", "--cache", "{source}"], "protocol domain needs at least one --target cache (the datasets the "
                                        "source's runs are scored on)"),
    (["cross-dataset", "--cache", "{source}", "--cache", "{other}", "--target", "{other}"],
     "protocol cross-dataset trains on one source cache; got 2 --cache ({source}, {other}): give one --cache and the "
     "others as --target"),
])
def test_protocol_usage_mistakes_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    common = dict(num_classes=4, dim=8, views=2, shots=(16,), seeds=(1,), train_per_class=16, val_per_class=2,
                  test_per_class=3)
    paths = {"source": str(write_synthetic_cache(tmp_path / "source.h5", name="source", **common)),
             "other": str(write_synthetic_cache(tmp_path / "other.h5", name="other", **common))}
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["protocol", *[arg.format(**paths) for arg in args], "--method", "zeroshot",
                                      "--seeds", "1", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {message.format(**paths)}"
    assert not out.exists()


@pytest.mark.parametrize("protocol", ["cross-dataset", "domain"])
def test_two_targets_of_one_dataset_name_are_refused_before_anything_trains(tmp_path: Path, protocol: str) -> None:
    """Targets are keyed by dataset name: two of one name used to make one column (the later overwrote the earlier),
    so 'Average (targets)' averaged one target where two were given."""
    common = dict(num_classes=4, dim=8, views=2, shots=(16,), seeds=(1,), train_per_class=16, val_per_class=2,
                  test_per_class=3)
    source = write_synthetic_cache(tmp_path / "source.h5", name="source-set", **common)
    first = write_synthetic_cache(tmp_path / "first.h5", name="sketch", seed=3, **common)
    second = write_synthetic_cache(tmp_path / "second.h5", name="sketch", seed=4, **common)
    named_source = write_synthetic_cache(tmp_path / "named.h5", name="source", **common)
    for targets, message in (
            ([first, second], f"--target {second} and --target {first} are both dataset 'sketch'; each target is one "
                              "column, named by its dataset: give each dataset once"),
            ([named_source], f"--target {named_source}: its dataset name is 'source', the column of the source "
                             "cache's own test set; rebuild it under another --dataset name")):
        out = tmp_path / f"out-{len(targets)}"
        result = CliRunner().invoke(app, ["protocol", protocol, "--cache", str(source),
                                          *[arg for t in targets for arg in ("--target", str(t))],
                                          "--method", "zeroshot", "--seeds", "1", "--device", "cpu", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == f"error: {message}"
        assert not out.exists()


def test_a_run_that_scores_nan_on_a_target_is_kept_as_diverged(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores on a transfer target that overflow (injected: the target's evaluation raises NaNScores as
    `evaluate.checked` does) leave that run without any accuracy, source included, marked diverged, and the protocol
    ends normally instead of stopping (exit 1)."""
    from lathadapter.adapter.evaluate import NaNScores
    from lathadapter.experiments import protocols

    def overflowing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise NaNScores("zeroshot gave NaN scores at evaluation (injected)")

    common = dict(dim=16, views=2, shots=(1,), seeds=(1,), train_per_class=4, val_per_class=2, test_per_class=3)
    source = write_synthetic_cache(tmp_path / "source.h5", num_classes=4, seed=5, name="source", **common)
    target = write_synthetic_cache(tmp_path / "target.h5", num_classes=5, seed=0, name="target", **common)
    monkeypatch.setattr(protocols, "evaluate", overflowing)
    out = tmp_path / "cross"
    run_protocol("cross-dataset", [str(source)], out, ["zeroshot"], [1], targets=[str(target)], shots=[1],
                 progress=False)
    rows = rows_of(out)
    assert set(rows) == {("zeroshot", "source"), ("zeroshot", "target")}
    assert all(r["acc_all"] == "" and r["diverged"] == "zeroshot gave NaN scores at evaluation (injected)"
               for r in rows.values()), rows


@pytest.fixture
def transfer(tmp_path: Path) -> dict[str, str]:
    """A source and three targets; `pets` sorts after `dtd`, so [pets, dtd] is not the dataset-name order."""
    common = dict(dim=8, views=2, shots=(1,), seeds=(1, 2), train_per_class=4, val_per_class=2, test_per_class=3)
    return {name: str(write_synthetic_cache(tmp_path / f"{name}.h5", num_classes=4 + i, seed=i, name=name, **common))
            for i, name in enumerate(("source", "pets", "dtd", "eurosat"))}


def cross(caches: dict[str, str], out: Path, *targets: str) -> dict:
    return run_protocol("cross-dataset", [caches["source"]], out, ["zeroshot", "linear-probe"], [1, 2],
                        targets=[caches[t] for t in targets], shots=[1], options={"epochs": ["1"]}, progress=False)


def run_keys(out: Path) -> set[str]:
    return {d.name for d in (out / "runs").iterdir() if d.is_dir()}


def test_targets_in_another_order_resume_the_same_runs(transfer: dict[str, str], tmp_path: Path) -> None:
    """Each target is scored on its own, so the order of `--target` is no part of a run: a rerun in another order
    skips every run (it retrained them all, and the folder then held each run twice and could not be reported), and
    two new folders given the targets in either order hold the same run keys."""
    from lathadapter.experiments.report import write_report

    first = cross(transfer, tmp_path / "p", "pets", "dtd")
    assert (first["runs"], first["done"]) == (4, 4)
    again = cross(transfer, tmp_path / "p", "dtd", "pets")
    assert (again["runs"], again["done"], again["skipped"]) == (4, 0, 4)
    cross(transfer, tmp_path / "q", "dtd", "pets")
    assert run_keys(tmp_path / "p") == run_keys(tmp_path / "q")
    assert len(run_keys(tmp_path / "p")) == 4
    write_report(tmp_path / "p")
    assert {t for _, t in rows_of(tmp_path / "p")} == {"source", "pets", "dtd"}


def test_a_folder_keyed_in_the_order_given_resumes_in_any_order(transfer: dict[str, str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder written before the order was fixed hashed the targets in the order given, here [pets, dtd] (not the
    dataset-name order a new folder uses): its runs keep their keys, and a rerun in either order trains nothing."""
    from lathadapter.experiments import protocols
    from lathadapter.experiments.report import write_report

    with monkeypatch.context() as patched:  # the order as given, as before the fix
        patched.setattr(protocols, "target_order", lambda paths, source, out: list(paths))
        cross(transfer, tmp_path / "old", "pets", "dtd")
    cross(transfer, tmp_path / "new", "pets", "dtd")
    assert run_keys(tmp_path / "old").isdisjoint(run_keys(tmp_path / "new"))  # the old keys are not the new ones
    old = run_keys(tmp_path / "old")
    for order in (("dtd", "pets"), ("pets", "dtd")):
        summary = cross(transfer, tmp_path / "old", *order)
        assert (summary["done"], summary["skipped"]) == (0, 4), order
    assert run_keys(tmp_path / "old") == old
    write_report(tmp_path / "old")


def test_another_target_set_is_other_runs(transfer: dict[str, str], tmp_path: Path) -> None:
    """A folder's order is adopted for the same target set only: another set (one more target, one fewer) trains
    its own runs, as before."""
    cross(transfer, tmp_path / "p", "pets", "dtd")
    first = run_keys(tmp_path / "p")
    for targets in (("eurosat", "dtd", "pets"), ("dtd",)):
        summary = cross(transfer, tmp_path / "p", *targets)
        assert (summary["done"], summary["skipped"]) == (4, 0), targets
    assert len(run_keys(tmp_path / "p")) == 12 and first < run_keys(tmp_path / "p")
