"""Fused Poincaré kernels against unfused PyTorch compositions: time and peak memory, forward and forward+backward.

    python benchmarks/kernels.py                  # CPU: the PyTorch reference path (what the CPU runs)
    python benchmarks/kernels.py --device cuda    # Triton (fused) vs eager vs torch.compile of the reference

Every row also gives the fused path's analytic extra memory (what the Triton kernels allocate beyond their inputs),
so the saving can be read off on any machine. Prints a markdown table and writes the numbers to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lathadapter import kernels
from lathadapter.kernels.geometry import pairwise_distance_reference
from lathadapter.kernels.hierarchy import edge_energy_reference, separation_loss_reference

SIZES = [(256, 100, 512), (1024, 1000, 512), (4096, 1000, 512)]  # (M children / rows, N parents / columns, D)
OPS = ("pairwise_distance", "separation_loss", "edge_energy_cone")
CURVATURE = 1.0
FLOAT = 4  # bytes


def make_inputs(m: int, n: int, dim: int, device: str) -> dict[str, torch.Tensor]:
    """Points lifted as in training (children at scale 1, parents at 0.3), parent indices and edge weights."""
    generator = torch.Generator().manual_seed(0)
    children = kernels.expmap0(F.normalize(torch.randn(m, dim, generator=generator), dim=-1), CURVATURE)
    parents = kernels.expmap0(0.3 * F.normalize(torch.randn(n, dim, generator=generator), dim=-1), CURVATURE)
    weights = torch.softmax(torch.randn(n, m, generator=generator), dim=0)
    positive = torch.randint(0, n, (m,), generator=generator)
    return {"children": children.to(device), "parents": parents.to(device), "weights": weights.to(device),
            "positive": positive.to(device)}


def op_function(op: str, variant: str) -> Callable[..., torch.Tensor]:
    """The op as a function of (children, parents, weights, positive, c) on the given path."""
    references = {
        "pairwise_distance": lambda x, y, w, pos, c: pairwise_distance_reference(x, y, c),
        "separation_loss": lambda x, y, w, pos, c: separation_loss_reference(x, y, pos, c),
        "edge_energy_cone": lambda x, y, w, pos, c: edge_energy_reference(y, x, w, c, "cone"),
    }
    fused = {
        "pairwise_distance": lambda x, y, w, pos, c: kernels.pairwise_distance(x, y, c),
        "separation_loss": lambda x, y, w, pos, c: kernels.separation_loss(x, y, pos, c),
        "edge_energy_cone": lambda x, y, w, pos, c: kernels.edge_energy(y, x, w, c, kind="cone"),
    }
    if variant == "triton":
        def run(*args: torch.Tensor) -> torch.Tensor:
            with kernels.backend("triton"):
                return fused[op](*args)
        return run
    if variant == "compile":
        return torch.compile(references[op], dynamic=False)
    return references[op]


def fused_extra_bytes(op: str, m: int, n: int, dim: int, backward: bool) -> int:
    """What the Triton path allocates beyond its inputs (fp32): outputs, per-row sums, gradients; no M × N scratch."""
    grads = (m + n) * dim * FLOAT if backward else 0
    if op == "pairwise_distance":
        return m * n * FLOAT + grads  # the distance matrix is the op's output
    if op == "separation_loss":
        return 3 * m * FLOAT + grads  # per-child positive distance, hinge sums, active counts
    return n * FLOAT + (n * m * FLOAT if backward else 0) + grads  # per-parent sums; dW = g · E is W's gradient


class CpuPeak:
    """Peak bytes allocated on the CPU during a block, from the profiler's per-op allocation records."""

    def __enter__(self) -> CpuPeak:
        from torch.profiler import ProfilerActivity, profile

        self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.profiler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.profiler.__exit__(*exc)
        events = sorted(self.profiler.events(), key=lambda e: e.time_range.start)
        current = self.peak = 0
        for event in events:
            current += event.self_cpu_memory_usage
            self.peak = max(self.peak, current)


def measure(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], backward: bool, device: str,
            repeats: int) -> tuple[float, int]:
    """Median milliseconds and peak extra bytes of one call (plus its backward)."""

    def call() -> None:
        x = inputs["children"].detach().requires_grad_(backward)
        y = inputs["parents"].detach().requires_grad_(backward)
        w = inputs["weights"].detach().requires_grad_(backward)
        c = torch.tensor(CURVATURE, device=device, requires_grad=backward)
        out = fn(x, y, w, inputs["positive"], c)
        if backward:
            out.sum().backward()

    call()  # warm-up (compilation, autotuning, allocator)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        with CpuPeak() as tracker:
            call()
        peak = tracker.peak
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default=",".join("x".join(map(str, s)) for s in SIZES),
                        help="comma-separated MxNxD (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default runs/benchmarks/kernels-<device>.json)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    variants = ("triton", "eager", "compile") if args.device == "cuda" else ("eager",)
    rows = []
    out = args.out or Path("runs/benchmarks") / f"kernels-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'} ({torch.get_num_threads()} "
          f"threads), torch {torch.__version__}, fp32, c = {CURVATURE}; peak = memory allocated beyond the inputs")
    print("| op | M × N × D | path | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB | fused fwd / fwd+bwd MiB "
          "(analytic) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for m, n, dim in sizes:
        inputs = make_inputs(m, n, dim, args.device)
        for op in OPS:
            fused_forward = fused_extra_bytes(op, m, n, dim, backward=False)
            fused_total = fused_extra_bytes(op, m, n, dim, backward=True)
            for variant in variants:
                fn = op_function(op, variant)
                forward_ms, forward_peak = measure(fn, inputs, False, args.device, args.repeats)
                total_ms, total_peak = measure(fn, inputs, True, args.device, args.repeats)
                row = {"op": op, "M": m, "N": n, "D": dim, "path": variant, "forward_ms": forward_ms,
                       "forward_backward_ms": total_ms, "forward_peak_bytes": forward_peak,
                       "forward_backward_peak_bytes": total_peak, "fused_forward_bytes": fused_forward,
                       "fused_forward_backward_bytes": fused_total}
                rows.append(row)
                out.write_text(json.dumps(rows, indent=2))  # after every row: a run cut short keeps what it measured
                print(f"| {op} | {m} × {n} × {dim} | {variant} | {forward_ms:.1f} | {total_ms:.1f} | "
                      f"{forward_peak / 2**20:.1f} | {total_peak / 2**20:.1f} | {fused_forward / 2**20:.2f} / "
                      f"{fused_total / 2**20:.1f} |",
                      flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
