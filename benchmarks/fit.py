"""Time every method's fit on synthetic caches shaped like Caltech101 and ImageNet, and compare our trainer with a
loop written the way the official Tip-Adapter-F code is written (DataLoader, features re-read from disk per batch).

    python benchmarks/fit.py [--only caltech|imagenet] [--methods a,b] [--repeats 3] [--official caltech]
                             [--device cpu|cuda] [--threads N] [--out benchmarks/results/fit.json]
    python benchmarks/fit.py --against REV [--only caltech] [--methods a,b] [--repeats 5] [--threads 1]

Each (cache, method) runs in its own subprocess, so the peak memory (max RSS) is that run's alone; with --repeats N
it runs N times and the table gives the fastest and the median train time. The runs go round-robin (every method
once, then every method again), because this 2-core machine is shared and its speed drifts by up to 1.5x over
minutes: a slow spell then slows every method alike instead of all the runs of one. Prints a line per run while it
goes, then the table.

With --device cuda the cache is loaded onto the GPU (the official-style loop moves each batch there, as the official
code does), the trainer synchronises the GPU before it reads its clock (so train s covers finished GPU work; eval s
ends with the accuracy read back), one small matrix product initialises CUDA and cuBLAS before any timing, and the
table adds each run's peak GPU memory (torch.cuda.max_memory_allocated). Results go to fit_cuda.json unless --out
says otherwise.

With --against REV each (cache, method) is trained by the code of commit REV ("old") and by the code this script
imports ("new") in the same run: REV's tree is exported (`git archive`) into a temporary folder, and an old run is this
script's child with PYTHONPATH on a folder whose `lathadapter` links to that tree (the child calls only
`experiments.run`'s RunConfig.create, run and train, which REV must have). Each round runs every job old and new, in
alternating order (old first in odd rounds, new first in even ones), so a slow spell of the shared machine slows both
alike. The table gives, for the trainer's wall-clock train seconds and for the CPU seconds of its call (which on a
loaded machine leave out the time the run waited for a core), the median of each and new/old as the ratio of the
medians and as the median of the rounds' paired ratios; results go to fit_against.json unless --out says otherwise.
--threads N pins each child's intra-op threads (OMP_NUM_THREADS and MKL_NUM_THREADS in its environment).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lathadapter.adapter.catalog import method_names
from lathadapter.cache.synthetic import write_synthetic_cache

DATA = Path(__file__).parent / ".data"
SHAPES = {
    # name: (classes, train images per class, val images per class, test images), D = 512, 10 views, 16 shots.
    # ImageNet has no few-shot val subset (docs/data.md), so Tip-Adapter keeps its initial alpha and beta there.
    "caltech": (100, 16, 4, 2465),
    "imagenet": (1000, 16, 0, 50000),
}
OFFICIAL = "tip-adapter-f (official-style loop)"


def cache_for(name: str) -> Path:
    classes, per_class, val_per_class, test = SHAPES[name]
    path = DATA / f"{name}-like.h5"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        write_synthetic_cache(path, num_classes=classes, dim=512, train_per_class=per_class,
                              val_per_class=val_per_class, views=10, shots=(16,), seeds=(1,),
                              families=max(4, classes // 10), test_total=test, num_attributes=64)
    return path


def prepare_cuda() -> None:
    """CUDA's context and cuBLAS set up before anything is timed (the trainer synchronises its own timer)."""
    warm = torch.ones(64, 64, device="cuda")
    (warm @ warm).sum().item()


def gpu_peak_mb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def run_method(cache: Path, method: str, device: str = "cpu") -> dict:
    """Child process: load the cache once, train and evaluate one method, report times and peak RSS."""
    from lathadapter.cache.store import CacheReader
    from lathadapter.experiments import run as run_module
    from lathadapter.experiments.run import RunConfig, run

    train, cpu_seconds = run_module.train, []

    def timed_train(*args, **kwargs):  # the CPU time of the trainer's call, beside its own wall-clock seconds
        start = time.process_time()
        result = train(*args, **kwargs)
        cpu_seconds.append(time.process_time() - start)
        return result

    run_module.train = timed_train
    if device == "cuda":
        prepare_cuda()
    start = time.perf_counter()
    with CacheReader(cache) as reader:
        data = reader.load(16, 1, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    load_seconds = time.perf_counter() - start
    name, _, assignments = method.partition(":")  # `lathadapter:radius=kind+lr=0.01`: a method with options
    overrides = dict(item.split("=", 1) for item in assignments.split("+") if item)
    outcome = run(RunConfig.create(name, 16, 1, overrides=overrides), data)
    result = {
        "load_s": load_seconds,
        "train_s": outcome.metrics["train_seconds"],
        "train_cpu_s": sum(cpu_seconds),
        "eval_s": outcome.metrics["eval_seconds"],
        "steps": outcome.metrics["steps"],
        "accuracy": outcome.metrics["accuracy"]["all"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device == "cuda":
        result["peak_gpu_mb"] = gpu_peak_mb(device)
    return result


def run_official_style(cache: Path, device: str = "cpu") -> dict:
    """Child process: Tip-Adapter-F trained as the official loop does it, over the same cached features (on CUDA,
    each batch is moved to the GPU as the official code does)."""
    import h5py
    import numpy as np
    import torch.nn.functional as F

    from lathadapter.cache.store import CacheReader

    if device == "cuda":
        prepare_cuda()
    with CacheReader(cache) as reader:
        data = reader.load(16, 1)
        rows = reader.file["subsets/shots_16_seed_1/train"][()]
    keys = F.normalize(data.train_augmented.mean(1), dim=-1).to(device)
    values = F.one_hot(data.train_labels).float().to(device)
    text_features = data.text_features.to(device)

    class CachedViews(torch.utils.data.Dataset):
        """One sample per item: a random augmented view read from the HDF5 file, as a DataLoader of images would."""

        def __init__(self) -> None:
            self.file = h5py.File(cache, "r")
            self.labels = data.train_labels

        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int):
            view = np.random.randint(self.file["splits/train/augmented"].shape[1])
            feature = torch.from_numpy(self.file["splits/train/augmented"][rows[i], view].astype(np.float32))
            return feature, self.labels[i]

    torch.manual_seed(1)
    adapter = torch.nn.Linear(keys.shape[1], keys.shape[0], bias=False)
    adapter.weight = torch.nn.Parameter(keys.clone())  # keys are on `device`, so the adapter is too
    epochs, batch = 20, 256
    loader = torch.utils.data.DataLoader(CachedViews(), batch_size=batch, shuffle=True, num_workers=0)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3, eps=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        for features, target in loader:
            if device == "cuda":
                features, target = features.cuda(), target.cuda()
            features = features / features.norm(dim=-1, keepdim=True)
            affinity = adapter(features)
            cache_logits = ((-1) * (1.0 - 1.0 * affinity)).exp() @ values
            logits = 100.0 * features @ text_features.t() + cache_logits * 1.0
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    if device == "cuda":
        torch.cuda.synchronize()
    result = {"train_s": time.perf_counter() - start, "steps": epochs * math.ceil(len(rows) / batch),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        result["peak_gpu_mb"] = gpu_peak_mb(device)
    return result


def child_env(threads: int | None, package_parent: Path | None = None) -> dict[str, str]:
    """The environment of a child: threads pinned when asked, and PYTHONPATH on `package_parent` (a folder holding a
    `lathadapter` link) when given."""
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if package_parent is not None:
        env["PYTHONPATH"] = str(package_parent)
    return env


def child(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run this script with `--child ARGS` in a fresh process and return the JSON line it prints last."""
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                            check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"fit.py --child {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def export_revision(revision: str, folder: Path) -> Path:
    """Export commit `revision` of the repository that holds this script into `folder`/tree and return a folder
    holding a `lathadapter` link to it (what PYTHONPATH takes). `git archive` writes no worktree metadata."""
    repository = Path(__file__).resolve().parent.parent
    tree = folder / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(repository), "archive", "--format=tar", revision],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        sys.exit(f"fit.py: --against {revision}: git archive failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    packages = folder / "packages"
    packages.mkdir()
    (packages / "lathadapter").symlink_to(tree, target_is_directory=True)
    return packages


def against(revision: str, caches: list[str], methods: list[str], repeats: int, threads: int | None,
            out: Path) -> None:
    """Old (`revision`) and new fits of each (cache, method), alternating, and the table of their train times."""
    if "PYTHONPATH" not in os.environ:
        print("fit.py: note: PYTHONPATH is not set, so the new runs import whichever lathadapter is installed",
              file=sys.stderr)
    import lathadapter

    print(f"torch {torch.__version__}, CPU, {threads or torch.get_num_threads()} threads per run; old = {revision}, "
          f"new = {Path(lathadapter.__file__).resolve().parent}; train s = median of {repeats} alternating rounds")
    jobs = [(name, method) for name in caches for method in methods]
    times: dict[tuple[str, str], dict[str, list[dict]]] = {job: {"old": [], "new": []} for job in jobs}
    with tempfile.TemporaryDirectory(prefix="fit-against-") as folder:
        variants = {"old": child_env(threads, export_revision(revision, Path(folder))), "new": child_env(threads)}
        for round_ in range(repeats):
            order = ("old", "new") if round_ % 2 == 0 else ("new", "old")
            for job in jobs:
                name, method = job
                for variant in order:
                    times[job][variant].append(child(["method", str(cache_for(name)), method, "cpu"],
                                                     variants[variant]))
                last = {variant: runs[-1] for variant, runs in times[job].items()}
                print(f"  round {round_ + 1}/{repeats}: {name} {method} old {last['old']['train_s']:.2f} s "
                      f"({last['old']['train_cpu_s']:.2f} s CPU), new {last['new']['train_s']:.2f} s "
                      f"({last['new']['train_cpu_s']:.2f} s CPU)", file=sys.stderr, flush=True)
    rows = [against_row(job, runs["old"], runs["new"]) for job, runs in times.items()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"against": revision, "threads": threads, "repeats": repeats, "rows": rows}, indent=2))
    header = (f"{'cache':<8} {'method':<28} {'old s':>6} {'new s':>6} {'new/old':>7} {'paired':>6} | {'old cpu':>7} "
              f"{'new cpu':>7} {'new/old':>7} {'paired':>6} | {'steps':>9} {'acc % old/new':>13}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['cache']:<8} {r['method']:<28} {r['old_s']:6.2f} {r['new_s']:6.2f} {r['ratio']:7.3f} "
              f"{r['paired_ratio']:6.3f} | {r['old_cpu_s']:7.2f} {r['new_cpu_s']:7.2f} {r['cpu_ratio']:7.3f} "
              f"{r['cpu_paired_ratio']:6.3f} | {r['old_steps']:>4}/{r['new_steps']:<4} "
              f"{r['old_accuracy']:6.2f}/{r['new_accuracy']:.2f}")


def ratios(old: list[float], new: list[float]) -> tuple[float, float]:
    """new/old as the ratio of the medians and as the median of the paired (same-round) ratios."""
    paired = [n / o if o > 0 else math.nan for o, n in zip(old, new, strict=True)]
    middle = statistics.median(old)
    return (statistics.median(new) / middle if middle > 0 else math.nan), statistics.median(paired)


def against_row(job: tuple[str, str], old: list[dict], new: list[dict]) -> dict:
    """A row of the --against table: median wall-clock and CPU train seconds of old and new, and their ratios."""
    name, method = job
    row = {"cache": name, "method": method}
    for key, suffix in (("train_s", "s"), ("train_cpu_s", "cpu_s")):
        old_values, new_values = [run[key] for run in old], [run[key] for run in new]
        ratio, paired = ratios(old_values, new_values)
        prefix = "" if suffix == "s" else "cpu_"
        row.update({f"old_{suffix}": statistics.median(old_values), f"new_{suffix}": statistics.median(new_values),
                    f"{prefix}ratio": ratio, f"{prefix}paired_ratio": paired,
                    f"old_{suffix}_all": old_values, f"new_{suffix}_all": new_values})
    return {**row, "old_steps": old[0]["steps"], "new_steps": new[0]["steps"], "old_accuracy": old[0]["accuracy"],
            "new_accuracy": new[0]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SHAPES), action="append")
    parser.add_argument("--methods", default=",".join(method_names()),
                        help="comma-separated methods; METHOD:NAME=VALUE+NAME=VALUE sets options, e.g. "
                             "lathadapter:radius=kind")
    parser.add_argument("--repeats", type=int, default=1, help="runs per (cache, method); the table gives min, median")
    parser.add_argument("--official", choices=sorted(SHAPES), action="append",
                        help="caches on which to time the official-style Tip-Adapter-F loop (default: caltech)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the cache is loaded and the methods train (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default benchmarks/results/fit.json, fit_cuda.json with --device cuda)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of each run (default: torch's own choice)")
    parser.add_argument("--against", metavar="REV", default=None,
                        help="also train every job with the code of git commit REV, alternating, and compare (CPU)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: give a positive number of threads")
    if args.child:  # threads pinned by the parent (--threads) through OMP_NUM_THREADS, as REV's children are
        kind, cache, method, device = args.child
        print(json.dumps(run_official_style(Path(cache), device) if kind == "official"
                         else run_method(Path(cache), method, device)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    cuda = args.device == "cuda"
    if args.against is not None:
        if cuda:
            parser.error("--against compares CPU runs; drop --device cuda")
        out = args.out or Path(__file__).parent / "results" / "fit_against.json"
        against(args.against, args.only or sorted(SHAPES), args.methods.split(","), args.repeats, args.threads, out)
        return
    out = args.out or Path(__file__).parent / "results" / ("fit_cuda.json" if cuda else "fit.json")
    official = args.official or ["caltech"]
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"{'cache':<10} {'method':<22} {'load s':>7} {'train s':>8} {'median':>7} {'eval s':>7} {'steps':>6} "
              f"{'acc %':>6} {'peak MB':>8}" + (f" {'GPU MB':>7}" if cuda else ""))
    where = f"CUDA {torch.cuda.get_device_name()}" if cuda else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}; train s = fastest of {args.repeats}"
          + ("; peak MB = max RSS, GPU MB = max_memory_allocated" if cuda else ""))
    methods = args.methods.split(",")
    jobs = [(name, "method", method) for name in args.only or sorted(SHAPES) for method in methods]
    jobs += [(name, "official", "tip-adapter-f") for name in args.only or sorted(SHAPES)
             if "tip-adapter-f" in methods and name in official]
    runs: dict[tuple[str, str, str], list[dict]] = {job: [] for job in jobs}
    for round_ in range(args.repeats):
        for job in jobs:
            name, kind, method = job
            runs[job].append(child([kind, str(cache_for(name)), method, args.device], child_env(args.threads)))
            label = method if kind == "method" else "tip-adapter-f official"
            print(f"  run {round_ + 1}/{args.repeats}: {name} {label} {runs[job][-1]['train_s']:.2f} s",
                  file=sys.stderr, flush=True)
        rows = [summary(job, job_runs) for job, job_runs in runs.items() if job_runs]
        out.write_text(json.dumps(rows, indent=2))  # after every round: a run cut short keeps what it measured
    print(header)
    print("-" * len(header))
    for row in rows:
        gpu = f" {row['peak_gpu_mb']:7.0f}" if cuda else ""
        if row["method"] != OFFICIAL:
            print(f"{row['cache']:<10} {row['method']:<22} {row['load_s']:7.2f} {row['train_s']:8.2f} "
                  f"{row['train_s_median']:7.2f} {row['eval_s']:7.2f} {row['steps']:6d} {row['accuracy']:6.2f} "
                  f"{row['peak_rss_mb']:8.0f}" + gpu)
            continue
        ours = next(x for x in rows if x["cache"] == row["cache"] and x["method"] == "tip-adapter-f")
        print(f"{row['cache']:<10} {'tip-adapter-f official':<22} {'':>7} {row['train_s']:8.2f} "
              f"{row['train_s_median']:7.2f} {'':>7} {row['steps']:6d} {'':>6} {row['peak_rss_mb']:8.0f}" + gpu
              + f"   ours is {row['train_s'] / ours['train_s']:.1f}x faster (fastest runs), "
              f"{row['train_s_median'] / ours['train_s_median']:.1f}x (medians)")


def summary(job: tuple[str, str, str], runs: list[dict]) -> dict:
    """A table row: the fastest run's figures, with the median and every train time."""
    name, kind, method = job
    train_seconds = [run["train_s"] for run in runs]
    return {"cache": name, "method": method if kind == "method" else OFFICIAL,
            **min(runs, key=lambda run: run["train_s"]),
            "train_s_median": statistics.median(train_seconds), "train_s_all": train_seconds}


if __name__ == "__main__":
    main()
