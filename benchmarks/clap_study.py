"""A baseline against the one it builds on, zero-shot and LatHAdapter on the defaults study's five worlds
(benchmarks/lathadapter_study.py: four CLIP-like synthetic worlds and the demo's), seeds 1-3, in the study's contexts:
few-shot 4 and 16 shots, and base-to-novel 16 shots. By default CLAP against ZS-LP (base accuracy: neither probe can
score novel classes); `--untuned` and `--tuned` name other methods (a later baseline's study, with its own --out and
--save).

    python benchmarks/clap_study.py [--data benchmarks/.data/lpp-val-set] [--out benchmarks/.data/clap-study]
                                    [--jobs 2] [--save benchmarks/results/clap_study.json]
                                    [--untuned zeroshot,linear-probe,clap,lathadapter] [--tuned linear-probe,clap]

The `--tuned` methods run twice: at their official recipe (CLAP's: lr 0.1, no validation) and with `--tune-preset lr`
(the official lr × 1, 0.1, 10, extended at an edge, chosen on the few-shot val subset), as every other baseline of
the study's table was. LatHAdapter at its defaults. Test accuracy, read once; every run goes through the grid
machinery (resumable).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from lathadapter_study import DATA, RESULTS, SEEDS, emit, test_tables, worlds  # noqa: E402 — the study's worlds and tables

from lathadapter.cache.store import CacheReader  # noqa: E402
from lathadapter.experiments.execution import Execution  # noqa: E402
from lathadapter.experiments.launch import launch  # noqa: E402
from lathadapter.experiments.spec import GridSpec  # noqa: E402

CONTEXTS = (("all", (4, 16)), ("base", (16,)))
UNTUNED = ["zeroshot", "linear-probe", "clap", "lathadapter"]
TUNED = ["linear-probe", "clap"]


def train(caches: dict[str, Path], methods: list[str], out: Path, jobs: int, tune: bool) -> float:
    """Train (or resume) every run of `methods` on every world and context into `out`; the wall seconds."""
    start = time.perf_counter()
    for classes, shots in CONTEXTS:
        spec = GridSpec([str(p) for p in caches.values()], methods, list(shots), SEEDS, [classes],
                        tune_preset="lr" if tune else None)
        launch(spec, out, Execution(workers=jobs, batch_runs=8), progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "lpp-val-set", help="where the worlds are (written once)")
    parser.add_argument("--out", type=Path, default=DATA / "clap-study", help="the grids' folder (resumable)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes of one thread each")
    parser.add_argument("--save", type=Path, default=RESULTS / "clap_study.json")
    parser.add_argument("--untuned", default=",".join(UNTUNED), help="methods at their official recipes")
    parser.add_argument("--tuned", default=",".join(TUNED), help="methods also run with --tune-preset lr")
    args = parser.parse_args()
    untuned, tuned = args.untuned.split(","), [m for m in args.tuned.split(",") if m]
    if (untuned, tuned) != (UNTUNED, TUNED) and args.save == RESULTS / "clap_study.json":
        parser.error("--untuned/--tuned name other methods than CLAP's study: give --save a file of their own "
                     "(benchmarks/results/clap_study.json holds CLAP's)")
    torch.set_num_threads(1)
    caches = worlds(args.data)
    lines: list[str] = []
    emit(lines, f"# benchmarks/clap_study.py; torch {torch.__version__}, {args.jobs} process(es) × 1 thread")
    for name, path in caches.items():
        with CacheReader(path) as reader:
            info = reader.info()
        emit(lines, f"{name}: {path.name}, fingerprint {info.fingerprint}, {info.counts['val']} val images")
    seconds = {"untuned": train(caches, untuned, args.out / "untuned", args.jobs, tune=False),
               "tuned": train(caches, tuned, args.out / "tuned", args.jobs, tune=True) if tuned else 0.0}
    # the study's tables: every method of the untuned folder by its name, the tuned folder's with a suffix
    table = test_tables(caches, {}, args.out / "untuned", args.out, lines,
                        {" (lr tuned on val)": args.out / "tuned"} if tuned else {})
    emit(lines, f"\nwall seconds: untuned {seconds['untuned']:.0f}, tuned {seconds['tuned']:.0f} (a rerun resumes)")
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps({"table": table, "seconds": seconds}, indent=1) + "\n")
    args.save.with_suffix(".txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
