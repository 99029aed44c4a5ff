"""LatHAdapter's two PyTorch forms of the loss after the image product, on the CPU, for `radius=kind`: `loss.py`'s one
autograd node against `fused.py`'s twin over radius vectors (one radius per kind as constant vectors), in one process.

    python benchmarks/loss_forms.py [--rounds 12] [--clock wall|cpu]

`LatHAdapter.loss` takes `loss.py` for `radius=kind` off Triton (`method.one_node_form`); here a step of the second
model runs with that choice switched off, so both take the same training step (forward, backward, fused AdamW on a
random batch of 256 of the Caltech-like cache of `benchmarks/fit.py`) and differ only in the form. The two steps are
timed in alternating blocks of 15, for the default configuration (λ_hier = 0) and with the hierarchy term on
(λ_hier = 0.1, cone and triplet); prints ms per step (min and median over the blocks) and fused/loss. `--clock cpu`
times the process's CPU time (with OMP_NUM_THREADS=1, the step's own time on a loaded machine).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from fit import cache_for  # benchmarks/ is the script directory
from lathadapter_ab import ratio_text, time_blocks

from lathadapter.adapter.catalog import create_method
from lathadapter.adapter.methods.lathadapter import method as lathadapter_method
from lathadapter.adapter.trainer import clear_grads
from lathadapter.cache.store import CacheReader

CONFIGURATIONS = {
    "default (lambda_hier = 0)": {},
    "lambda_hier = 0.1, hier = cone": {"lambda_hier": 0.1},
    "lambda_hier = 0.1, hier = triplet": {"lambda_hier": 0.1, "hier": "triplet"},
}
ONE_NODE = lathadapter_method.one_node_form


def stepper(data, options: dict, one_node: bool) -> Callable[[], None]:
    """One training step of LatHAdapter with `loss.py`'s node (`one_node`) or `fused.py`'s twin."""
    torch.manual_seed(0)
    method = create_method("lathadapter", data, radius="kind", **options)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, fused=True)
    generator = torch.Generator().manual_seed(0)
    choose = ONE_NODE if one_node else (lambda options, triton: False)

    def step() -> None:
        lathadapter_method.one_node_form = choose
        try:
            batch = torch.randint(len(data.train_labels), (256,), generator=generator)
            loss = method.loss(data.train_features.index_select(0, batch),
                               data.train_labels.index_select(0, batch))[0]
        finally:
            lathadapter_method.one_node_form = ONE_NODE
        clear_grads(params)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; ms per step (batch 256, {args.clock} "
          f"clock, min / median of {args.rounds} blocks of 15), caltech-like, radius = kind")
    with CacheReader(cache_for("caltech")) as reader:
        data = reader.load(16, 1)
    for label, options in CONFIGURATIONS.items():
        steps = {"loss.py": stepper(data, options, True), "fused.py": stepper(data, options, False)}
        low, middle = time_blocks(steps, args.rounds, 15, clock)
        print(f"{label:<36} loss.py {low['loss.py']:.2f} / {middle['loss.py']:.2f}, fused.py {low['fused.py']:.2f} / "
              f"{middle['fused.py']:.2f}; {ratio_text(low, middle, 'fused.py', 'loss.py')}", flush=True)


if __name__ == "__main__":
    main()
