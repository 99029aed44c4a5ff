"""The Triton twin's kernels compiled for GPUs on this machine, which has none (kernels/triton_compile.py): for each
architecture, loss configuration and shape, every kernel a loss call launches, with ptxas's registers, spills and
shared memory, the compile time, the programs a batch of 256 launches, and how many such programs an SM can hold by
its registers (65,536 per SM, allocated 256 per warp). No timing of the kernels themselves: that needs a GPU
(benchmarks/radial_loss.py --device cuda in benchmarks/gpu_check.sh).

    python benchmarks/triton_compile.py [--arch sm_80,sm_90] [--dtype float32] [--row-tiles 16] \
        [--out benchmarks/results/triton_compile.txt]

--row-tiles 16,8,4 adds the finer tiles benchmarks/radial_loss.py --row-tiles times on a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import tempfile
import time
from pathlib import Path

import torch

BATCH = 256
# classes, attributes: the default K = 16, and ImageNet-sized with the largest attribute tile
SHAPES = {"caltech101": (100, 16), "imagenet, K=64": (1000, 64)}
CONFIGURATIONS = {  # name: (lambda_hyp, lambda_hier, hier)
    "default": (0.5, 0.0, "cone"),
    "ce only": (0.0, 0.0, "cone"),
    "cone": (0.5, 0.1, "cone"),
    "triplet": (0.5, 0.1, "triplet"),
}
SMS = {"sm_80": "A100: 108 SMs", "sm_90": "H100 SXM and H200: 132 SMs"}
SM_REGISTERS = 65536
WARP_ALLOCATION = 256  # registers are allocated to a warp in units of 256


def blocks_per_sm(registers: int, num_warps: int) -> int:
    per_warp = -(-registers * 32 // WARP_ALLOCATION) * WARP_ALLOCATION
    return SM_REGISTERS // (per_warp * num_warps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_80,sm_90")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--row-tiles", default="16", help="images (and present categories) per program")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton_compile_")  # compile, never read a cache

    import triton

    from lathadapter.kernels import triton_radial_loss
    from lathadapter.kernels.triton_compile import loss_launches

    dtype = getattr(torch, args.dtype)
    lines = [f"# benchmarks/triton_compile.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: triton "
             f"{triton.__version__}, {args.dtype}, batch {BATCH}, compiled on the CPU (no GPU); blocks/SM = the "
             "programs an SM's registers hold",
             "",
             "| arch | shape (C, K) | configuration | kernel | tile | warps | registers | spill bytes (st/ld) "
             "| shared bytes | programs | blocks/SM | compile s |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    started = time.perf_counter()
    seen: set[tuple[str, str, tuple]] = set()
    row_tiles = [int(value) for value in args.row_tiles.split(",")]
    for arch, rows, (shape, (classes, attributes)), (name, (lambda_hyp, lambda_hier, hier)) in itertools.product(
            args.arch.split(","), row_tiles, SHAPES.items(), CONFIGURATIONS.items()):
        with triton_radial_loss.row_tile(rows):
            compiled = loss_launches(arch, batch=BATCH, classes=classes, attributes=attributes, dtype=dtype,
                                     lambda_hyp=lambda_hyp, lambda_hier=lambda_hier, hier=hier)
        for kernel in compiled:
            key = (arch, kernel.kernel, tuple(kernel.constexprs.items()))
            seconds = "–" if key in seen else f"{kernel.seconds:.2f}"
            seen.add(key)
            tile = "×".join(str(value) for flag, value in kernel.constexprs.items() if flag.startswith("BLOCK"))
            lines.append(
                f"| {arch} | {shape} ({classes}, {attributes}) | {name} | {kernel.kernel.removesuffix('_kernel')} "
                f"| {tile} | {kernel.num_warps} | {kernel.registers} | {kernel.spill_store_bytes}/"
                f"{kernel.spill_load_bytes} | {kernel.shared_bytes} | "
                f"{math.prod(kernel.grid)} | "
                f"{blocks_per_sm(kernel.registers, kernel.num_warps)} | {seconds} |")
            print(lines[-1], flush=True)
    lines.append(f"\n{len(lines) - 4} launches compiled in {time.perf_counter() - started:.0f} s (–: the same "
                 "specialisation as a row above, from Triton's cache). "
                 + "; ".join(f"{arch}: {SMS.get(arch, '?')}" for arch in args.arch.split(",")) + ".")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
