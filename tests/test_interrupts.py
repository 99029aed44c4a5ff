"""A worker grid stopped by a signal leaves no process behind: SIGKILL of the driver (its workers and the resource
tracker end with it), SIGTERM (what `timeout` and Slurm send) and Ctrl-C (SIGINT to the terminal's process group)
stop it at once with one line saying how many runs are finished and how to resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import alive

from lathadapter.adapter.trainer import signals_deferred
from lathadapter.cache.synthetic import write_synthetic_cache

PACKAGE_PARENT = str(Path(__file__).resolve().parents[1].parent)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("kill") / "c.h5", num_classes=6, dim=16, views=2,
                                 shots=(1, 2), seeds=(1, 2, 3), train_per_class=8, test_per_class=6, seed=0)


def children(pid: int) -> list[int]:
    """PIDs whose parent is `pid`, read from /proc (no psutil)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def with_ctrl_c() -> None:
    """A child's SIGINT back to its default before it starts: a shell's background job (`cmd &`, e.g. a CI script
    run so) starts with SIGINT ignored, children inherit that and Python then never raises KeyboardInterrupt, so the
    Ctrl-C these tests send would go unheard."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_grid(cache: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """A two-worker grid in its own session, once its workers and resource tracker run (3 children)."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", PACKAGE_PARENT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lathadapter.cli", "grid", "--cache", str(cache), "--method",
               "clip-adapter,lathadapter", "--shots", "1,2", "--seeds", "1,2,3", "--set", "epochs=200",
               "--device", "cpu", "--workers", "2", "--batch-runs", "1", "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=with_ctrl_c)
    deadline = time.monotonic() + 120
    while len(children(process.pid)) < 3:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.2)
    time.sleep(1.0)  # the workers past their initializer
    return process, children(process.pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("how", "code"), [("SIGKILL", -9), ("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stopped_worker_grid_leaves_no_process(cache: Path, tmp_path: Path, how: str, code: int) -> None:
    process, kids = start_grid(cache, tmp_path / "grid")
    sent = time.monotonic()
    if how == "SIGINT":
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    else:
        process.send_signal(getattr(signal, how))
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    while any(alive(pid) for pid in kids) and time.monotonic() - sent < 5:
        time.sleep(0.1)
    left = [pid for pid in kids if alive(pid)]
    for pid in left:  # leave the machine clean even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{how}: processes {left} outlived the driver by 5 s"
    if how != "SIGKILL":
        assert "Traceback" not in stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("interrupted: ") and last.endswith("finished, rerun the same command to resume")
        assert time.monotonic() - sent < 5, f"{how}: the grid took over 5 s to stop"


def test_sigterm_of_a_grid_in_this_process_keeps_the_finished_runs(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", PACKAGE_PARENT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lathadapter.cli", "grid", "--cache", str(cache), "--method", "lathadapter",
               "--shots", "1,2", "--seeds", "1,2,3", "--set", "epochs=300", "--device", "cpu", "--workers", "1",
               "--batch-runs", "1", "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("runs/*/metrics.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)  # at least one run finished
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    finished = len(list(out.glob("runs/*/metrics.json")))
    runs = "1 run" if finished == 1 else f"{finished} runs"
    assert stderr.strip().splitlines()[-1] == f"interrupted: {runs} finished, rerun the same command to resume"
    assert 1 <= finished < 6 and "Traceback" not in stderr


def handles_sigterm(pid: int) -> bool:
    """Whether process `pid` has installed a SIGTERM handler (/proc's SigCgt mask): `fit` has started."""
    try:
        caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("how", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stopped_fit_says_so_in_one_line(cache: Path, tmp_path: Path, how: str, code: int) -> None:
    """`fit` stopped by SIGTERM or Ctrl-C ends as `grid` does: one `interrupted:` line, exit 143 or 130 (audit
    finding 18); a run is saved only when it finishes, so the rerun trains it."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", PACKAGE_PARENT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lathadapter.cli", "fit", "--cache", str(cache), "--method", "lathadapter",
               "--shots", "2", "--set", "epochs=100000", "--device", "cpu", "--out", str(tmp_path / "runs")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=with_ctrl_c)
    deadline = time.monotonic() + 120
    while not handles_sigterm(process.pid):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "fit did not start"
        time.sleep(0.1)
    time.sleep(1.0)  # training
    process.send_signal(getattr(signal, how))
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert stderr.strip().splitlines()[-1] == "interrupted: the run did not finish, rerun the same command to train it"
    assert not list((tmp_path / "runs").glob("*/metrics.json"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_deferred_block_comes_after_it(signum: int) -> None:
    """`signals_deferred` (around torch._dynamo's import, where a Ctrl-C broke torch half-way): a signal sent inside
    the block does not interrupt it; the signal's own handler runs once the block is done, and the handlers in place
    before are back."""
    raised: list[str] = []

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    before = signal.signal(signum, handler)
    try:
        with pytest.raises(KeyboardInterrupt, match=f"signal {signum}"), signals_deferred(signal.SIGINT,
                                                                                          signal.SIGTERM):
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # the handler would run here, at the next bytecode
            raised.append("the block ran to its end")
        assert raised == ["the block ran to its end"]
        assert signal.getsignal(signum) is handler
    finally:
        signal.signal(signum, before)
