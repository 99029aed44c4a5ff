"""What killed or concurrent processes leave in a grid folder is cleaned by the next grid: lock files nobody holds
and the folders of runs never finished; a lock a live process holds stays, and its run is left to it."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

import pytest

from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.experiments.grid import GridSpec, file_lock, run_grid

QUICK = {"epochs": ["1"], "min_steps": ["2"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("hard") / "c.h5", num_classes=6, dim=16, views=2,
                                 shots=(1, 2), seeds=(1, 2), train_per_class=8, test_per_class=6, seed=0)


def test_stale_locks_and_unfinished_folders_are_taken_over_and_removed(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    spec = GridSpec([str(cache)], ["clip-adapter"], [1, 2], [1, 2], options=QUICK)
    assert run_grid(spec, out, progress=False)["done"] == 4
    runs = out / "runs"
    keys = sorted(p.name for p in runs.iterdir())
    # What a race of two grids and a kill leave: locks of finished runs, and an unfinished run's folder and lock
    for key in keys[:2]:
        (runs / f"{key}.lock").touch()
    (runs / keys[2] / "metrics.json").unlink()
    (runs / f"{keys[2]}.lock").touch()
    (runs / "0123456789abcdef").mkdir()  # a folder of a run of another grid, killed before its first file
    (runs / "0123456789abcdef" / "config.json").write_text("{}")
    # A run a live process trains: its lock is held (flock on another open file description)
    (runs / keys[3] / "metrics.json").unlink()
    with (runs / f"{keys[3]}.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        summary = run_grid(spec, out, progress=False)
        assert (summary["done"], summary["skipped"], summary["elsewhere"]) == (1, 2, 1)
        assert sorted(p.name for p in runs.iterdir()) == sorted([*keys, f"{keys[3]}.lock"])
        assert (runs / keys[2] / "metrics.json").exists()
    assert run_grid(spec, out, progress=False)["done"] == 1  # the lock released: the run is taken over
    assert sorted(p.name for p in runs.iterdir()) == keys


def test_a_lock_removed_by_its_holder_is_not_held_by_a_waiter(tmp_path: Path) -> None:
    """A process waiting on a lock file its holder removes (a finished run, `sweep_stale`) locks the file now at the
    path, not the removed one, which guards nothing."""
    path = tmp_path / "run.lock"
    holder = path.open("a")
    fcntl.flock(holder, fcntl.LOCK_EX)

    def finish() -> None:
        time.sleep(0.3)
        path.unlink()
        holder.close()  # releases the lock on the removed file

    thread = threading.Thread(target=finish)
    thread.start()
    with file_lock(path) as held:  # opens the file before it is removed, waits for it
        assert held
        assert path.exists()
        with path.open("a") as other, pytest.raises(BlockingIOError):  # the file at the path is the one locked
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    thread.join()
