"""`fit` over generated caches: it learns, it is deterministic, base-to-novel bookkeeping is right, errors are clear."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch
from typer.testing import CliRunner

from lathadapter.adapter.options import OptionError
from lathadapter.cache.store import CacheError, CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments.run import fit, split_classes

FAST = {"epochs": 5, "min_steps": 60}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 classes in 4 latent families, 32-d features, 4 augmented views, shots 1/4/16 × seeds 1/2."""
    path = tmp_path_factory.mktemp("cache") / "synthetic.h5"
    return write_synthetic_cache(path, num_classes=20, dim=32, shots=(1, 4, 16), seeds=(1, 2))


def test_lathadapter_beats_zero_shot_on_base_classes(cache: Path, tmp_path: Path) -> None:
    zero_shot = fit(cache, "zeroshot", shots=16, seed=1, classes="base", out=None, device="cpu")
    adapted = fit(cache, "lathadapter", shots=16, seed=1, classes="base", out=None, device="cpu")  # 300 steps
    assert adapted["accuracy"]["base"] > zero_shot["accuracy"]["base"] + 5
    base, novel = adapted["accuracy"]["base"], adapted["accuracy"]["novel"]
    assert novel is not None and adapted["hm"] == pytest.approx(2 * base * novel / (base + novel))


def test_same_seed_gives_identical_metrics_and_a_complete_run_directory(cache: Path, tmp_path: Path) -> None:
    first = fit(cache, "lathadapter", shots=4, seed=2, out=tmp_path / "a", device="cpu", **FAST)
    second = fit(cache, "lathadapter", shots=4, seed=2, out=tmp_path / "b", device="cpu", **FAST)
    assert first["accuracy"] == second["accuracy"]
    run = Path(first["run_dir"])
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["options"]["epochs"] == 5 and config["options"]["hier"] == "cone"
    assert config["cache_fingerprint"] == CacheReader(cache).fingerprint
    assert set(metrics) >= {"accuracy", "hm", "train_seconds", "eval_seconds", "trained_parameters"}
    assert metrics["hm"] is None and set(metrics["accuracy"]) == {"all"}
    weights = torch.load(run / "weights.pt")
    assert "attribute_prompts" in weights
    assert metrics["steps"] >= 60


def test_methods_that_cannot_score_novel_classes_report_null(cache: Path, tmp_path: Path) -> None:
    metrics = fit(cache, "tip-adapter", shots=16, seed=1, classes="base", out=tmp_path, device="cpu")
    assert metrics["accuracy"]["novel"] is None and metrics["hm"] is None
    stored = json.loads((Path(metrics["run_dir"]) / "metrics.json").read_text())
    assert stored["accuracy"]["novel"] is None


def test_package_level_fit_is_the_same_api(cache: Path) -> None:
    import lathadapter

    metrics = lathadapter.fit(cache, method="zeroshot", shots=4, seed=1, out=None)
    assert metrics["accuracy"] == fit(cache, "zeroshot", shots=4, seed=1, out=None)["accuracy"]


def test_base_novel_split_relabels_from_zero(cache: Path) -> None:
    data = CacheReader(cache).load(16, 1)
    base, novel = split_classes(data, "base")
    assert base.class_names == data.class_names[:10] and novel.class_names == data.class_names[10:]
    assert torch.equal(novel.text_features, data.text_features[10:])
    original = data.test_labels[data.test_labels >= 10]
    assert torch.equal(novel.test_labels, original - 10)
    assert torch.equal(novel.test_features, data.test_features[data.test_labels >= 10])
    assert int(base.train_labels.max()) == 9 and len(base.train_labels) == 10 * 16


def test_clear_errors(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"shots=3 seed=1.*holds: shots=1 seed=1"):
        fit(cache, "zeroshot", shots=3, seed=1, out=None)
    with pytest.raises(OptionError, match="valid methods"):
        fit(cache, "maple", out=None)
    with pytest.raises(OptionError, match="valid options"):
        fit(cache, "lathadapter", out=None, curvatur=2.0)
    old = tmp_path / "old.h5"
    old.write_bytes(cache.read_bytes())
    with h5py.File(old, "r+") as f:
        f.attrs["schema_version"] = 0
    with pytest.raises(CacheError, match="schema version 0.*--force"):
        fit(old, "zeroshot", out=None)
    other = tmp_path / "other.h5"  # another program's HDF5 file (was called "cache schema version 0")
    with h5py.File(other, "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(CacheError, match="an HDF5 file but not a lathadapter cache"):
        fit(other, "zeroshot", out=None)


def test_cli_fit_prints_a_summary_and_fails_cleanly(cache: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["fit", "--cache", str(cache), "--method", "clip-adapter", "--shots", "4",
                                 "--out", str(tmp_path), "--device", "cpu", "--set", "epochs=2",
                                 "--set", "min_steps=0"])
    assert result.exit_code == 0, result.output
    assert "clip-adapter" in result.output and "all" in result.output
    result = runner.invoke(app, ["fit", "--cache", str(cache), "--shots", "5"])
    assert result.exit_code == 1 and "holds:" in result.output
    result = runner.invoke(app, ["fit", "--cache", str(cache), "--set", "hier=tree"])
    assert result.exit_code == 2 and "cone, triplet" in result.output


def test_default_cache_is_the_one_in_the_default_folder(cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CacheError, match="cache build"):
        fit(None, "zeroshot", out=None)
    (tmp_path / "caches").mkdir()
    (tmp_path / "caches" / "one.h5").write_bytes(cache.read_bytes())
    assert fit(None, "zeroshot", shots=4, out=None)["accuracy"]["all"] > 0
    (tmp_path / "caches" / "two.h5").write_bytes(cache.read_bytes())
    with pytest.raises(CacheError, match="choose one with --cache"):
        fit(None, "zeroshot", out=None)


def test_config_json_is_the_same_from_the_command_line_and_from_python(cache: Path, tmp_path: Path) -> None:
    """Options are parsed once into typed values: the strings of `--set` and Python values give one file."""
    args = ["fit", "--cache", str(cache), "--method", "lathadapter", "--shots", "4", "--seed", "2", "--device", "cpu",
            "--out", str(tmp_path / "cli"), "--set", "epochs=2", "--set", "min_steps=4", "--set", "attr_proto=false",
            "--set", "curvature=2", "--set", "lambda_hier=0.25", "--set", "hier=triplet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = fit(cache, "lathadapter", shots=4, seed=2, device="cpu", out=tmp_path / "api", epochs=2, min_steps=4,
                  attr_proto=False, curvature=2, lambda_hier=0.25, hier="triplet")
    (from_cli,) = (tmp_path / "cli").iterdir()
    from_api = Path(metrics["run_dir"])
    assert from_cli.name == from_api.name  # the same key
    assert (from_cli / "config.json").read_bytes() == (from_api / "config.json").read_bytes()
    config = json.loads((from_api / "config.json").read_text())
    assert config["overrides"] == {"epochs": 2, "min_steps": 4, "attr_proto": False, "curvature": 2.0,
                                   "lambda_hier": 0.25, "hier": "triplet"}
    assert config["options"]["curvature"] == 2.0 and config["options"]["lr"] == 1e-2  # LatHAdapter's default lr


def test_fit_takes_one_value_per_option(cache: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fit", "--cache", str(cache), "--out", str(tmp_path), "--set", "lr=0.1,0.2"])
    assert result.exit_code == 2 and "one value per option" in result.output


def test_select_val_keeps_the_first_epoch_of_the_best_val_accuracy(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`select=val` keeps the first epoch whose few-shot val accuracy is the best: a later epoch that ties it does not
    replace it. Every epoch's val scores are recorded here, with their accuracy restated; the kept model's val scores
    must be those of that first best epoch."""
    from lathadapter.adapter import trainer
    from lathadapter.adapter.catalog import create_method

    path = write_synthetic_cache(tmp_path / "c.h5", num_classes=20, dim=32, shots=(4,), seeds=(1,))
    data = CacheReader(path).load(4, 1)
    seen: list[tuple[float, torch.Tensor]] = []  # (val accuracy %, val scores) after each epoch
    real = trainer.accuracy

    def recording(scores: torch.Tensor, labels: torch.Tensor) -> float:
        seen.append((100.0 * float((scores.argmax(-1) == labels).double().mean()), scores.detach().clone()))
        return real(scores, labels)

    monkeypatch.setattr(trainer, "accuracy", recording)
    torch.manual_seed(0)
    method = create_method("lathadapter", data, epochs=8, min_steps=0, lr=1e-2)
    result = trainer.train(method, data, seed=1, select="val")
    accuracies = [value for value, _ in seen]
    best = max(accuracies)
    first = accuracies.index(best)
    assert len(seen) == 8 and accuracies.count(best) > 1  # the world has a later epoch that ties the best
    assert (result.selected_epoch, result.val_accuracy) == (first + 1, best)
    with torch.no_grad():
        method.eval()
        torch.testing.assert_close(method.logits(data.val_features), seen[first][1], rtol=0, atol=0)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"shots": "4"}, r"^shots='4': expected an integer, the shots per class"),
    ({"shots": [1, 4]}, r"^shots=\[1, 4\]: expected an integer.*several values are a grid's axis"),
    ({"shots": 4.0}, r"^shots=4\.0: expected an integer"),
    ({"shots": True}, r"^shots=True: expected an integer"),
    ({"seed": "1"}, r"^seed='1': expected an integer, the few-shot set's seed"),
    ({"seed": None}, r"^seed=None: expected an integer"),
    ({"cache": 3}, r"^cache=3: expected a path"),
    ({"out": 5}, r"^out=5: expected a path"),
    ({"force": "no"}, r"^force='no': expected True or False"),
    ({"device": 0}, r"^device=0: expected 'cpu', 'cuda', 'cuda:N' or None"),
    ({"cache_file": "x.h5"}, r"^fit\(\): unknown keyword\(s\) cache_file: neither an argument of fit \(cache, "),
    ({"cache_path": "x.h5"}, r"^fit\(\): cache and cache_path name one argument \(the cache file\); give cache alone$"),
    ({"method": ["zeroshot"]}, r"^unknown method \['zeroshot'\]; valid methods: zeroshot, "),
])
def test_python_api_mistakes_name_the_argument_and_what_is_valid(cache: Path, tmp_path: Path,
                                                                 arguments: dict, message: str) -> None:
    """`fit`'s mistakes of type failed inside a comparison (`'<' not supported between 'str' and 'int'`), pathlib
    (`expected str, bytes or os.PathLike object`) or the cache (`no few-shot subset with shots=4.0`), or were taken
    silently (`force="no"` is true: a finished run was trained again over itself); each is now an `OptionError`
    naming the argument, before any work, and a finished run in the way is left as it is."""
    finished = Path(fit(cache, "zeroshot", shots=1, seed=1, out=tmp_path, device="cpu")["run_dir"])
    before = {name: (finished / name).read_bytes() for name in ("config.json", "metrics.json")}
    given = {"cache": cache, "method": "zeroshot", "shots": 1, "seed": 1, "out": tmp_path, "device": "cpu",
             **arguments}
    with pytest.raises(OptionError, match=message):
        fit(**given)
    assert {name: (finished / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [finished.name]


def test_cache_path_the_earlier_keyword_names_the_same_cache_as_cache(cache: Path, tmp_path: Path) -> None:
    """`fit(cache=...)` names the cache file as `--cache` and `load(..., cache=...)` do; `cache_path=`, the keyword's
    earlier name, trains the same run (one folder, the same key and metrics)."""
    named = fit(cache=cache, method="zeroshot", shots=1, seed=1, out=tmp_path / "a", device="cpu")
    earlier = fit(cache_path=cache, method="zeroshot", shots=1, seed=1, out=tmp_path / "b", device="cpu")
    assert Path(named["run_dir"]).name == Path(earlier["run_dir"]).name
    assert named["accuracy"] == earlier["accuracy"]


def test_numpy_integers_are_the_same_run_as_python_integers(cache: Path, tmp_path: Path) -> None:
    """Shots and seed read from a NumPy array are integers: the run is the one plain ints give (key, folder, config)."""
    import numpy as np

    plain = fit(cache, "zeroshot", shots=4, seed=2, out=tmp_path / "a", device="cpu")
    numpy = fit(cache, "zeroshot", shots=np.int64(4), seed=np.int32(2), out=tmp_path / "b", device="cpu")
    assert Path(plain["run_dir"]).name == Path(numpy["run_dir"]).name
    config = json.loads((Path(numpy["run_dir"]) / "config.json").read_text())
    assert (config["shots"], config["seed"]) == (4, 2) and numpy["accuracy"] == plain["accuracy"]
