"""Faults end cleanly. What killed or concurrent processes leave in a grid folder is cleaned by the next grid (lock
files nobody holds, folders of runs never finished; a lock a live process holds stays). A full disk, a read-only or a
file `--out` ends in one line naming the user's path and the fix, keeping the previous state or a resumable `.tmp`."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from lathadapter.cache import build as build_module
from lathadapter.cache.store import SCHEMA_VERSION
from lathadapter.cache.synthetic import write_synthetic_cache
from lathadapter.cli import app
from lathadapter.experiments import run as run_module
from lathadapter.experiments.launch import launch
from lathadapter.experiments.spec import GridSpec
from lathadapter.experiments.table import file_lock

QUICK = {"epochs": ["1"], "min_steps": ["2"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cache(tmp_path_factory.mktemp("hard") / "c.h5", num_classes=6, dim=16, views=2,
                                 shots=(1, 2), seeds=(1, 2), train_per_class=8, test_per_class=6, seed=0)


def test_stale_locks_and_unfinished_folders_are_taken_over_and_removed(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    spec = GridSpec([str(cache)], ["clip-adapter"], [1, 2], [1, 2], options=QUICK)
    assert launch(spec, out, progress=False)["done"] == 4
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
        summary = launch(spec, out, progress=False)
        assert (summary["done"], summary["skipped"], summary["elsewhere"]) == (1, 2, 1)
        assert sorted(p.name for p in runs.iterdir()) == sorted([*keys, f"{keys[3]}.lock"])
        assert (runs / keys[2] / "metrics.json").exists()
    assert launch(spec, out, progress=False)["done"] == 1  # the lock released: the run is taken over
    assert sorted(p.name for p in runs.iterdir()) == keys


@pytest.mark.parametrize(("damage", "file"), [("", "metrics.json"), ("[1]", "metrics.json"),
                                             (None, "config.json")])
def test_a_damaged_finished_run_is_refused_before_training_and_named_with_the_fix(
        cache: Path, tmp_path: Path, damage: str | None, file: str) -> None:
    """A finished run whose metrics.json is empty or not an object, or whose config.json is gone: the grid stops
    before training anything, in one line naming the file and the fix (before: after each first batch, with no fix,
    or an AttributeError traceback); once the folder is deleted, the rerun trains it and the table is whole."""
    out = tmp_path / "grid"
    args = ["grid", "--cache", str(cache), "--method", "clip-adapter", "--shots", "1,2", "--seeds", "1,2",
            "--device", "cpu", "--set", "epochs=1", "--set", "min_steps=2", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    with (out / "results.csv").open() as f:
        expected = sorted((r["key"], r["acc_all"]) for r in csv.DictReader(f))
    runs = out / "runs"
    damaged, missing = sorted(p for p in runs.iterdir())[:2]
    if damage is None:
        (damaged / file).unlink()
    else:
        (damaged / file).write_text(damage)
    shutil.rmtree(missing)
    line = one_error_line(runner.invoke(app, args), str(damaged), "delete it and rerun")
    assert "Traceback" not in line and not missing.exists()  # nothing trained
    shutil.rmtree(damaged)
    assert runner.invoke(app, args).exit_code == 0
    with (out / "results.csv").open() as f:
        assert sorted((r["key"], r["acc_all"]) for r in csv.DictReader(f)) == expected


def test_a_killed_rewrites_temporary_table_is_removed_by_the_next_rewrite(cache: Path, tmp_path: Path) -> None:
    """A SIGKILL during a rewrite of results.csv leaves its hidden temporary file. The next rewrite, under the lock
    every rewrite holds, removes it; the table it writes is read back whole."""
    out = tmp_path / "grid"
    spec = GridSpec([str(cache)], ["zeroshot"], [1], [1, 2], options={})
    assert launch(spec, out, progress=False)["done"] == 2
    left = out / ".results.csv.4242.deadbeef.tmp"
    left.write_text("key,method\nhalf")  # what the killed rewrite had written
    other = out / ".results.lock.tmp"  # not a temporary table: kept
    other.write_text("")
    assert launch(spec, out, progress=False)["skipped"] == 2  # the rerun rewrites the table
    assert not left.exists() and other.exists()
    with (out / "results.csv").open(newline="") as f:
        assert sorted(row["seed"] for row in csv.DictReader(f)) == ["1", "2"]


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


# --- Full disks, read-only and file --out paths ---------------------------------------------------------------------

runner = CliRunner()


def _build_args(coop_dataset, tiny_clip, out: Path) -> list[str]:
    return ["cache", "build", "--dataset", f"split:{coop_dataset.split_file}", "--model", str(tiny_clip.config),
            "--pretrained", str(tiny_clip.checkpoint), "--shots", "1,2", "--seeds", "1", "--views", "2",
            "--workers", "0", "--batch-size", "16", "--device", "cpu", "--no-progress", "--out", str(out)]


def one_error_line(result, *fragments: str) -> str:
    """The result ended in exit code 1 with one `error:` line (no traceback) holding every fragment."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    return last


def test_a_full_disk_during_a_build_keeps_the_temporary_file_and_says_so(coop_dataset, tiny_clip, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """h5py reports ENOSPC as a RuntimeError quoting errno 28; flushing again crashed the process (exit 139)."""
    out = tmp_path / "shapes.h5"
    written = 0

    def full_after_one_block(*args, **kwargs):
        nonlocal written
        if written:
            raise RuntimeError("Can't write data (file write failed: ..., errno = 28, error message = 'No space left "
                               "on device', ...)")
        written += 1
        return real_write_rows(*args, **kwargs)

    real_write_rows = build_module.write_rows
    monkeypatch.setattr(build_module, "write_rows", full_after_one_block)
    line = one_error_line(runner.invoke(app, _build_args(coop_dataset, tiny_clip, out)), str(out),
                          "no space left on device", f"{out}.tmp", "rerun the same command")
    assert "lock" not in line
    assert (tmp_path / "shapes.h5.tmp").exists() and not out.exists() and not (tmp_path / "shapes.h5.lock").exists()
    monkeypatch.setattr(build_module, "write_rows", real_write_rows)
    resumed = runner.invoke(app, _build_args(coop_dataset, tiny_clip, out))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming the interrupted build" in resumed.output and f"{out}: resumed" in resumed.output


def test_a_failed_last_flush_leaves_the_error_on_its_way_out_the_one_the_user_sees(
        coop_dataset, tiny_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each outcome is one line and its exit code (usage.md, "Interrupts, errors and exit codes": 1 for a runtime
    failure, 130 for an interrupt). On a 40 KiB tmpfs the build was refused for room before encoding and the file's
    last flush then failed on the same full disk: that h5py error replaced the refusal and the build's hooks, left
    installed, swallowed it (exit 1 with no line at all). The refusal, or an interrupt, stays what is said; with
    nothing on its way out, the failed flush is the full-disk line; the process is ended after it either way."""
    out = tmp_path / "shapes.h5"

    def no_room(f, temporary, out):
        raise build_module.BuildError(f"{out}: not enough free space in {out.parent}")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    def full(self):
        raise RuntimeError("Unable to flush file (file write failed: ..., errno = 28, error message = 'No space left "
                           "on device', ...)")

    monkeypatch.setattr(h5py.File, "flush", full)
    monkeypatch.setattr(build_module, "_FAILED_WRITES", [])
    monkeypatch.setattr(build_module, "_check_room", no_room)
    result = runner.invoke(app, _build_args(coop_dataset, tiny_clip, out))
    one_error_line(result, str(out), "not enough free space")
    assert build_module.write_failed()  # `cli.main` ends the process after the line (HDF5's exit handler)
    assert not out.exists()

    monkeypatch.setattr(build_module, "_check_room", lambda f, temporary, out: None)
    monkeypatch.setattr(build_module, "_encode_text", interrupt)
    result = runner.invoke(app, _build_args(coop_dataset, tiny_clip, out))
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("interrupted: "), result.output
    assert not out.exists() and Path(f"{out}.tmp").exists()  # kept for the rerun to resume

    closing, real_flush, real_close = [False], h5py.File.flush, build_module._close

    def flush(self):  # only the last flush, in `_close`, finds the disk full
        return full(self) if closing[0] else real_flush(self)

    def close(f, flush):
        closing[0] = True
        real_close(f, flush)

    monkeypatch.setattr(h5py.File, "flush", flush)
    monkeypatch.setattr(build_module, "_close", close)
    for step in ("_encode_text", "_encode_split", "_check_losses", "finalize"):  # the build ends without an error
        monkeypatch.setattr(build_module, step, lambda *args, **kwargs: None)
    result = runner.invoke(app, _build_args(coop_dataset, tiny_clip, out))
    assert closing[0]
    one_error_line(result, str(out), "no space left on device", f"{out}.tmp", "rerun the same command")


def test_rows_whose_write_was_lost_are_never_moved_into_place_as_a_complete_cache(
        coop_dataset, tiny_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """h5py drops the error of a write HDF5 buffered and flushed when the dataset closed: on a full tmpfs a build
    moved into place a cache marked complete whose test rows were all zero (and a rerun called it up to date). A
    lost write (rows flagged encoded, features all zero) ends in one line; the rerun resumes and encodes them."""
    out = tmp_path / "shapes.h5"
    real_write_rows = build_module.write_rows

    def lost_test_rows(f, split, rows, features, *args, **kwargs):
        real_write_rows(f, split, rows, features, *args, **kwargs)
        if split == "test":  # the flags reached the disk, the features did not
            f["splits/test/features"][rows] = np.zeros((len(rows), features.shape[1]), dtype=np.float16)

    monkeypatch.setattr(build_module, "write_rows", lost_test_rows)
    one_error_line(runner.invoke(app, _build_args(coop_dataset, tiny_clip, out)), f"{out}.tmp",
                   "test rows did not reach the disk", "rerun the build")
    assert not out.exists() and (tmp_path / "shapes.h5.tmp").exists()
    monkeypatch.setattr(build_module, "write_rows", real_write_rows)
    resumed = runner.invoke(app, _build_args(coop_dataset, tiny_clip, out))
    assert resumed.exit_code == 0 and f"{out}: resumed" in resumed.output, resumed.output
    with h5py.File(out, "r") as f:
        norms = (f["splits/test/features"][:].astype("float32") ** 2).sum(axis=1) ** 0.5
        assert bool(f.attrs["complete"]) and abs(norms - 1).max() < 1e-2


@pytest.mark.parametrize(("quoted", "said", "fix"), [(27, "file too large", "raise the file size limit (ulimit -f)"),
                                                      (5, "input/output error", "check the disk")])
def test_other_write_failures_during_a_build_end_in_one_line(coop_dataset, tiny_clip, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, quoted: int,
                                                            said: str, fix: str) -> None:
    """A file over `ulimit -f` (EFBIG) or a failing disk (EIO), as h5py reports them: one line naming the cache, the
    problem and what to do, the `.tmp` kept; before, only errno 28 was caught and h5py flushed again (exit 139)."""
    out = tmp_path / "shapes.h5"

    def failing(*args, **kwargs):
        raise RuntimeError(f"Can't write data (file write failed: ..., errno = {quoted}, error message = '...')")

    monkeypatch.setattr(build_module, "write_rows", failing)
    one_error_line(runner.invoke(app, _build_args(coop_dataset, tiny_clip, out)), str(out), said,
                   f"{out}.tmp", f"{fix} and rerun the same command")
    assert (tmp_path / "shapes.h5.tmp").exists() and not out.exists()


def test_a_build_over_the_file_size_limit_ends_in_one_line_and_exit_1_not_a_crash(coop_dataset, tiny_clip,
                                                                                     tmp_path: Path) -> None:
    """A real `ulimit -f` (RLIMIT_FSIZE, SIGXFSZ ignored) at half the cache's size, in a process of its own: HDF5's
    failed flushes, which h5py only printed (a traceback each, while the build went on encoding), stop the build
    with its one error line, and the process exits 1; before, HDF5's exit handler crashed it (exit 139). The rerun
    without the limit builds a cache `cache verify` passes."""
    import resource
    import signal

    whole = tmp_path / "whole.h5"
    hooks = (sys.excepthook, sys.unraisablehook)
    assert runner.invoke(app, _build_args(coop_dataset, tiny_clip, whole)).exit_code == 0
    assert (sys.excepthook, sys.unraisablehook) == hooks  # a build that wrote everything leaves them as they were
    limit = whole.stat().st_size // 2
    out = tmp_path / "shapes.h5"

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[2])),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lathadapter.cli", *_build_args(coop_dataset, tiny_clip, out)],
                          env=env, capture_output=True, text=True, timeout=300, preexec_fn=limited)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "file too large" in errors[0] and f"{out}.tmp" in errors[0], done.stderr
    assert not out.exists()
    rerun = runner.invoke(app, _build_args(coop_dataset, tiny_clip, out))
    assert rerun.exit_code == 0, rerun.output
    verified = runner.invoke(app, ["cache", "verify", str(out)])
    assert verified.exit_code == 0 and "ok" in verified.output, verified.output


def test_an_unreadable_temporary_file_is_not_called_an_older_schema(coop_dataset, tiny_clip, tmp_path: Path) -> None:
    out = tmp_path / "shapes.h5"
    with h5py.File(tmp_path / "shapes.h5.tmp", "w") as f:  # a write cut short: this schema, its fingerprint unreadable
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["fingerprint_json"] = '{"dataset": "sha'
    result = runner.invoke(app, _build_args(coop_dataset, tiny_clip, out))
    assert result.exit_code == 0, result.output
    assert "schema" not in result.output and "it is not readable" in result.output


def test_a_build_larger_than_the_free_space_stops_before_encoding(coop_dataset, tiny_clip, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "shapes.h5"
    monkeypatch.setattr(build_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    one_error_line(runner.invoke(app, _build_args(coop_dataset, tiny_clip, out)), f"{out}: not enough free space",
                   "MB more", "choose another --out")
    assert not out.exists()


@pytest.mark.parametrize("command", ["fit", "grid"])
def test_a_full_disk_while_saving_a_run_leaves_no_run_folder(cache: Path, tmp_path: Path, command: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = run_module.write_atomic

    def full(path: Path, write) -> None:
        if path.name == "weights.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path.with_name(".weights.pt.1.tmp")))
        real(path, write)

    monkeypatch.setattr(run_module, "write_atomic", full)
    out = tmp_path / "out"
    args = ["--cache", str(cache), "--method", "clip-adapter", "--shots", "1", "--device", "cpu", "--out", str(out),
            "--set", "epochs=1"]
    result = runner.invoke(app, [command, *args] if command == "fit" else [command, *args, "--seeds", "1"])
    line = one_error_line(result, f"--out {out}: cannot write there: no space left on device", "rerun")
    assert ".tmp" not in line
    folders = [p for p in out.rglob("*") if p.is_dir() and p.name != "runs"]
    assert folders == [], folders


@pytest.mark.parametrize(("code", "said"), [(errno.EFBIG, "file too large"), (errno.EIO, "input/output error"),
                                            (errno.ENOSPC, "no space left on device")])
def test_a_write_error_without_a_file_name_names_the_users_path(cache: Path, tmp_path: Path, code: int, said: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """write(2) errors carry no file name (`ulimit -f` gives a bare "[Errno 27] File too large"): the run's
    atomic write names its file, and the command says which --out and what to do, in one line."""

    def failing(self: Path, data: bytes) -> int:
        raise OSError(code, os.strerror(code))  # as a failed write(2): no file name

    monkeypatch.setattr(Path, "write_bytes", failing)
    out = tmp_path / "out"
    result = runner.invoke(app, ["fit", "--cache", str(cache), "--method", "clip-adapter", "--shots", "1",
                                 "--device", "cpu", "--out", str(out), "--set", "epochs=1"])
    one_error_line(result, f"--out {out}: cannot write there: {said}")


@pytest.mark.parametrize("command", ["fit", "grid", "protocol", "report", "subset", "subset-beside"])
def test_an_out_path_under_a_file_names_the_users_path(cache: Path, tmp_path: Path, command: str) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub"
    run = ["--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--device", "cpu", "--out", str(out)]
    args = {"fit": ["fit", *run], "grid": ["grid", *run, "--seeds", "1"],
            "protocol": ["protocol", "few-shot", *run, "--seeds", "1"],
            "report": ["report", str(tmp_path / "file"), "--out", str(out)],
            "subset": ["cache", "subset", str(cache), "--shots", "1", "--seed", "1", "--out", str(out / "s.json")],
            "subset-beside": ["cache", "subset", str(cache), "--shots", "1", "--seed", "1", "--out", str(out)]}
    if command == "report":
        assert runner.invoke(app, ["grid", *run[:-1], str(tmp_path / "grid"), "--seeds", "1"]).exit_code == 0
        args["report"][1] = str(tmp_path / "grid")
    line = one_error_line(runner.invoke(app, args[command]), "--out", str(out))
    assert "Errno" not in line and ".tmp" not in line and ".lock" not in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
@pytest.mark.parametrize("command", ["fit", "grid", "report", "subset"])
def test_an_out_where_no_file_can_be_created_names_the_users_path(cache: Path, tmp_path: Path, command: str) -> None:
    """ENOENT while writing (a folder that cannot hold new files, or vanished meanwhile): the user's --out, not the
    temporary file's name nor a raw errno."""
    out = Path("/proc") / f"lathadapter-{os.getpid()}"
    run = ["--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--device", "cpu", "--out", str(out)]
    args = {"fit": ["fit", *run], "grid": ["grid", *run, "--seeds", "1"],
            "report": ["report", str(tmp_path / "grid"), "--out", str(out)],
            "subset": ["cache", "subset", str(cache), "--shots", "1", "--seed", "1", "--out", str(out)]}[command]
    if command == "report":
        assert runner.invoke(app, ["grid", *run[:-1], str(tmp_path / "grid"), "--seeds", "1"]).exit_code == 0
    line = one_error_line(runner.invoke(app, args), f"--out {out}: cannot write there: a folder on the path is "
                          "missing or cannot hold new files; choose another --out")
    assert "Errno" not in line and ".tmp" not in line and ".lock" not in line


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a read-only tmpfs (root only)")
def test_a_read_only_out_names_the_users_path(cache: Path, coop_dataset, tiny_clip, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = ["--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--device", "cpu"]
        for args, out in ((["grid", *run, "--seeds", "1"], folder / "g"), (["fit", *run], folder / "r"),
                          (_build_args(coop_dataset, tiny_clip, folder / "c.h5")[:-2], folder / "c.h5")):
            line = one_error_line(runner.invoke(app, [*args, "--out", str(out)]), f"--out {out}", "read-only")
            assert ".lock" not in line and ".tmp" not in line
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# --- A damaged cache file -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flipped(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache with 2,000 bytes of its metadata flipped: HDF5 opens it and fails reading ("ran off end of input
    buffer")."""
    data = bytearray(cache.read_bytes())
    for i in range(4000, 6000):
        data[i] ^= 0x5A
    path = tmp_path_factory.mktemp("flipped") / "flipped.h5"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("command", ["verify", "info", "fit", "grid"])
def test_a_byte_flipped_cache_is_called_corrupt_by_name(flipped: Path, tmp_path: Path, command: str) -> None:
    run = ["--cache", str(flipped), "--method", "zeroshot", "--shots", "1", "--device", "cpu", "--out",
           str(tmp_path / "out")]
    args = {"verify": ["cache", "verify", str(flipped)], "info": ["cache", "info", str(flipped)],
            "fit": ["fit", *run], "grid": ["grid", *run, "--seeds", "1"]}[command]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the cache file is corrupt" in errors[0], result.output
    assert str(flipped) in errors[0] and "cache build" in errors[0] and "--force" in errors[0]


# --- Ray ------------------------------------------------------------------------------------------------------------


# What a server at --address sends back to an HTTP/2 client (RFC 9113 §3.4): a Ray cluster's GCS, a gRPC server,
# answers the client's preface with a SETTINGS frame (9-byte header: length 0, type 4, no flags, stream 0)
SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP_ANSWER = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


@contextlib.contextmanager
def listening(answer: bytes | None) -> Iterator[int]:
    """A server on a free port of this machine, for the block: each connection it accepts is closed at once (None),
    or gets `answer` and is then held open, saying nothing more. Yields the port."""
    server = socket.create_server(("", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the block ended
                return
            if answer is None:
                connection.close()
            else:
                connection.sendall(answer)
                held.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for connection in held:
            connection.close()


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return closed.getsockname()[1]


@pytest.mark.parametrize("server", ["nothing", "closes", "http2"])
def test_an_address_where_no_ray_cluster_answers_fails_in_bounded_time(cache: Path, tmp_path: Path,
                                                                      server: str) -> None:
    """`--address` where nothing listens, where a server accepts and closes, or where an HTTP/2 server answers but
    never as a cluster's GCS: `error: --address …` naming what to give instead, exit 1, no traceback. Ray alone
    retried for minutes (20 tries of 40 s); the timeout is the failure mode."""
    pytest.importorskip("ray")
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[2])),
           "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    answer = {"nothing": None, "closes": None, "http2": SETTINGS}[server]
    with contextlib.ExitStack() as stack:
        port = free_port() if server == "nothing" else stack.enter_context(listening(answer))
        command = [sys.executable, "-m", "lathadapter.cli", "grid", "--cache", str(cache), "--method", "zeroshot",
                   "--shots", "1", "--seeds", "1", "--device", "cpu", "--out", str(tmp_path / "g"), "--backend",
                   "ray", "--address", f"127.0.0.1:{port}"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: --address 127.0.0.1:{port}: "), done.stderr
    assert "`ray start --head` printed (HEAD:6379" in lines[-1] and "auto" in lines[-1]
    if server != "http2":  # refused before Ray is asked: Ray's own lines (GCS retries) never start
        assert len(lines) == 1, done.stderr


@pytest.mark.parametrize(("answer", "refused"), [(None, "closed the connection"), (HTTP_ANSWER, "not gRPC"),
                                                 (SETTINGS, None)])
def test_check_reachable_passes_only_a_server_that_answers_as_grpc(answer: bytes | None, refused: str | None) -> None:
    from lathadapter.experiments.ray_cluster import RayBackendError, check_reachable

    with listening(answer) as port:
        if refused is None:
            check_reachable(f"127.0.0.1:{port}", timeout=5)
        else:
            with pytest.raises(RayBackendError, match=f"a server listens there but is not a Ray cluster .{refused}"):
                check_reachable(f"127.0.0.1:{port}", timeout=5)
    check_reachable("auto")
    with pytest.raises(RayBackendError, match="cannot reach"):
        check_reachable(f"127.0.0.1:{free_port()}")


@pytest.mark.parametrize("exported", ["closed", "ray-client", "closed, --address auto"])
def test_a_ray_address_exported_where_no_cluster_answers_fails_in_one_line(cache: Path, tmp_path: Path,
                                                                           exported: str) -> None:
    """RAY_ADDRESS (which `ray.init` reads when `--address` is not given or is auto; a cluster job's script may export
    it) gets the checks `--address` gets, and the message names it: before, a closed port was retried for minutes."""
    pytest.importorskip("ray")
    port = free_port()
    address = f"127.0.0.1:{port}" if exported.startswith("closed") else f"ray://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[2])),
           "OMP_NUM_THREADS": "1", "RAY_ADDRESS": address}
    command = [sys.executable, "-m", "lathadapter.cli", "grid", "--cache", str(cache), "--method", "zeroshot",
               "--shots", "1", "--seeds", "1", "--device", "cpu", "--out", str(tmp_path / "g"), "--backend", "ray",
               *(["--address", "auto"] if exported.endswith("auto") else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    if exported.startswith("closed"):
        assert done.returncode == 1
        assert lines[0].startswith(f"error: RAY_ADDRESS {address}: cannot reach a Ray cluster there (")
        assert lines[0].endswith("or unset it to start a local cluster")
    else:
        assert done.returncode == 2
        assert lines[0].startswith(f"error: RAY_ADDRESS {address}: Ray Client (ray://) is not supported")
