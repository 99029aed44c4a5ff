"""Runs trained together (`adapter.batched`, `grid --batch-runs`): each run as it is trained alone by the plain
trainer, bit for bit in lockstep and within float rounding when stacked; batched grids save, resume and report
every run as one-at-a-time grids do."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lathadapter import kernels
from lathadapter.adapter.batched import Member, lockstep_key, stack_key, train_together
from lathadapter.adapter.catalog import build_method, make_options
from lathadapter.adapter.trainer import train
from lathadapter.cache.store import CacheReader
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch, prepare
from lathadapter.experiments.spec import GridSpec, expand
from lathadapter.experiments.training import batches

TRAINED = ("linear-probe", "clip-adapter", "taskres", "tip-adapter-f", "clap", "ape-t", "cross-modal", "lathadapter")
SHORT = {"epochs": "3", "min_steps": "0"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("batched")
    return write_synthetic_cache(folder / "world.h5", num_classes=8, dim=16, views=3, shots=(2, 4), seeds=(1, 2, 3),
                                 train_per_class=16, test_per_class=6, seed=3, name="world")


def _build(method: str, data, seed: int, overrides: dict | None = None):
    torch.manual_seed(seed)
    return build_method(method, make_options(method, {**SHORT, **(overrides or {})}), data)


def _load(cache: Path, shots: int, seeds: tuple[int, ...]):
    with CacheReader(cache) as reader:
        return [reader.load(shots, seed) for seed in seeds]


def _equal_states(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_the_fixed_shape_cross_entropy_is_torchs_in_value_and_gradient() -> None:
    """`mean_cross_entropy` (stacked and captured steps) against F.cross_entropy, float64, vmapped over 3 runs."""
    from torch.func import grad, vmap

    from lathadapter.adapter.methods.base import mean_cross_entropy

    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 16, 7, generator=generator, dtype=torch.float64) * 5
    labels = torch.randint(7, (3, 16), generator=generator)
    torch_ce = torch.nn.functional.cross_entropy
    for form in (vmap, lambda f: vmap(grad(f))):  # the values, the gradients with respect to the logits
        torch.testing.assert_close(form(mean_cross_entropy)(logits, labels), form(torch_ce)(logits, labels),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n,views,epochs", [(7, 3, 5), (40, 1, 2), (1, 10, 3)])
def test_every_epochs_draws_at_once_are_the_draws_of_one_epoch_after_another(n: int, views: int, epochs: int) -> None:
    """The trainer's draws, restated one epoch at a time: a random view per sample, then a random order, from the run's
    generator; a batch's rows are sample·V + its view."""
    from lathadapter.adapter.trainer import epoch_orders

    generator = torch.Generator().manual_seed(11)
    expected = []
    for _ in range(epochs):
        view = torch.randint(views, (n,), generator=generator)
        order = torch.randperm(n, generator=generator)
        expected.append(torch.stack([order, torch.tensor([i * views + int(view[i]) for i in order.tolist()])]))
    got = epoch_orders(torch.Generator().manual_seed(11), n, views, epochs)
    assert got.shape == (epochs, 2, n) and torch.equal(got, torch.stack(expected))


@pytest.mark.parametrize("method", TRAINED)
def test_a_batch_of_one_is_the_plain_trainer_bit_for_bit(cache: Path, method: str) -> None:
    [data] = _load(cache, 4, (2,))
    alone, together = _build(method, data, 2), _build(method, data, 2)
    expected = train(alone, data, seed=2, select="val")
    [result] = train_together([Member(together, data, 2)], select="val")
    assert result.batch_mode == "lockstep" and result.batch_runs == 1
    assert _equal_states(alone, together)
    assert (result.steps, result.epochs, result.selected_epoch) == (expected.steps, expected.epochs,
                                                                    expected.selected_epoch)
    assert result.history == expected.history
    assert result.chosen == expected.chosen


@pytest.mark.parametrize("method", ["lathadapter", "clip-adapter"])
def test_lockstep_runs_with_different_seeds_subsets_and_options_equal_each_alone(cache: Path, method: str) -> None:
    """Members that differ in seed, subset and numeric options (lr: a parameter group each; λ or α: the forward pass)
    train in lockstep, and each ends exactly where it ends alone."""
    datas = _load(cache, 4, (1, 2, 3))
    numeric = {"lathadapter": [{}, {"lr": "0.003", "lambda_hier": "0.5"}, {"margin": "0.3", "weight_decay": "0.1"}],
               "clip-adapter": [{}, {"lr": "0.01"}, {"alpha": "0.6", "weight_decay": "0"}]}[method]
    alone = [_build(method, d, s, o) for d, s, o in zip(datas, (1, 2, 3), numeric, strict=True)]
    expected = [train(m, d, seed=s) for m, d, s in zip(alone, datas, (1, 2, 3), strict=True)]
    members = [Member(_build(method, d, s, o), d, s) for d, s, o in zip(datas, (1, 2, 3), numeric, strict=True)]
    results = train_together(members)
    for plain, member, want, got in zip(alone, members, expected, results, strict=True):
        assert got.batch_mode == "lockstep" and got.batch_runs == 3
        assert _equal_states(plain, member.method)
        assert got.history == want.history


@pytest.mark.parametrize("method", TRAINED)
def test_stacked_runs_equal_each_alone_within_float_rounding(cache: Path, method: str) -> None:
    """Runs of a stackable method that differ in seed and subset train as one vmapped model. Tolerance: every
    parameter within 1e-4 of training alone (batched products round in another order; measured differences are
    about 1e-7), the same test predictions, the same epoch selected on val."""
    datas = _load(cache, 4, (1, 2, 3))
    alone = [_build(method, d, s) for d, s in zip(datas, (1, 2, 3), strict=True)]
    expected = [train(m, d, seed=s, select="val") for m, d, s in zip(alone, datas, (1, 2, 3), strict=True)]
    members = [Member(_build(method, d, s), d, s) for d, s in zip(datas, (1, 2, 3), strict=True)]
    assert len({stack_key(m) for m in members}) == 1 and stack_key(members[0]) is not None
    results = train_together(members, select="val", stack=True)
    for plain, member, want, got, data in zip(alone, members, expected, results, datas, strict=True):
        assert got.batch_mode == "stacked" and got.steps == want.steps
        assert got.selected_epoch == want.selected_epoch
        first, second = plain.state_dict(), member.method.state_dict()
        for name in first:
            assert torch.allclose(first[name], second[name], rtol=0, atol=1e-4), name
        with torch.no_grad():
            assert torch.equal(plain.logits(data.test_features).argmax(1),
                               member.method.logits(data.test_features).argmax(1))
        losses = [h["loss"] for h in want.history], [h["loss"] for h in got.history]
        assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-6)


CROSS_MODAL_STARTS = [{"init": "random"}, {"classifier": "adapter"}, {"classifier": "adapter", "init": "random"}]


@pytest.mark.parametrize("overrides", CROSS_MODAL_STARTS, ids=["-".join(o.values()) for o in CROSS_MODAL_STARTS])
def test_cross_modal_s_random_starts_train_alike_alone_in_a_batch_of_one_and_stacked(cache: Path,
                                                                                     overrides: dict) -> None:
    """cross-modal's random values (W under init=random, the adapter's layers) are drawn from each run's seed when
    it is built: each seed its own start, and the same run equal alone and in a batch of one (bit for bit) and
    stacked with other seeds (within float rounding, as above)."""
    datas = _load(cache, 4, (1, 2, 3))
    starts = [_build("cross-modal", d, s, overrides).state_dict() for d, s in zip(datas, (1, 2, 3), strict=True)]
    random = [k for k in starts[0] if k.startswith("adapter") or (k == "weight" and "init" in overrides)]
    assert random and all(not torch.equal(starts[0][k], starts[i][k]) for k in random for i in (1, 2))
    alone = [_build("cross-modal", d, s, overrides) for d, s in zip(datas, (1, 2, 3), strict=True)]
    expected = [train(m, d, seed=s, select="val") for m, d, s in zip(alone, datas, (1, 2, 3), strict=True)]
    [one] = train_together([Member(single := _build("cross-modal", datas[0], 1, overrides), datas[0], 1)],
                           select="val")
    assert one.batch_mode == "lockstep" and _equal_states(alone[0], single) and one.history == expected[0].history
    members = [Member(_build("cross-modal", d, s, overrides), d, s) for d, s in zip(datas, (1, 2, 3), strict=True)]
    results = train_together(members, select="val", stack=True)
    for plain, member, want, got in zip(alone, members, expected, results, strict=True):
        assert got.batch_mode == "stacked" and got.selected_epoch == want.selected_epoch
        first, second = plain.state_dict(), member.method.state_dict()
        for name in first:
            assert torch.allclose(first[name], second[name], rtol=0, atol=1e-4), name


@pytest.mark.parametrize("method", ["clip-adapter", "lathadapter"])
def test_stacked_batches_read_member_by_member_equal_the_joined_read_bit_for_bit(
        cache: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch is gathered from the members' rows joined into one tensor, or (sets over JOIN_BYTES) from each
    member's rows in turn: the same features and labels, so the same training to the last bit."""
    from lathadapter.adapter import batched

    datas = _load(cache, 4, (1, 2, 3))
    trained = []
    for join_bytes in (batched.JOIN_BYTES, 0):
        monkeypatch.setattr(batched, "JOIN_BYTES", join_bytes)
        members = [Member(_build(method, d, s), d, s) for d, s in zip(datas, (1, 2, 3), strict=True)]
        train_together(members, stack=True)
        trained.append(members)
    for joined, apart in zip(*trained, strict=True):
        assert _equal_states(joined.method, apart.method)


def test_members_that_take_other_steps_are_refused(cache: Path) -> None:
    [small], [large] = _load(cache, 2, (1,)), _load(cache, 4, (1,))
    members = [Member(_build("taskres", small, 1), small, 1), Member(_build("taskres", large, 1), large, 1)]
    assert lockstep_key(members[0], "last", "augmented") != lockstep_key(members[1], "last", "augmented")
    with pytest.raises(ValueError, match="train the others alone"):
        train_together(members)


def test_batches_group_compatible_runs_and_keep_grid_order_alone(cache: Path, tmp_path: Path) -> None:
    spec = GridSpec([str(cache)], ["zeroshot", "taskres"], [2, 4], [1, 2, 3], options={"taskres.lr": ["0.01", "0.1"]})
    _, keyed = prepare(expand(spec), tmp_path)
    assert batches(keyed, 1) == [[item] for item in keyed]
    cut = batches(keyed, 4)
    assert sorted(item.key for batch in cut for item in batch) == sorted(item.key for item in keyed)
    for batch in cut:
        assert 1 <= len(batch) <= 4
        assert len({(i.run.config.method, i.run.config.shots) for i in batch}) == 1
    # taskres at 2 shots: 2 lrs × 3 seeds; the runs of one lr come together (they stack): 4 + 2
    taskres = [b for b in cut if b[0].run.config.method == "taskres" and b[0].run.config.shots == 2]
    assert [len(b) for b in taskres] == [4, 2]
    assert [r.run.config.options.lr for r in taskres[0]] == [0.01, 0.01, 0.01, 0.1]


def _metrics(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/metrics.json")}


@pytest.mark.parametrize("stack", ["on", "auto"])
def test_a_batched_grid_gives_each_run_the_metrics_of_a_one_at_a_time_grid(cache: Path, tmp_path: Path,
                                                                            stack: str) -> None:
    """Every method, with an lr axis. Stacking on (as on a GPU): runs of one lr stack, the rest run in lockstep;
    on the CPU's default (`auto`) every batch runs in lockstep. Methods that do not train run alone. Tolerance:
    lockstep and alone are bit for bit (same accuracy, same loss history); stacked runs are within one test image
    of accuracy and 1e-3 of the final loss. Each run's key is the same either way; its `config.json` records the
    execution it trained under."""
    methods = ["zeroshot", "tip-adapter", "gda", "lp++", "ape", *TRAINED]
    options = {**{f"{m}.epochs": ["2"] for m in (*TRAINED, "lp++")}, **{f"{m}.min_steps": ["0"] for m in TRAINED},
               **{f"{m}.lr": ["0.001", "0.01"] for m in TRAINED}}
    spec = GridSpec([str(cache)], methods, [2, 4], [1, 2, 3], options=options, select=["val"])
    one = launch(spec, tmp_path / "one", progress=False)
    together = launch(spec, tmp_path / "together", Execution(batch_runs=4, stack=stack), progress=False)
    assert one["done"] == together["done"] == one["runs"]
    alone, batched = _metrics(tmp_path / "one"), _metrics(tmp_path / "together")
    assert alone.keys() == batched.keys()
    one_image = 100 / 48  # 8 classes × 6 test images
    modes = set()
    for key, expected in alone.items():
        got = batched[key]
        assert expected["batch_mode"] == "alone" and expected["batch_runs"] == 1
        modes.add(got["batch_mode"])
        if got["batch_mode"] == "stacked":
            assert abs(got["accuracy"]["all"] - expected["accuracy"]["all"]) <= one_image + 1e-9, key
            assert got["history"][-1]["loss"] == pytest.approx(expected["history"][-1]["loss"], rel=1e-3, abs=1e-5)
        else:  # the ECE and its bins too, from the same chunked pass over the same model
            assert got["accuracy"] == expected["accuracy"], key
            assert (got["ece"], got["reliability"]) == (expected["ece"], expected["reliability"]), key
            assert got["history"] == expected["history"], key
        assert got["steps"] == expected["steps"] and got["chosen"].keys() == expected["chosen"].keys()
    assert modes == ({"alone", "lockstep", "stacked"} if stack == "on" else {"alone", "lockstep"})
    by_method: dict[str, set[str]] = {}
    for key, metrics in batched.items():
        method = json.loads((tmp_path / "together" / "runs" / key / "config.json").read_text())["method"]
        by_method.setdefault(method, set()).add(metrics["batch_mode"])
    # 3 seeds of one lr stack, the batch's 4th member (another lr) trains in lockstep
    assert by_method["clip-adapter"] == by_method["lathadapter"] == ({"stacked", "lockstep"} if stack == "on"
                                                                     else {"lockstep"})
    assert by_method["zeroshot"] == by_method["gda"] == by_method["lp++"] == by_method["ape"] == {"alone"}
    for key, metrics in batched.items():
        recorded = json.loads((tmp_path / "together" / "runs" / key / "config.json").read_text())["execution"]
        assert recorded == {"device": "cpu", "threads": torch.get_num_threads(), "workers": 1, "trainers": 1,
                            "backend": "local", "batch_runs": 4, "stack": "on" if stack == "on" else "off",
                            "kernels": kernels.get_backend(), "graphs": "off", "batch_mode": metrics["batch_mode"]}
        alone_record = json.loads((tmp_path / "one" / "runs" / key / "config.json").read_text())["execution"]
        assert (alone_record["batch_runs"], alone_record["batch_mode"]) == (1, "alone")


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import lathadapter.experiments.local as local
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.launch import launch
    from lathadapter.experiments.spec import GridSpec
    saved = []
    real_save = local.save_trained
    def save_then_die(*args, **kwargs):
        if len(saved) == 3:  # the second batch's second run: killed before it is saved
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(*args, **kwargs)
        saved.append(args[1].key)
    local.save_trained = save_then_die
    spec = GridSpec([sys.argv[1]], ["lathadapter", "taskres"], [2, 4], [1, 2],
                         options={"epochs": ["2"], "min_steps": ["0"]})
    launch(spec, Path(sys.argv[2]), Execution(batch_runs=2), progress=False)
""")


def test_resume_after_a_killed_batched_grid_skips_exactly_the_finished_runs(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(cache), str(out)], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = set(_metrics(out))
    assert len(finished) == 3, "two batches of two began; the kill came before the fourth run was saved"
    before = {key: (out / "runs" / key / "metrics.json").stat().st_mtime_ns for key in finished}
    spec = GridSpec([str(cache)], ["lathadapter", "taskres"], [2, 4], [1, 2], options={"epochs": ["2"],
                                                                                       "min_steps": ["0"]})
    summary = launch(spec, out, Execution(batch_runs=2), progress=False)
    assert (summary["runs"], summary["skipped"], summary["done"]) == (8, 3, 5)
    assert {key: (out / "runs" / key / "metrics.json").stat().st_mtime_ns for key in finished} == before
    assert len(_metrics(out)) == 8
    assert os.path.exists(out / "results.csv")


def test_the_command_line_takes_batch_runs_and_refuses_less_than_one(cache: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lathadapter.cli import app

    common = ["grid", "--cache", str(cache), "--method", "taskres", "--shots", "2", "--seeds", "1,2,3",
              "--set", "epochs=2", "--set", "min_steps=0", "--workers", "1"]
    refused = CliRunner().invoke(app, [*common, "--batch-runs", "0", "--out", str(tmp_path / "refused")])
    assert refused.exit_code != 0
    assert "--batch-runs 0: must be at least 1" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "refused" / "runs").exists()
    done = CliRunner().invoke(app, [*common, "--batch-runs", "2", "--out", str(tmp_path / "grid")])
    assert done.exit_code == 0, done.output
    with (tmp_path / "grid" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["batch_runs"], r["batch_mode"]) for r in rows) == [("1", "alone"), ("2", "lockstep"),
                                                                         ("2", "lockstep")]
