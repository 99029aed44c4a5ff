"""The captured training step (`adapter.graphed`): the schedule it precomputes is the recipe's cosine, re-stated here;
its step (the fixed-shape loss, a tensor lr, the update) trains as the plain trainer does, within float rounding, on
the CPU without capture and, on a CUDA device, captured (the same step bit for bit as uncaptured)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lathadapter import kernels
from lathadapter.adapter.batched import Member, train_together
from lathadapter.adapter.catalog import build_method, make_options
from lathadapter.adapter.graphed import graphable, graphs_on, schedule_table
from lathadapter.adapter.recipes import TrainRecipe, build_optimizer, build_scheduler
from lathadapter.adapter.trainer import train
from lathadapter.cache.store import CacheReader, FewShotData
from lathadapter.cache.synthetic import write_synthetic_cache

SHORT = {"epochs": "4", "min_steps": "0", "batch_size": "24"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("graphed")
    return write_synthetic_cache(folder / "world.h5", num_classes=8, dim=16, views=3, shots=(4,), seeds=(1, 2),
                                 train_per_class=16, test_per_class=6, seed=5, name="world")


def _load(cache: Path, seed: int, device: str = "cpu") -> FewShotData:
    with CacheReader(cache) as reader:
        return reader.load(4, seed, device=device)


def _build(method: str, data: FewShotData, seed: int, overrides: dict | None = None):
    torch.manual_seed(seed)
    return build_method(method, make_options(method, {**SHORT, **(overrides or {})}), data)


def test_the_schedule_table_is_the_cosine_of_every_step() -> None:
    """CosineAnnealingLR over T steps: lr_s = lr (1 + cos(π s / T)) / 2 for each group, stepped once per step."""
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    recipes = [TrainRecipe(lr=1e-2), TrainRecipe(lr=3e-4)]
    optimizer = build_optimizer([([params[0]], recipes[0]), ([params[1]], recipes[1])])
    scheduler = build_scheduler(optimizer, recipes, epochs=5, steps_per_epoch=4)
    table = schedule_table(optimizer, scheduler, 20)
    for s, row in enumerate(table):
        for lr, recipe in zip(row, recipes, strict=True):
            assert lr == pytest.approx(recipe.lr * (1 + math.cos(math.pi * s / 20)) / 2, rel=1e-12, abs=1e-15)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 3e-4]  # put back


def test_the_schedule_table_follows_dassls_warmup_then_cosine_by_epoch() -> None:
    """`cosine-epoch` (CLIP-Adapter's official schedule): the constant warm-up lr in the first epoch, then
    lr (1 + cos(π (e − 1) / E)) / 2 for epoch e, the same value for every step of an epoch."""
    param = torch.nn.Parameter(torch.zeros(2))
    recipe = TrainRecipe(optimizer="sgd", lr=2e-3, momentum=0.9, schedule="cosine-epoch", warmup_epochs=1,
                         warmup_lr=1e-5)
    optimizer = build_optimizer([([param], recipe)])
    table = schedule_table(optimizer, build_scheduler(optimizer, [recipe], epochs=6, steps_per_epoch=3), 18)
    for s, [lr] in enumerate(table):
        epoch = s // 3
        want = 1e-5 if epoch == 0 else 2e-3 * (1 + math.cos(math.pi * (epoch - 1) / 6)) / 2
        assert lr == pytest.approx(want, rel=1e-12), s


def test_only_fixed_shape_methods_with_the_trainers_optimiser_are_captured(cache: Path) -> None:
    data = _load(cache, 1)
    assert graphable([_build("lathadapter", data, 1)])
    assert graphable([_build("lathadapter", data, 1, {"radius": "head", "hier": "triplet"})])
    assert not graphable([_build("lathadapter", data, 1, {"hyp_metric": "euclid"})])  # not a fixed-shape form
    assert graphable([_build("clip-adapter", data, 1)])  # official: SGD, fused with a tensor lr
    assert not graphable([build_method("zeroshot", make_options("zeroshot", {}), data)])  # nothing to capture


def test_the_graphs_switch_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATHADAPTER_GRAPHS", raising=False)
    monkeypatch.delenv("LATHADAPTER_KERNELS", raising=False)
    assert not graphs_on(torch.device("cpu")) and graphs_on(torch.device("cuda"))
    with kernels.backend("triton"):  # a kernels backend named explicitly: its twin, uncaptured
        assert not graphs_on(torch.device("cuda"))
    monkeypatch.setenv("LATHADAPTER_GRAPHS", "on")
    assert graphs_on(torch.device("cpu"))
    monkeypatch.setenv("LATHADAPTER_GRAPHS", "off")
    assert not graphs_on(torch.device("cuda"))
    assert graphs_on(torch.device("cuda"), "auto", "auto") and not graphs_on(torch.device("cuda"), "auto", "torch")
    assert graphs_on(torch.device("cpu"), "on", "torch") and not graphs_on(torch.device("cuda"), "off", "auto")
    monkeypatch.setenv("LATHADAPTER_GRAPHS", "always")
    with pytest.raises(ValueError, match="LATHADAPTER_GRAPHS='always' is not valid; choose one of: auto, on, off"):
        graphs_on(torch.device("cpu"))


CASES = [("lathadapter", {}), ("lathadapter", {"lambda_hier": "0.5", "radius": "head", "lambda_anchor": "0.1"}),
         ("lathadapter", {"lambda_hier": "0.5", "hier": "triplet"}),
         ("taskres", {"recipe": "official"}), ("tip-adapter-f", {}), ("clip-adapter", {}),
         ("linear-probe", {"epochs": "6"}), ("clap", {"epochs": "6"}), ("ape-t", {"epochs": "6", "lr": "0.01"}),
         ("cross-modal", {"min_steps": "40"}), ("cross-modal", {"min_steps": "40", "classifier": "adapter",
                                                                "init": "random", "lr": "0.01"}),
         # several full batches an epoch: 32 samples in 6 batches of 5 and one of 2; in 8 of 4 (CLIP-Adapter's
         # recipe drops a short last batch)
         ("lathadapter", {"batch_size": "5", "lambda_hier": "0.5"}), ("clip-adapter", {"batch_size": "4"})]


def _states_close(a: torch.nn.Module, b: torch.nn.Module, rtol: float, atol: float) -> None:
    first, second = a.state_dict(), b.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=rtol, atol=atol, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("method,overrides", CASES, ids=[f"{m}-{'-'.join(o)}" for m, o in CASES])
def test_the_graphed_step_trains_as_the_plain_trainer(cache: Path, method: str, overrides: dict) -> None:
    """Uncaptured on the CPU (the same code that CUDA captures): every parameter after 4 epochs, the per-epoch
    losses and the epoch `select=val` keeps equal the plain trainer's within float rounding (the fixed-shape loss
    sums in another order; the lr is a float32 tensor)."""
    data = _load(cache, 2)
    plain, graphed = _build(method, data, 2, overrides), _build(method, data, 2, overrides)
    expected = train(plain, data, seed=2, select="val", graphs=False)
    got = train(graphed, data, seed=2, select="val", graphs=True)
    assert graphed.fixed_shapes and not plain.fixed_shapes and not got.cuda_graph  # no capture on the CPU
    assert (got.steps, got.epochs, got.selected_epoch) == (expected.steps, expected.epochs, expected.selected_epoch)
    _states_close(plain, graphed, rtol=1e-4, atol=1e-6)
    for want, have in zip(expected.history, got.history, strict=True):
        assert have.keys() == want.keys()
        for key in want:
            assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def test_stacked_runs_take_the_graphed_step_too(cache: Path) -> None:
    """Two seeds stacked (vmapped) under the graphed step equal each run trained alone, within float rounding."""
    datas = [_load(cache, 1), _load(cache, 2)]
    alone = [_build("lathadapter", d, s) for d, s in zip(datas, (1, 2), strict=True)]
    for method, d, s in zip(alone, datas, (1, 2), strict=True):
        train(method, d, seed=s, graphs=False)
    members = [Member(_build("lathadapter", d, s), d, s) for d, s in zip(datas, (1, 2), strict=True)]
    results = train_together(members, stack=True, graphs=True)
    assert [r.batch_mode for r in results] == ["stacked", "stacked"]
    for plain, member in zip(alone, members, strict=True):
        _states_close(plain, member.method, rtol=1e-4, atol=1e-6)


def test_impl_reference_trains_through_the_reference_even_where_steps_are_captured_or_stacked(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--set impl=reference` asks for the reference loss: a step that would be captured (graphs on) or stacked
    (two seeds together) runs `reference_loss` at every step and never the fixed-shape form, and trains each run as
    alone."""
    from lathadapter.adapter.methods.lathadapter import method as lathadapter_method

    calls = {"reference": 0, "masked": 0}
    reference, masked = lathadapter_method.reference_loss, lathadapter_method.masked_loss

    def counted(name, loss):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[name] += 1
            return loss(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(lathadapter_method, "reference_loss", counted("reference", reference))
    monkeypatch.setattr(lathadapter_method, "masked_loss", counted("masked", masked))
    overrides = {"impl": "reference", "epochs": "2", "min_steps": "0"}
    datas = [_load(cache, 1), _load(cache, 2)]
    alone = [_build("lathadapter", d, s, overrides) for d, s in zip(datas, (1, 2), strict=True)]
    assert not graphable(alone)
    steps = [train(m, d, seed=s, graphs=False).steps for m, d, s in zip(alone, datas, (1, 2), strict=True)]
    graphed = train(_build("lathadapter", datas[0], 1, overrides), datas[0], seed=1, graphs=True)
    assert not graphed.cuda_graph and graphed.steps == steps[0]
    members = [Member(_build("lathadapter", d, s, overrides), d, s) for d, s in zip(datas, (1, 2), strict=True)]
    results = train_together(members, stack=True, graphs=True)
    assert [r.batch_mode for r in results] == ["lockstep", "lockstep"]
    assert calls == {"reference": 2 * sum(steps) + steps[0], "masked": 0}
    for plain, member in zip(alone, members, strict=True):  # lockstep: each run bit for bit as alone
        for key, value in plain.state_dict().items():
            assert torch.equal(value, member.method.state_dict()[key]), key


class _StandIn:
    """A CPU stand-in for a captured CUDA graph: its capture ran the step once already (a real capture runs nothing,
    and `Graphed._take` replays right after capturing, so the first replay does nothing); every later replay runs the
    captured step again, reading the same index buffer, table and counters, and writes its outputs into the captured
    ones, as a replay overwrites them."""

    def __init__(self, step, outputs) -> None:
        self.step, self.outputs, self.fresh = step, outputs, True

    def replay(self) -> None:
        if self.fresh:
            self.fresh = False
            return
        losses, parts = self.step()
        for old, new in zip(self.outputs[0], losses, strict=True):
            old.copy_(new)
        for old, new in zip(self.outputs[1], parts, strict=True):
            for key in old:
                old[key].copy_(new[key])


def _replayed(members: list[Member], plan, stacked: bool):
    """`Graphed` taking its capture path (warm-up, one graph per batch size, the epoch table, the short batch's
    buffer) with `_StandIn` for the CUDA graph."""
    from lathadapter.adapter.batched import Stacked
    from lathadapter.adapter.graphed import Graphed
    from lathadapter.adapter.trainer import Lockstep

    class Replayed(Graphed):
        def _capture(self, indices):
            def step():
                for param in self.params:
                    param.grad = None  # a replay writes the gradients; it never adds to them
                return self._step(indices)

            outputs = step()
            return _StandIn(step, outputs), indices, outputs

    inner = (Stacked if stacked else Lockstep)(members, plan)
    step = Replayed(inner, plan.epochs * len(plan.starts), [m.method for m in members], capture=False,
                    batch_size=plan.batch_size)
    step.capture = True  # the capture path, with no CUDA stream: `_capture` above
    return step


BOOKKEEPING_CASES = [("lathadapter", {"batch_size": "5"}), ("clip-adapter", {"batch_size": "5"}),
                     ("tip-adapter-f", {"batch_size": "5"})]


@pytest.mark.parametrize("stacked", [False, True], ids=["one-run", "stacked"])
@pytest.mark.parametrize("method,overrides", BOOKKEEPING_CASES, ids=[m for m, _ in BOOKKEEPING_CASES])
def test_the_capture_bookkeeping_replays_the_uncaptured_steps_on_the_cpu(cache: Path, method: str, overrides: dict,
                                                                          stacked: bool) -> None:
    """The captured path's bookkeeping on the CPU (graphs stood in for by `_StandIn`: a replay reruns the captured
    step): several full batches an epoch and a short one (CLIP-Adapter's recipe drops it), one run or two stacked,
    train every parameter bit for bit as the same step uncaptured, with the same loss history, and the graphs are one
    per batch size."""
    from lathadapter.adapter.batched import Stacked
    from lathadapter.adapter.graphed import Graphed
    from lathadapter.adapter.trainer import Lockstep, Plan, TrainResult, optimise

    seeds = (1, 2) if stacked else (2,)
    datas = [_load(cache, seed) for seed in seeds]

    def uncaptured(members: list[Member], plan: Plan) -> Graphed:
        inner = (Stacked if stacked else Lockstep)(members, plan)
        return Graphed(inner, plan.epochs * len(plan.starts), [m.method for m in members], capture=False,
                       batch_size=plan.batch_size)

    def trained(make_step) -> tuple[list[Member], list[TrainResult], Graphed, Plan]:
        members = [Member(_build(method, d, s, overrides), d, s) for d, s in zip(datas, seeds, strict=True)]
        results = [TrainResult() for _ in members]
        made: list[tuple[Graphed, Plan]] = []

        def make(members: list[Member], plan: Plan) -> Graphed:
            made.append((make_step(members, plan), plan))
            return made[-1][0]

        optimise(members, make, "last", "augmented", results, graphs=False)
        return members, results, *made[0]

    plain, plain_results, _, _ = trained(uncaptured)
    replayed, replayed_results, step, plan = trained(lambda members, plan: _replayed(members, plan, stacked))
    short = [plan.n - start for start in plan.starts if start + plan.batch_size > plan.n]
    assert plan.n > 2 * plan.batch_size and sorted(step.graphs) == [-1, *short], "one graph per batch size"
    assert step.count == plan.epochs * len(plan.starts)
    for first, second in zip(plain, replayed, strict=True):
        one, two = first.method.state_dict(), second.method.state_dict()
        assert all(torch.equal(one[k], two[k]) for k in one)
    for first, second in zip(plain_results, replayed_results, strict=True):
        assert first.history == second.history


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@cuda
@pytest.mark.parametrize("method,overrides", CASES, ids=[f"{m}-{'-'.join(o)}" for m, o in CASES])
def test_a_captured_step_is_the_uncaptured_step_bit_for_bit_on_cuda(cache: Path, method: str,
                                                                     overrides: dict) -> None:
    """On CUDA: replaying the captured graphs gives the uncaptured step's parameters exactly (the same kernels on the
    same data), and both equal the plain trainer's within float rounding."""
    from lathadapter.adapter.graphed import Graphed
    from lathadapter.adapter.trainer import Lockstep, Plan, TrainResult, optimise

    data = _load(cache, 2, "cuda")
    models = [_build(method, data, 2, overrides) for _ in range(3)]
    plain = train(models[0], data, seed=2, graphs=False)
    captured = train(models[1], data, seed=2, graphs=True)
    assert captured.cuda_graph and not plain.cuda_graph

    def uncaptured(members: list[Member], plan: Plan) -> Graphed:
        return Graphed(Lockstep(members, plan), plan.epochs * len(plan.starts), [m.method for m in members],
                       capture=False, batch_size=plan.batch_size)

    result = TrainResult()
    optimise([Member(models[2], data, 2)], uncaptured, "last", "augmented", [result], graphs=False)
    first, second = models[1].state_dict(), models[2].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    _states_close(models[0], models[1], rtol=1e-4, atol=1e-5)  # float32 on the GPU, against the Triton twin


@cuda
def test_stacked_runs_are_captured_on_cuda(cache: Path) -> None:
    datas = [_load(cache, 1, "cuda"), _load(cache, 2, "cuda")]
    alone = [_build("lathadapter", d, s) for d, s in zip(datas, (1, 2), strict=True)]
    for method, d, s in zip(alone, datas, (1, 2), strict=True):
        train(method, d, seed=s, graphs=False)
    members = [Member(_build("lathadapter", d, s), d, s) for d, s in zip(datas, (1, 2), strict=True)]
    results = train_together(members, stack=True, graphs=True)
    assert all(r.cuda_graph and r.batch_mode == "stacked" for r in results)
    for plain, member in zip(alone, members, strict=True):
        _states_close(plain, member.method, rtol=1e-4, atol=1e-5)


@cuda
def test_trainer_threads_on_cuda_train_each_run_as_one_thread_does(cache: Path, tmp_path: Path) -> None:
    """`--trainers 3 --device cuda`: three trainer threads, each on its own stream, capturing while the others
    replay; and `--workers 2 --trainers 2`: two worker processes, each with its own CUDA context and two threads.
    Every run's row equals the one-thread grid's (the same kernels on the same data, only interleaved)."""
    import csv

    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.launch import launch
    from lathadapter.experiments.spec import GridSpec

    spec = GridSpec([str(cache)], ["clip-adapter", "tip-adapter-f", "lathadapter"], [4], [1, 2],
                    options={"epochs": ["5", "6"], "min_steps": ["0"]})  # 1 step an epoch: 3 warm-up, then replays
    tables = []
    for name, workers, trainers in (("one", 1, 1), ("three", 1, 3), ("processes", 2, 2)):
        summary = launch(spec, tmp_path / name, Execution(device="cuda", workers=workers, trainers=trainers,
                                                          batch_runs=2), progress=False)
        assert summary["done"] == 12
        with (tmp_path / name / "results.csv").open() as f:
            tables.append({row["key"]: {k: v for k, v in row.items() if not k.endswith("seconds")}
                           for row in csv.DictReader(f)})
    assert tables[0] == tables[1] == tables[2]
    assert {row["cuda_graph"] for row in tables[0].values()} == {"True"}
