"""Where a LatHAdapter training step goes: milliseconds per step (forward, backward, AdamW) on the synthetic
Caltech101-like and ImageNet-like caches of `benchmarks/fit.py`, for the loss's parts switched on one by one, for
each radius (`radius=head|norm|kind`), for the plain reference (`impl=reference`, explicit lifted points), and for the
step's matrix products alone (the same shapes, nothing else: the floor of any implementation of the method in
float32). On CUDA, where the loss stage runs as Triton kernels, two more rows force the PyTorch twins instead
(kernels backend torch), and two take the step as the trainer does there, captured in a CUDA graph.

    python benchmarks/lathadapter_step.py [--only caltech|imagenet] [--steps 30] [--repeats 5] [--device cpu|cuda]
                                          [--clock wall|cpu]

Each row is timed `repeats` times over `steps` steps, interleaved with the other rows so that a noisy machine slows
them alike; the table gives the minimum and the median. With --device cuda the data and every tensor of a row live
on the GPU, the GPU is synchronised before each timer read, and the results go to lathadapter_step_cuda.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from fit import cache_for  # benchmarks/ is the script directory

from lathadapter import kernels
from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.trainer import clear_grads  # the first optimiser built (before timing) pays torch._dynamo
from lathadapter.cache.store import CacheReader

DEFAULT = "default: + hyperbolic CE (radius = kind, lambda_hier = 0)"
ROWS = {
    "adapters + prototypes + CE (lambda_hyp = lambda_hier = 0)": {"lambda_hyp": 0.0},
    DEFAULT: {},
    "full (lambda_hier = 0.1), hier = cone, radius = kind": {"lambda_hier": 0.1},
    "full (lambda_hier = 0.1), hier = triplet, radius = kind": {"lambda_hier": 0.1, "hier": "triplet"},
    "full (lambda_hier = 0.1), hier = cone, radius = head": {"lambda_hier": 0.1, "radius": "head"},
    "full (lambda_hier = 0.1), hier = cone, radius = norm": {"lambda_hier": 0.1, "radius": "norm"},
    "reference (impl = reference), default options": {"impl": "reference"},
}
FLOOR = "matrix products alone (floor)"
# On CUDA the loss stage runs as Triton kernels (kernels backend auto); these rows force the PyTorch twins there
CUDA_ROWS = {
    "default, captured in a CUDA graph (stacked.py's fixed-shape form)": {"graph": True},
    "radius = head, captured in a CUDA graph": {"radius": "head", "graph": True},
    "default, kernels = torch (fused.py's PyTorch twin)": {"kernels": "torch"},
    "radius = head, kernels = torch (fused.py's PyTorch twin)": {"radius": "head", "kernels": "torch"},
}


def method_step(data, options: dict) -> Callable[[torch.Generator], None]:
    """One training step of LatHAdapter on a random batch of 256 train features (drawn on the CPU, as the trainer
    does, and moved to the data's device); the key `kernels` names a kernels backend for the step."""
    options = dict(options)
    backend = options.pop("kernels", None)
    graph = options.pop("graph", False)
    method = create_method("lathadapter", data, **options)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, fused=True)
    device = data.train_labels.device
    if graph:
        return graphed_step(method, params, optimizer, data)

    def step(generator: torch.Generator) -> None:
        batch = torch.randint(len(data.train_labels), (256,), generator=generator).to(device)
        x, y = data.train_features.index_select(0, batch), data.train_labels.index_select(0, batch)  # as the trainer
        if backend is None:
            loss = method.loss(x, y)[0]
        else:
            with kernels.backend(backend):
                loss = method.loss(x, y)[0]
        clear_grads(params)  # as the trainer does
        loss.backward()
        optimizer.step()

    return step


def graphed_step(method, params, optimizer, data) -> Callable[[torch.Generator], None]:
    """The same step as the trainer takes it on CUDA (`adapter.graphed.Graphed`): the fixed-shape loss, captured
    after `WARMUP_STEPS` uncaptured steps, replayed with the batch's indices copied in."""
    from lathadapter.adapter.graphed import Graphed

    class One:  # the trainer's Lockstep of one run, reduced to what Graphed calls
        def __init__(self) -> None:
            self.params, self.optimizer = params, optimizer
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)

        def losses_of(self, indices):
            batch, rows = indices[:, 0]  # [2, 1, b]: one member's samples and rows
            loss, parts = method.loss(data.train_features.index_select(0, rows), data.train_labels[batch])
            return loss, [loss], [parts]

        def backward(self, total: torch.Tensor) -> None:
            total.backward()

        def sync(self) -> None:
            pass

    # each step's random batch is copied in (the path of an epoch's short last batch; full batches read an epoch's
    # index table instead, which saves the host that copy, not the device any work)
    step_of = Graphed(One(), 10_000, [method], capture=data.train_labels.is_cuda, batch_size=256)
    device = data.train_labels.device

    def step(generator: torch.Generator) -> None:
        batch = torch.randint(len(data.train_labels), (256,), generator=generator).to(device)
        step_of.take([(batch, batch)])

    return step


def matmul_floor(data) -> Callable[[torch.Generator], None]:
    """The step's matrix products (forward and backward) in their shapes, with nothing around them."""
    classes, dim = data.text_features.shape
    hidden, attributes = dim // 4, 16
    g = torch.Generator().manual_seed(0)
    device = data.train_labels.device
    r = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    x, h, t, th = r(256, dim), r(256, hidden), r(classes, dim), r(classes, hidden)
    w1, w2, a, p = r(hidden, dim), r(dim, hidden), r(attributes, dim), r(classes, dim)
    gb, gc, gca, w = r(256, classes), r(256, dim), r(classes, dim), r(classes, attributes)

    def step(generator: torch.Generator) -> None:
        for inputs, hid, grad in ((x, h, gc), (t, th, gca)):  # the visual and the text adapter
            inputs @ w1.t(), hid @ w2.t()  # forward
            grad.t() @ hid, grad @ w2, (grad[:, :hidden]).t() @ inputs  # backward: dW2, dhidden, dW1
        x @ p.t(), gb @ p, gb.t() @ x  # image–prototype cosines, forward and backward
        t @ a.t(), w @ a, x @ a.t()  # associations and attribute-refined prototypes (small)

    return step


def time_rows(rows: dict[str, Callable], steps: int, repeats: int, device: str = "cpu", cpu_clock: bool = False
              ) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in rows}
    generator = torch.Generator().manual_seed(0)

    def clock() -> float:
        if device == "cuda":
            torch.cuda.synchronize()  # the timer reads finished GPU work (once per timed block, not per step)
        return time.process_time() if cpu_clock else time.perf_counter()

    for step in rows.values():  # warm-up
        for _ in range(3):
            step(generator)
    for _ in range(repeats):
        for name, step in rows.items():
            start = clock()
            for _ in range(steps):
                step(generator)
            times[name].append((clock() - start) / steps * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["caltech", "imagenet"], action="append")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time blocks by the wall clock or, on the CPU, by the process's CPU time (a loaded "
                             "machine: with OMP_NUM_THREADS=1 the steps' own time)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default benchmarks/results/lathadapter_step.json, "
                             "lathadapter_step_cuda.json with --device cuda)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    cuda = args.device == "cuda"
    if cuda and args.clock == "cpu":
        parser.error("--clock cpu times CPU work: use it with --device cpu")
    out = args.out or Path(__file__).parent / "results" / ("lathadapter_step_cuda.json" if cuda else
                                                           "lathadapter_step.json")
    where = f"CUDA {torch.cuda.get_device_name()}" if cuda else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}; ms per step (batch 256, "
          f"{args.clock} clock)")
    results = []
    for name in args.only or ["caltech", "imagenet"]:
        with CacheReader(cache_for(name)) as reader:
            data = reader.load(16, 1, device=args.device)
        rows = {label: method_step(data, options) for label, options in (ROWS | (CUDA_ROWS if cuda else {})).items()}
        rows[FLOOR] = matmul_floor(data)
        times = time_rows(rows, args.steps, args.repeats, args.device, args.clock == "cpu")
        print(f"\n{name}-like: {data.num_classes} classes, D = {data.text_features.shape[1]}")
        print(f"{'step':<62} {'min ms':>8} {'median ms':>10}")
        for label, values in times.items():
            print(f"{label:<62} {min(values):8.2f} {statistics.median(values):10.2f}")
            results.append({"cache": name, "row": label, "min_ms": min(values),
                            "median_ms": statistics.median(values)})
        floor = {"min": min(times[FLOOR]), "median": statistics.median(times[FLOOR])}
        print(f"default step / floor: {min(times[DEFAULT]) / floor['min']:.2f}x (min), "
              f"{statistics.median(times[DEFAULT]) / floor['median']:.2f}x (median)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
