"""The package's import graph (read with ast, every import statement, also inside functions) has no circles and
runs downward only: cli → experiments → adapter → kernels, and → cache.store; demo/ below cli alone
(docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"tests", "benchmarks", "build", "dist", ".venv", "docs"}

# layer → the layers (or exact modules) it may import; a layer is the first folder below the package root
ALLOWED = {
    "version": set(),
    "progress": set(),  # progress display on stderr (a leaf)
    "kernels": {"kernels", "version"},
    "cache": {"cache", "version", "progress"},
    "adapter": {"adapter", "kernels", "version", "cache.store"},
    # experiments/builds.py drives the cache builder for `cache build-many`, naming each cache as it does;
    # experiments/spec.py reads grid files as the build reads its text files (cache.text, a leaf)
    "experiments": {"experiments", "adapter", "kernels", "version", "cache.store", "cache.build", "cache.datasets",
                    "cache.text", "progress"},
    # the demo builds a cache and runs a grid: below cli.py alone, which nothing else may import it under
    "demo": {"demo", "adapter", "experiments", "version", "cache.build", "cache.encode", "cache.store"},
}

# experiments/ by job, lowest first: a module may import only modules of a lower rank (tests below)
EXPERIMENT_RANKS = {
    "machine": 0, "ray_cluster": 0,  # where a run computes; reaching Ray
    "execution": 1,  # how runs train (Execution), parsed at the edge
    "run": 2,  # one run and its folder
    "tuning": 3,  # tuning records, presets and choice
    "spec": 4, "table": 4,  # grid axes and expansion; results.csv, locks, stale sweep
    "data": 5,  # cache checks, few-shot sets loaded once
    "training": 6,  # keys, batches, the one training path, saving, the backend interface
    "trainers": 7,  # trainer threads taking a process's batches
    "chunks": 8,  # runs in chunks trained elsewhere, saved by the driver
    "pool": 9,  # worker-process mechanics
    "local": 10, "ray_backend": 10,  # the backends
    "launch": 11,  # the one driver
    "protocols": 12, "builds": 12,  # protocols, cache builds
    "records": 12,  # a results table read back as typed records, for reports
    "trained": 13,  # a run directory loaded back (`load`), a transfer run's targets scored as its protocol's
    "compare": 14,  # two runs on the same test images: paired table, exact McNemar p, per-class differences
    "compare_grid": 14,  # two configurations across datasets: paired seeds, wins/ties/losses, Wilcoxon signed-rank
    "cells": 13,  # a report's cells over seeds and configuration labels
    "report_tables": 14,  # a report's tables (markdown, CSV)
    "plots": 15,  # a report's plots and `compare --plot` (matplotlib)
    "report_latex": 15, "report_seeds": 15,  # each report table as a LaTeX table float; the per-seed tables
    "report": 16,  # the report folder: tables and plots written together
    "inspection": 16,  # `inspect`: a run loaded back, scored set by set, its per-class CSV and plots
    "comparison": 16,  # `compare`'s two forms as the command prints them, with their CSV and plot
}


def package_modules() -> dict[str, Path]:
    """Module name → file, for every module of the installed package (the repository root is `lathadapter`)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in SKIP or relative.parts[0].startswith(".") or "egg-info" in relative.parts[0]:
            continue
        parts = ["lathadapter", *relative.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package modules it imports (`from pkg import sub` counts as importing `pkg.sub`)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of nodes (first = last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges that run against the data flow."""
    found = []
    for source, targets in sorted(graph.items()):
        allowed = ALLOWED.get(layer(source))
        if allowed is None:  # the package root and cli sit on top and may import anything
            continue
        for target in sorted(targets):
            inner = target.removeprefix("lathadapter.")
            if layer(target) not in allowed and not any(inner == a or inner.startswith(a + ".") for a in allowed):
                found.append(f"{source} imports {target}")
    return found


def test_the_checker_finds_cycles_and_upward_imports() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    upward = {"lathadapter.kernels.x": {"lathadapter.adapter.y"}, "lathadapter.adapter.y": {"lathadapter.cache.z"},
              "lathadapter.adapter.w": {"lathadapter.experiments.run"}, "lathadapter.cache.z": set()}
    assert violations(upward) == ["lathadapter.adapter.w imports lathadapter.experiments.run",
                                  "lathadapter.adapter.y imports lathadapter.cache.z",
                                  "lathadapter.kernels.x imports lathadapter.adapter.y"]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = package_modules()
    assert {"lathadapter", "lathadapter.cli", "lathadapter.adapter.registry", "lathadapter.experiments.run"} <= set(
        modules)
    return import_graph(modules)


def test_the_package_has_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert find_cycle(graph) is None


def test_imports_run_downward_only(graph: dict[str, set[str]]) -> None:
    assert violations(graph) == []


def demo_importers(graph: dict[str, set[str]]) -> list[str]:
    """Modules outside demo/ but cli.py that import a demo/ module: the demo sits below the command alone, so not
    even the package root (which `violations` leaves free) may."""
    return [f"{source} imports {target}" for source, targets in sorted(graph.items())
            if layer(source) not in ("demo", "cli") for target in sorted(targets) if layer(target) == "demo"]


def test_the_demo_checks_find_its_importers_and_its_upward_imports() -> None:
    graph = {"lathadapter": {"lathadapter.demo"}, "lathadapter.cli": {"lathadapter.demo.pipeline"},
             "lathadapter.demo.pipeline": {"lathadapter.cli", "lathadapter.cache.build", "lathadapter.cache.text",
                                           "lathadapter.experiments.launch", "lathadapter.demo.model"},
             "lathadapter.demo.model": set(), "lathadapter.experiments.plots": {"lathadapter.demo.model"}}
    assert demo_importers(graph) == ["lathadapter imports lathadapter.demo",
                                     "lathadapter.experiments.plots imports lathadapter.demo.model"]
    assert violations(graph) == ["lathadapter.demo.pipeline imports lathadapter.cache.text",
                                 "lathadapter.demo.pipeline imports lathadapter.cli",
                                 "lathadapter.experiments.plots imports lathadapter.demo.model"]


def test_only_the_command_imports_the_demo(graph: dict[str, set[str]]) -> None:
    assert any(layer(source) == "demo" for source in graph)  # the checks above see the demo's modules
    assert demo_importers(graph) == []


def experiment_violations(graph: dict[str, set[str]], ranks: dict[str, int]) -> list[str]:
    """Edges among experiments/ modules that do not run to a lower rank, and modules without a rank."""
    prefix = "lathadapter.experiments."
    found = []
    for source, targets in sorted(graph.items()):
        if not source.startswith(prefix):
            continue
        name = source.removeprefix(prefix)
        if name not in ranks:
            found.append(f"{source} has no rank in EXPERIMENT_RANKS")
            continue
        for target in sorted(t for t in targets if t.startswith(prefix)):
            other = target.removeprefix(prefix)
            if other in ranks and ranks[other] >= ranks[name]:
                found.append(f"{source} imports {target}")
    return found


def test_the_experiments_checker_finds_sideways_and_upward_imports() -> None:
    graph = {"lathadapter.experiments.a": {"lathadapter.experiments.b"}, "lathadapter.experiments.b": set(),
             "lathadapter.experiments.c": {"lathadapter.experiments.a"}, "lathadapter.experiments.d": set()}
    assert experiment_violations(graph, {"a": 1, "b": 0, "c": 1}) == [
        "lathadapter.experiments.c imports lathadapter.experiments.a", "lathadapter.experiments.d has no rank in "
        "EXPERIMENT_RANKS"]
    assert experiment_violations(graph, {"a": 1, "b": 0, "c": 2, "d": 0}) == []


def test_experiments_modules_import_lower_jobs_only(graph: dict[str, set[str]]) -> None:
    assert experiment_violations(graph, EXPERIMENT_RANKS) == []


def test_each_experiments_module_says_its_job() -> None:
    for path in sorted((ROOT / "experiments").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 40, f"{path.name} has no docstring saying its job"


def test_the_registry_is_a_leaf_and_only_the_catalog_loads_the_methods(graph: dict[str, set[str]]) -> None:
    assert graph["lathadapter.adapter.registry"] == set()
    methods = {m for m in graph if m.startswith("lathadapter.adapter.methods")}
    loaders = {source for source, targets in graph.items() if "lathadapter.adapter.methods.tip_adapter" in targets}
    assert loaders <= {"lathadapter.adapter.catalog"} | methods
    assert not any("lathadapter.adapter.catalog" in graph[m] for m in methods)
