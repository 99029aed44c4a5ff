"""The docs' worked examples stay true: docs/architecture.md's `prototype` method, taken from the page as it stands and
imported as a module outside the package, fits, lists, tunes on worker processes and loads back as the page says, to
the accuracy its docstring's formula gives, restated here from the cache's arrays. It registers in a child process
only: the registry has no way to forget a method, and every other test sees the catalog's. docs/usage.md's Python API
example calls its functions with arguments they take (its grids need real caches: the calls are bound, not run)."""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import lathadapter
from lathadapter.adapter.catalog import method_names
from lathadapter.adapter.options import StateError

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
USAGE = ARCHITECTURE.with_name("usage.md")
FIRST_LINE = "# adapter/methods/prototype.py"
ALPHAS = (0.3, 0.8)  # fitted one by one
GRID_ALPHAS = (0.0, 1.0)  # trained by `launch` on two worker processes
SHOTS, SEED = 4, 1

# The child: imports the example from a folder on sys.path (as a user's own module), then does what the page says
# a method outside the package gets: `lathadapter.fit`, `launch` with workers, and the command's lists in-process.
CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import prototype_example  # noqa: F401  (registers "prototype")
import lathadapter
from typer.testing import CliRunner
from lathadapter.cli import app
from lathadapter.experiments.execution import Execution
from lathadapter.experiments.launch import launch
from lathadapter.experiments.spec import GridSpec

if __name__ == "__main__":
    cache, out, alphas, grid_alphas = Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
    fits = {str(a): lathadapter.fit(cache, method="prototype", shots=4, seed=1, out=out / "runs", device="cpu",
                                    alpha=a) for a in alphas}
    spec = GridSpec([str(cache)], methods=["prototype"], shots=[4], seeds=[1],
                    options={"prototype.alpha": grid_alphas.split(",")})
    summary = launch(spec, out / "grid", Execution.parse(device="cpu", workers=2, batch_runs=1), progress=False)
    run_dir = fits[str(alphas[0])]["run_dir"]
    print("RESULT " + json.dumps({
        "accuracy": {a: m["accuracy"]["all"] for a, m in fits.items()}, "run_dir": run_dir,
        "loaded": lathadapter.load(run_dir, device="cpu").accuracy(), "grid_done": summary["done"],
        "methods": CliRunner().invoke(app, ["list", "methods"]).output,
        "options": CliRunner().invoke(app, ["list", "options", "prototype"]).output}))
"""


def code_block(document: Path, first_lines: str) -> str:
    """The one fenced Python block of `document` that starts with `first_lines`."""
    blocks = re.findall(r"^```python\n(.*?)^```$", document.read_text(), flags=re.S | re.M)
    found = [block for block in blocks if block.startswith(first_lines + "\n")]
    assert len(found) == 1, f"{document.name}: {len(found)} python blocks start with {first_lines!r}"
    return found[0]


def prototype_accuracy(cache: Path, alpha: float) -> tuple[float, float]:
    """The docstring's formula in float64 from the cache's arrays: `ℓ = 100 <x, norm((1 − α) t_c + α norm(μ_c))>`,
    μ_c the mean clean feature of class c's few-shot train images, t_c its unit CoOp-template text feature; the test
    accuracy (%) of its argmax, and the smallest gap between an image's two top scores (a tie float32 could flip)."""
    with h5py.File(cache, "r") as f:
        rows = f[f"subsets/shots_{SHOTS}_seed_{SEED}/train"][()]
        train = f["splits/train/features"][()].astype(np.float64)[rows]
        labels = f["splits/train/labels"][()][rows]
        text = f["text/features"][0].astype(np.float64)
        test = f["splits/test/features"][()].astype(np.float64)
        test_labels = f["splits/test/labels"][()]

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    means = np.stack([train[labels == c].mean(axis=0) for c in range(len(text))])
    classifier = unit((1 - alpha) * unit(text) + alpha * unit(means))
    scores = 100 * test @ classifier.T
    top2 = np.sort(scores, axis=1)[:, -2:]
    return 100 * float(np.mean(scores.argmax(axis=1) == test_labels)), float((top2[:, 1] - top2[:, 0]).min())


@pytest.fixture(scope="module")
def child(baseline_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("outside")
    (folder / "prototype_example.py").write_text(code_block(ARCHITECTURE, FIRST_LINE))
    (folder / "child.py").write_text(CHILD)
    done = subprocess.run([sys.executable, str(folder / "child.py"), str(folder), str(baseline_cache), str(folder),
                           json.dumps(ALPHAS), ",".join(map(str, GRID_ALPHAS))],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert result, done.stdout[-2000:]
    return {**json.loads(result[-1].removeprefix("RESULT ")), "folder": folder}


def test_the_prototype_example_fits_to_its_docstrings_formula(child: dict, baseline_cache: Path) -> None:
    expected = {alpha: prototype_accuracy(baseline_cache, alpha) for alpha in (0.0, *ALPHAS)}
    assert min(gap for _, gap in expected.values()) > 1e-3  # no near tie, which float32 could break either way
    assert len({accuracy for accuracy, _ in expected.values()}) > 1  # α and the means change the predictions
    for alpha in ALPHAS:
        assert child["accuracy"][str(alpha)] == pytest.approx(expected[alpha][0], abs=1e-9), alpha
    assert child["loaded"] == child["accuracy"][str(ALPHAS[0])]


def test_the_prototype_example_trains_on_worker_processes(child: dict, baseline_cache: Path) -> None:
    """`launch` with workers (spawned: each imports the example again to unpickle its options class)."""
    assert child["grid_done"] == len(GRID_ALPHAS)
    with (child["folder"] / "grid" / "results.csv").open(newline="") as f:
        got = {float(row["opt.prototype.alpha"]): float(row["acc_all"]) for row in csv.DictReader(f)}
    assert got == {a: pytest.approx(prototype_accuracy(baseline_cache, a)[0], abs=1e-9) for a in GRID_ALPHAS}


def test_the_prototype_example_is_listed_in_its_process_only(child: dict) -> None:
    """Listed after the catalog's methods, in their order, though the example imports `gda` (registering it) before
    anything imports the catalog."""
    listed = [line.split()[0] for line in child["methods"].splitlines()]
    assert listed == [*method_names(), "prototype"]
    assert re.search(r"^alpha\s+float\s+0\.5\s+in \[0, 1\]", child["options"], flags=re.M)
    assert "prototype" not in method_names()


def test_a_run_of_an_unregistered_method_names_the_missing_import(child: dict) -> None:
    with pytest.raises(StateError, match="of method 'prototype', which this process has not registered: .*imported"):
        lathadapter.load(child["run_dir"], device="cpu")


def test_the_python_api_example_calls_its_functions_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call of the example binds to the real function's signature (a renamed keyword fails here); `GridSpec` and
    `Execution.parse` run for real, and the grid is expanded as `launch` expands it, so an option name or value they
    refuse fails too."""
    from lathadapter.experiments import launch, protocols, report
    from lathadapter.experiments.spec import expand

    example = code_block(USAGE, "from pathlib import Path\nfrom lathadapter.experiments.execution import Execution")
    calls = []

    def bound(module, name: str, returns: dict) -> None:
        real = getattr(module, name)

        def stand_in(*args, **kwargs):
            calls.append((name, inspect.signature(real).bind(*args, **kwargs).arguments))
            return returns
        monkeypatch.setattr(module, name, stand_in)

    bound(launch, "launch", {"done": 0, "results": "results.csv"})
    bound(protocols, "run_protocol", {"done": 0})
    bound(report, "write_report", {"report": "report.md"})
    threads = torch.get_num_threads()
    try:
        exec(compile(example, "usage.md", "exec"), {"__name__": "__main__"})
    finally:
        torch.set_num_threads(threads)  # `Execution.parse` sets torch's threads
    assert [name for name, _ in calls] == ["launch", "run_protocol", "write_report"]
    runs = expand(calls[0][1]["spec"])  # the grid's methods and option axes, checked as `launch` checks them
    hier = {(run.config.method, getattr(run.config.options, "lambda_hier", None)) for run in runs}
    assert hier == {("clip-adapter", None), ("lathadapter", 0.0), ("lathadapter", 0.1), ("lathadapter", 1.0)}
