"""Several datasets' caches built by one command (`cache build-many`): one `cache.build.build` after another, or one
Ray task each. Each build resumes as `cache build` does."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lathadapter.adapter.options import OptionError, StateError
from lathadapter.cache.build import build
from lathadapter.cache.datasets import dataset_name, reads_root, unread_root
from lathadapter.experiments.ray_cluster import check_address, connect
from lathadapter.progress import relayed, show_relayed


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _build_one(dataset: str, options: dict) -> tuple[str, str, str]:
    """Build one dataset's cache (resumable, as `cache build`); returns (dataset, path, status), the path as the
    options give it."""
    result = build(dataset=dataset, **options)
    return dataset, str(result.path), result.status


def _build_on_ray(dataset: str, options: dict) -> tuple[str, str, list[Warning], list[str], str | None]:
    """`_build_one` as a Ray task: (path, status, the warnings it raised, the lines it said on its worker (notes,
    what it left out or skipped), its error's text or None), for the command to show (`progress.relayed`): Ray
    forwards a worker's stderr late, or never once the command has ended. A failed build returns its error with what
    it said before failing, which a raised error would lose."""
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        try:
            _, path, status = _build_one(dataset, {**options, "log": lines.append})
        except Exception as error:  # noqa: BLE001 — any failure, as Ray would report it, with the lines said
            return "", "", relayed(caught), lines, str(error)
        return path, status, relayed(caught), lines, None


def cache_paths(datasets: list[str], out: Path) -> dict[str, Path]:
    """Each dataset's cache, `out/<name>.h5` with the name `cache build` gives it (`datasets.dataset_name`: a
    `split:` file's dataset name, a `folder:`'s folder name); two datasets that would share one file are refused."""
    paths: dict[str, Path] = {}
    for dataset in datasets:
        path = out / f"{dataset_name(dataset)}.h5"
        other = next((given for given, taken in paths.items() if taken == path), None)
        if dataset in paths:
            raise OptionError(f"--dataset {dataset} is given twice; give each dataset once")
        if other is not None:
            raise OptionError(f"--dataset {other} and --dataset {dataset} would both be built into {path}; build "
                              f"one of them with `lathadapter cache build --dataset ... --out FILE` instead")
        paths[dataset] = path
    return paths


def for_workers(dataset: str, options: dict) -> tuple[str, dict]:
    """`dataset` and build `options` as a Ray task needs them: the paths in them (a `split:` or `folder:` dataset, the
    cache's `out`, a `--model` config file, a `--pretrained` checkpoint file) absolute, for a task runs in its node's
    folder, not the command's. Names and tags are left as they are; absolute paths change no fingerprint
    (`cache.encode`)."""
    for kind in ("split:", "folder:"):
        if dataset.startswith(kind):
            dataset = kind + os.path.abspath(dataset.removeprefix(kind))
    options = dict(options)
    if options.get("out") is not None:
        options["out"] = os.path.abspath(options["out"])
    for key in ("model", "pretrained"):
        value = options.get(key)
        if isinstance(value, str) and (Path(value).is_file() or value.endswith(".json")):
            options[key] = os.path.abspath(value)
    return dataset, options


def build_many(datasets: list[str], out: Path, backend: str = "local", address: str | None = None,
               init_options: dict | None = None, **build_options: Any) -> list[tuple[str, str, str]]:
    """Build `out/<name>.h5` for each dataset (`cache_paths`): one after another (local), or one Ray task each (ray;
    a whole GPU each when the cluster has GPUs). Each build resumes as `cache build` does; failures are reported
    together, after the other builds finished. Returns (dataset, path, status) for each cache built, its path as
    `out` gives it (a relative `out` stays relative, as `cache build` prints it; a task is sent it absolute)."""
    if backend not in ("local", "ray"):
        raise OptionError(f"--backend {backend}: choose local or ray")
    if address is not None and backend != "ray":  # as grid's: it was ignored without a word
        raise OptionError(f"--address {address}: only for --backend ray; add --backend ray, or drop --address")
    if not datasets:
        raise OptionError("give at least one --dataset")
    check_address(address)
    paths = cache_paths(datasets, out)
    out.mkdir(parents=True, exist_ok=True)

    root = build_options.get("root")

    def options(dataset: str) -> dict:  # the root only to the datasets that read it: no build warns it is unread
        return {**build_options, "root": None if root is None or not reads_root(dataset) else str(Path(root).resolve()),
                "out": str(paths[dataset])}

    results, problems = [], []
    say = build_options.get("log")  # this process's: a local build's lines follow a line naming its dataset
    if root is not None and not any(reads_root(dataset) for dataset in datasets):
        (say or _stderr)(unread_root(Path(root), datasets))
    if backend == "local":
        for number, dataset in enumerate(datasets, 1):
            if say is not None:
                say(f"{dataset} ({number}/{len(datasets)}): building {paths[dataset]}")
            try:
                results.append(_build_one(dataset, options(dataset)))
            except (ValueError, OSError) as error:
                problems.append(f"{dataset}: {error}")
    else:  # a task's builds say nothing on their worker (no bars): here, as each ends, a line and what it said
        shown: set[str] = set()  # the texts of the warnings the tasks sent back, each shown once
        with connect(address, init_options) as ray:
            gpus = ray.cluster_resources().get("GPU", 0)
            task = ray.remote(_build_on_ray).options(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=0)
            refs = {task.remote(*for_workers(dataset, {**options(dataset), "progress": False, "log": None})): dataset
                    for dataset in datasets}  # the task says its lines to a list it sends back
            built: dict[str, tuple[str, str, str]] = {}
            while refs:  # a line as each build ends: the progress of builds that print nothing here
                [ref], _ = ray.wait(list(refs), num_returns=1)
                dataset = refs.pop(ref)
                said: list[str] = []
                try:
                    _, status, messages, said, failure = ray.get(ref)  # its path: the absolute one sent
                    show_relayed(messages, shown)
                except ray.exceptions.RayError as error:  # the task did not return: its worker died, ...
                    failure = str(getattr(error, "cause", None) or error)
                if failure is None:
                    built[dataset] = (dataset, str(paths[dataset]), status)  # named as given, not as the task
                    line = f"{dataset}: {status}"
                else:
                    problems.append(f"{dataset}: {failure}")
                    line = f"{dataset}: failed"
                if say is not None:
                    say(f"{line} ({len(built) + len(problems)}/{len(datasets)} builds ended)")
                for text in said:  # what the build said on its worker, as a local build says it here
                    (say or _stderr)(text)
            results = [built[dataset] for dataset in datasets if dataset in built]
    if problems:
        raise StateError("cache builds failed:\n  " + "\n  ".join(problems))
    return results
