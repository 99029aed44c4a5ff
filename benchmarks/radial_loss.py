"""LatHAdapter's loss stage after the cosine products, forward + backward: the Triton twin against `fused_loss`, eager
and under torch.compile. Prints ms per forward+backward (min and median over rounds) and peak memory.

    python benchmarks/radial_loss.py --device cuda    # triton, eager and compile rows
    python benchmarks/radial_loss.py --device cuda --row-tiles 16,8,4
                                                      # the Triton twin also with tiles of 8 and 4 images (more
                                                      # programs: B = 256 in tiles of 16 fills 16 of 132 SMs)
    python benchmarks/radial_loss.py                  # CPU: the eager row only (Triton needs CUDA; torch.compile of
                                                      # the CPU path is not what training on the CPU runs)

Every variant takes the same leaves — image cosines [B, C + K], category–attribute cosines and weights [C, K], radius
vectors, c and log τ_h — and each round times every variant once, in turn, so a slow spell slows them all alike.
Each Triton row also gives its largest gradient difference from the eager twin's, relative to the eager gradient's
largest entry (float32 both).
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

from lathadapter.adapter.methods.base import LOGIT_SCALE
from lathadapter.adapter.methods.lathadapter.fused import fused_loss
from lathadapter.adapter.methods.lathadapter.options import LatHAdapterOptions
from lathadapter.kernels.dispatch import set_backend

SIZES = [(256, 1000, 16), (256, 100, 16)]  # (B, C, K): ImageNet-like and Caltech-like
DIM = 512
NAMES = ("image_cosines", "class_attribute", "class_weights", "rho_categories", "rho_attributes", "rho_images", "c",
         "log_tau")


def make_inputs(batch: int, classes: int, attributes: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Cosines of random unit directions in D = 512, softmax associations, radii in (0.05, 0.95), labels."""
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(batch, DIM, generator=generator), dim=-1)
    prototypes = F.normalize(torch.randn(classes, DIM, generator=generator), dim=-1)
    prompts = F.normalize(torch.randn(attributes, DIM, generator=generator), dim=-1)
    prototypes_attributes = prototypes @ prompts.t()
    inputs = {
        "image_cosines": torch.cat([images @ prototypes.t(), images @ prompts.t()], dim=1),
        "class_attribute": prototypes_attributes,
        "class_weights": torch.softmax(prototypes_attributes / 0.07, dim=-1),
        "rho_categories": 0.05 + 0.9 * torch.rand(classes, generator=generator),
        "rho_attributes": 0.05 + 0.9 * torch.rand(attributes, generator=generator),
        "rho_images": 0.05 + 0.9 * torch.rand(batch, generator=generator),
        "c": torch.tensor(1.0),
        "log_tau": torch.tensor(0.07).log(),
        "labels": torch.randint(0, classes, (batch,), generator=generator),
    }
    return {name: value.to(device) for name, value in inputs.items()}


def loss_function(variant: str, options: LatHAdapterOptions, rows: int = 16) -> Callable[..., torch.Tensor]:
    """The loss stage as a function of the leaves (NAMES) and the labels, on the given path; the Triton twin's
    programs tile `rows` images (its backward as its forward)."""

    def eager(image_cosines, class_attribute, class_weights, rho_c, rho_a, rho_v, c, log_tau, labels):
        return fused_loss(image_cosines, class_attribute, class_weights, rho_c, rho_a, rho_v, c, log_tau, labels,
                          options)[0]

    if variant == "eager":
        return eager
    if variant == "compile":
        return torch.compile(eager, dynamic=False)
    from lathadapter.kernels.triton_radial_loss import radial_loss_triton, row_tile

    def triton_twin(image_cosines, class_attribute, class_weights, rho_c, rho_a, rho_v, c, log_tau, labels):
        classes = class_weights.shape[0]
        with row_tile(rows):
            return radial_loss_triton(
                image_cosines[:, :classes], image_cosines[:, classes:], class_attribute, class_weights, rho_c, rho_a,
                rho_v, c, log_tau, labels, logit_scale=LOGIT_SCALE, lambda_hyp=options.lambda_hyp,
                lambda_hier=options.lambda_hier, hier=options.hier, cone_k=options.cone_k,
                cone_kappa=options.cone_kappa, margin=options.margin, margin_radial=options.margin_radial,
                tau_attr=options.tau_attr)[0]

    return triton_twin


def gradients(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    leaves = [inputs[name].detach().requires_grad_() for name in NAMES]
    grads = torch.autograd.grad(fn(*leaves, inputs["labels"]), leaves, allow_unused=True)
    return [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads, strict=True)]


def relative_difference(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """max over the leaves of max |g − g_ref| / max |g_ref|."""
    return max(float((g - r).abs().max()) / max(float(r.abs().max()), 1e-30)
               for g, r in zip(grads, reference, strict=True))


def step(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor]) -> None:
    """One forward + backward from fresh leaves."""
    leaves = [inputs[name].detach().requires_grad_() for name in NAMES]
    fn(*leaves, inputs["labels"]).backward()


def timed(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], device: str, calls: int) -> float:
    """Milliseconds per call, averaged over `calls` back-to-back calls."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        step(fn, inputs)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / calls


def peak_bytes(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], device: str) -> int:
    """Peak memory allocated beyond the inputs during one forward + backward."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        step(fn, inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step(fn, inputs)
    current = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sizes", default=",".join("x".join(map(str, s)) for s in SIZES),
                        help="comma-separated BxCxK (default: %(default)s)")
    parser.add_argument("--hier", default="cone,triplet", help="comma-separated hier options (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per variant and round")
    parser.add_argument("--row-tiles", default="16", help="comma-separated images per Triton program, each a "
                        "Triton row on CUDA (default: %(default)s, the kernels' own)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default runs/benchmarks/radial_loss-<device>.json)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    # the eager and compiled rows are the PyTorch twin: on CUDA, `fused_loss` would otherwise dispatch to the Triton
    # twin (the "triton" row calls it directly, whatever the backend)
    set_backend("torch")
    tiles = {("triton" if rows == 16 else f"triton, {rows} rows"): rows
             for rows in (int(value) for value in args.row_tiles.split(","))}
    variants = (*tiles, "eager", "compile") if args.device == "cuda" else ("eager",)
    out = args.out or Path("runs/benchmarks") / f"radial_loss-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}, torch {torch.__version__}, fp32; {args.rounds} rounds of {args.calls} calls per variant; "
          "peak = memory allocated beyond the inputs in one forward+backward")
    if args.device == "cpu":
        print("on the CPU only the eager row runs: the Triton twin needs CUDA (or the slow interpreter), and "
              "torch.compile rows are measured on CUDA")
    print("| B × C × K | hier | path | fwd+bwd ms (min) | fwd+bwd ms (median) | peak MiB | max rel. Δgrad vs eager |")
    print("|---|---|---|---:|---:|---:|---:|")
    rows = []
    for batch, classes, attributes in (tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")):
        inputs = make_inputs(batch, classes, attributes, args.device)
        for hier in args.hier.split(","):
            options = LatHAdapterOptions(hier=hier)
            functions = {variant: loss_function(variant, options, tiles.get(variant, 16)) for variant in variants}
            reference = gradients(functions["eager"], inputs)
            difference: dict[str, float] = {}
            for variant, fn in functions.items():  # warm-up: compilation, autotuning, the allocator
                for _ in range(3):
                    step(fn, inputs)
                if variant in tiles:
                    difference[variant] = relative_difference(gradients(fn, inputs), reference)
            times: dict[str, list[float]] = {variant: [] for variant in variants}
            for _ in range(args.rounds):
                for variant, fn in functions.items():
                    times[variant].append(timed(fn, inputs, args.device, args.calls))
            for variant, fn in functions.items():
                peak = peak_bytes(fn, inputs, args.device)
                row = {"B": batch, "C": classes, "K": attributes, "hier": hier, "path": variant,
                       "min_ms": min(times[variant]), "median_ms": statistics.median(times[variant]),
                       "peak_bytes": peak, "max_relative_grad_difference": difference.get(variant)}
                rows.append(row)
                out.write_text(json.dumps(rows, indent=2))
                shown = f"{difference[variant]:.1e}" if variant in difference else ""
                print(f"| {batch} × {classes} × {attributes} | {hier} | {variant} | {row['min_ms']:.3f} | "
                      f"{row['median_ms']:.3f} | {peak / 2**20:.2f} | {shown} |", flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
