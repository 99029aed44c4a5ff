"""Kill the command line at random moments, rerun it, and check that the resumed result is the uninterrupted one; fill
a real disk under it, free space, and check the same.

For each target (`build`: `cache build` with 2 decoding workers; `grid`: a grid in one process; `workers`: `grid
--workers 2`; `batched`: `grid --batch-runs 8`; `protocol`: a few-shot protocol; `report`: `report` of a finished
grid) the command runs once uninterrupted (the reference; its wall time T), then `--trials` times per signal in a
fresh folder: SIGKILL to the parent alone (`KILL`), SIGKILL to its process group (`KILL-group`), SIGINT to the group
(Ctrl-C) or SIGTERM to the parent, sent at a uniformly random time in (0.05 T, 0.95 T) drawn from `--seed` (each
trial's delay is printed, so a failure can be replayed). The same command then reruns until it exits 0 (at most 3
times) and its output is compared with the reference: each run's config.json (less `execution`), metrics.json and
results.csv (less `train_seconds`, `eval_seconds`, `wall_seconds`, `batch_runs` and `batch_mode`: how long and how,
not what), weights.pt and points.pt by bytes, the cache's HDF5 datasets and attributes bitwise, the report's files by
bytes. Also counted: descendants of the parent still alive 2 s after it died (then killed), lock or temporary files
left after the rerun (a grid's `.results.lock` stays by design: an uninterrupted grid leaves it too), and tracebacks.

`disk`: a cache build's `--out`, a grid's and a report's folder on a small tmpfs (root only; skipped otherwise),
sized so that the disk fills before anything is written, mid-way and at the last write. Each must exit 1 with one
`error:` line naming the path and the full disk, leave nothing a rerun would take as finished, and once the files are
copied onto a larger tmpfs, the same command must finish with the reference's result.

Everything runs on tiny synthetic inputs in a temporary folder, on one thread; about 20 minutes at the defaults on a
loaded 2-core machine (trials cost their command's start, some 3 s each):

    PYTHONPATH=... OMP_NUM_THREADS=1 python benchmarks/kill_resume.py [--trials 2] [--targets grid,disk] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO / "tests" / "data" / "lathadapter-tiny-test.json"
CLASSES = ["circle", "ring", "ellipse", "triangle", "square", "hexagon", "star", "cross"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TARGETS = ("build", "grid", "workers", "batched", "protocol", "report", "disk")
SIGNALS = ("KILL", "KILL-group", "INT", "TERM")
# what records wall time (never equal twice) or how a run was trained, not what: a run resumed alone after its batch
# partner finished records batch_runs 1, "alone", where the uninterrupted grid trained the two in lockstep
IGNORED = {"train_seconds", "eval_seconds", "wall_seconds", "batch_runs", "batch_mode"}
RERUNS = 3
ORPHAN_WAIT = 2.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lathadapter.cli", *args]


def with_ctrl_c() -> None:
    """SIGINT back to its default in the child (a background job starts with it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def process_table() -> dict[int, tuple[int, str]]:
    """Every process: pid → (parent pid, start time), from /proc (the start time tells a reused pid apart)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            table[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """The processes below `pid`: pid → start time."""
    table = process_table()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, start) in table.items():
            if ppid == parent and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def alive(pid: int, start: str) -> bool:
    """Whether process `pid` started at `start` still runs (a zombie does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != "Z"


def leftovers(folder: Path) -> list[str]:
    """Lock and temporary files under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".lock", ".tmp")))


# ---------------------------------------------------------------- what a finished command leaves, to compare


def h5_state(path: Path) -> dict[str, object]:
    import h5py
    import numpy as np

    state: dict[str, object] = {}

    def visit(name: str, obj: object) -> None:
        for key, value in obj.attrs.items():
            state[f"{name}@{key}"] = repr(np.asarray(value).tolist())
        if isinstance(obj, h5py.Dataset):
            value = np.asarray(obj[()])  # strings as their values (an object array's bytes are pointers)
            state[name] = (str(value.dtype), value.shape, value.tolist() if value.dtype == object else value.tobytes())

    with h5py.File(path, "r") as f:
        visit("/", f)
        f.visititems(visit)
    return state


def without_timing(value: object) -> object:
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def grid_state(folder: Path) -> dict[str, object]:
    """results.csv rows and each run's files, the timing fields and config.json's `execution` left out."""
    state: dict[str, object] = {}
    if (folder / "results.csv").exists():
        with (folder / "results.csv").open(newline="") as f:
            state["results.csv"] = [{k: v for k, v in row.items() if k not in IGNORED} for row in csv.DictReader(f)]
    for path in sorted((folder / "runs").glob("*/*")) if (folder / "runs").is_dir() else []:
        name = str(path.relative_to(folder))
        if path.name == "metrics.json":
            state[name] = without_timing(json.loads(path.read_text()))
        elif path.name == "config.json":
            state[name] = {k: v for k, v in json.loads(path.read_text()).items() if k != "execution"}
        else:
            state[name] = path.read_bytes()
    return state


def files_state(folder: Path, root: Path) -> dict[str, bytes]:
    """Each file's bytes, `root` (the trial's folder, which a report names) written as `<root>`."""
    return {str(p.relative_to(folder)): p.read_bytes().replace(str(root).encode(), b"<root>")
            for p in sorted(folder.rglob("*")) if p.is_file()}


def differences(a: dict[str, object], b: dict[str, object]) -> list[str]:
    names = sorted(set(a) | set(b))
    return [name for name in names if a.get(name, "<absent>") != b.get(name, "<absent>")]


# ---------------------------------------------------------------- the targets


class Target:
    """A command run in a fresh folder, and the state it leaves there to compare."""

    def __init__(self, name: str, inputs: dict[str, Path]) -> None:
        self.name, self.inputs = name, inputs

    def prepare(self, folder: Path) -> None:
        """Inputs the command needs in its folder (a report's grid)."""
        if self.name == "report":
            shutil.copytree(self.inputs["grid"], folder / "g", ignore=shutil.ignore_patterns("report"))

    def command(self, folder: Path, out: Path | None = None) -> list[str]:
        """The command on `folder`'s inputs, writing under `out` (default `folder`)."""
        i, out = self.inputs, out or folder
        grid = ["--cache", str(i["cache"]), "--method", "clip-adapter,lathadapter,tip-adapter-f", "--shots", "1,2",
                "--seeds", "1,2", "--device", "cpu", "--out", str(out / "g")]
        if self.name == "build":
            return cli("cache", "build", "--dataset", f"split:{i['split']}", "--model", str(TINY_MODEL), "--pretrained",
                       str(i["model"]), "--shots", "1,2", "--seeds", "1,2", "--views", "2", "--batch-size", "16",
                       "--workers", "2", "--device", "cpu", "--no-progress", "--out", str(out / "c.h5"))
        if self.name == "grid":
            return cli("grid", *grid, "--workers", "1")
        if self.name == "workers":
            return cli("grid", *grid, "--workers", "2")
        if self.name == "batched":
            return cli("grid", *grid, "--workers", "1", "--batch-runs", "8")
        if self.name == "protocol":
            return cli("protocol", "few-shot", "--cache", str(i["cache"]), "--method", "clip-adapter,lathadapter",
                       "--shots", "1,2", "--seeds", "1,2", "--device", "cpu", "--workers", "1", "--out",
                       str(out / "g"))
        return cli("report", str(folder / "g"), "--out", str(out / "r"))

    def state(self, folder: Path, out: Path | None = None) -> dict[str, object]:
        """What the command left under `out` (default `folder`), run on `folder`'s inputs."""
        out = out or folder
        if self.name == "build":
            return h5_state(out / "c.h5") if (out / "c.h5").exists() else {}
        if self.name == "report":
            return files_state(out / "r", folder) if (out / "r").exists() else {}
        return grid_state(out / "g")


def make_inputs(tmp: Path) -> dict[str, Path]:
    import open_clip
    import torch

    from lathadapter.cache.synthetic import write_synthetic_cache
    from lathadapter.demo.synthetic import write_coop_dataset

    cache = write_synthetic_cache(tmp / "c.h5", num_classes=6, dim=16, views=2, shots=(1, 2), seeds=(1, 2),
                                  train_per_class=8, test_per_class=6, seed=0, name="src")
    split = write_coop_dataset(tmp / "shapes", "Shapes", CLASSES, counts=(12, 4, 8), seed=0)
    open_clip.add_model_config(TINY_MODEL)
    torch.manual_seed(0)
    torch.save(open_clip.create_model(TINY_MODEL.stem).state_dict(), tmp / "tiny.pt")
    return {"cache": cache, "split": split, "model": tmp / "tiny.pt"}


def run_to_end(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


def trial(target: Target, how: str, delay: float, folder: Path) -> dict[str, object]:
    """Start the command, signal it after `delay` s, rerun it until it exits 0; what was seen."""
    target.prepare(folder)
    process = subprocess.Popen(target.command(folder), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, preexec_fn=with_ctrl_c)
    seen: dict[int, str] = {}
    due = time.monotonic() + delay
    while time.monotonic() < due and process.poll() is None:
        seen.update(descendants(process.pid))
        time.sleep(0.03)
    seen.update(descendants(process.pid))
    if process.poll() is None:
        if how == "KILL":
            process.send_signal(signal.SIGKILL)
        elif how == "KILL-group":
            os.killpg(process.pid, signal.SIGKILL)
        elif how == "INT":
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
        else:
            process.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # a parent that does not stop: counted as a traceback-less hang
        process.kill()
        stdout, stderr = process.communicate()
        stderr += "\n<no exit within 60 s of the signal>"
    died = time.monotonic()
    while any(alive(pid, start) for pid, start in seen.items()) and time.monotonic() - died < ORPHAN_WAIT:
        time.sleep(0.05)
    orphans = [pid for pid, start in seen.items() if alive(pid, start)]
    for pid in orphans:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    outputs = [stderr + stdout]
    code, reruns = process.returncode, 0
    while code != 0 and reruns < RERUNS:
        reruns += 1
        done = run_to_end(target.command(folder))
        code = done.returncode
        outputs.append(done.stderr + done.stdout)
    return {"killed": process.returncode, "code": code, "reruns": reruns, "orphans": len(orphans),
            "traceback": any("Traceback" in text for text in outputs), "left": leftovers(folder),
            "outputs": outputs}


def kill_trials(target: Target, tmp: Path, trials: int, rng: random.Random) -> list[tuple[str, ...]]:
    reference = tmp / f"ref-{target.name}"
    reference.mkdir()
    target.prepare(reference)
    began = time.monotonic()
    done = run_to_end(target.command(reference))
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    expected = target.state(reference)
    print(f"{target.name}: reference in {took:.1f} s ({len(expected)} items)", file=sys.stderr, flush=True)
    rows = []
    for how in SIGNALS:
        equal = orphans = tracebacks = 0
        reruns: list[int] = []
        left: set[str] = set()
        for n in range(trials):
            delay = rng.uniform(0.05 * took, 0.95 * took)
            folder = tmp / f"{target.name}-{how}-{n}"
            folder.mkdir()
            seen = trial(target, how, delay, folder)
            different = differences(expected, target.state(folder)) if seen["code"] == 0 else ["<never exit 0>"]
            equal += not different
            orphans += seen["orphans"]
            tracebacks += seen["traceback"]
            reruns.append(seen["reruns"])
            left.update(seen["left"])
            status = "equal" if not different else f"DIFFERENT {different[:4]}"
            print(f"  {target.name} {how} trial {n}: signal at {delay:.3f} s, killed exit {seen['killed']}, "
                  f"{seen['reruns']} reruns, {seen['orphans']} orphans, left {seen['left']}: {status}",
                  file=sys.stderr, flush=True)
            if different or seen["traceback"] or seen["orphans"]:
                for text in seen["outputs"]:
                    print("    | " + "\n    | ".join(text.strip().splitlines()[-6:]), file=sys.stderr, flush=True)
            shutil.rmtree(folder)
        rows.append((target.name, how, str(trials), f"{equal}/{trials}", str(orphans), str(tracebacks),
                     ",".join(map(str, reruns)), " ".join(sorted(left)) or "-"))
    return rows


# ---------------------------------------------------------------- full disks


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[bool]:
    """A tmpfs of `size` mounted at `folder` for the block (True), or False where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                                    str(folder)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def disk_size(target: Target, reference: Path) -> int:
    """Bytes the reference output takes on a tmpfs, which gives each file whole 4 KiB pages."""
    out = {"build": reference / "c.h5", "report": reference / "r"}.get(target.name, reference / "g")
    files = [out] if out.is_file() else [p for p in out.rglob("*") if p.is_file()]
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in files)


def fill_after(folder: Path, delay: float) -> subprocess.Popen:
    """A process that fills the file system of `folder` after `delay` seconds, as another program would."""
    code = (f"import time; time.sleep({delay})\nwith open({str(folder / 'filler')!r}, 'wb') as f:\n"
            " while True: f.write(bytes(4096)); f.flush()")
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)


def disk_trials(targets: dict[str, Target], tmp: Path, names: tuple[str, ...] = ("build", "grid", "report")
                ) -> list[tuple[str, ...]]:
    """Each target's output on a tmpfs that fills before anything, mid-way and at the last write; then the files it
    left copied onto a tmpfs 4 times the output's size, and the command run again. A cache build checks the free
    space first (the cache's size and 1 MiB), so its disk is large enough for that and filled by another process at
    half and at 95 % of the uninterrupted build's wall time."""
    rows: list[tuple[str, ...]] = []
    for name in names:
        target = targets[name]
        reference = tmp / f"ref-disk-{name}"
        reference.mkdir()
        target.prepare(reference)
        began = time.monotonic()
        assert run_to_end(target.command(reference)).returncode == 0
        took = time.monotonic() - began
        expected, size = target.state(reference), disk_size(target, reference)
        for moment, fraction in (("before", 0.0), ("mid-way", 0.5), ("last write", 0.95)):
            filled = name == "build" and fraction > 0
            kib = (size + 1536 * 1024) // 1024 if filled else max(4, int(size * fraction) // 1024)
            inputs, kept, mount = (tmp / f"disk-{name}-{moment[0]}{kib}-{part}" for part in ("in", "kept", "mnt"))
            inputs.mkdir()
            target.prepare(inputs)
            with tmpfs(mount, f"{kib}k") as mounted:
                if not mounted:
                    print("disk: skipped, mounting a tmpfs is not permitted here", file=sys.stderr)
                    return rows
                if fraction == 0.0:  # full before anything: fill what is left
                    with contextlib.suppress(OSError), (mount / "filler").open("wb") as f:
                        while True:
                            f.write(b"\0" * 4096)
                            f.flush()
                filler = fill_after(mount, fraction * took) if filled else None
                done = run_to_end(target.command(inputs, mount))
                if filler:
                    filler.kill()
                    filler.wait()
                left = leftovers(mount)
                (mount / "filler").unlink(missing_ok=True)
                shutil.copytree(mount, kept, symlinks=True)
            output = (done.stderr + done.stdout).strip()
            errors = [line for line in output.splitlines() if line.startswith("error:")]
            # a half-written output a rerun would take as finished: a cache file in place, or a run's metrics.json
            # that is not the reference's
            if name == "build":
                claimed = (kept / "c.h5").exists() and done.returncode != 0
            else:
                state = target.state(inputs, kept)
                claimed = any(expected.get(k) != v for k, v in state.items() if k.endswith("metrics.json"))
            with tmpfs(mount, f"{4 * size // 1024 + 4096}k"):
                shutil.copytree(kept, mount, dirs_exist_ok=True, symlinks=True)
                again = run_to_end(target.command(inputs, mount))
                different = differences(expected, target.state(inputs, mount)) if again.returncode == 0 else ["<exit>"]
            traceback = "Traceback" in output or "Traceback" in again.stderr
            line = errors[0] if errors else output.splitlines()[-1] if output else ""
            named = str(mount) in line and ("no space" in line or "not enough free space" in line)
            print(f"  disk {name} {moment} ({kib} KiB of {size // 1024}): exit {done.returncode}; {line[:200]}",
                  file=sys.stderr, flush=True)
            if different or traceback:
                print("    | " + "\n    | ".join((output + "\n" + again.stderr).strip().splitlines()[-8:]),
                      file=sys.stderr, flush=True)
            rows.append((name, f"{moment} ({kib} KiB{', filled' if filled else ''})", str(done.returncode),
                         "yes" if len(errors) == 1 and named else "no", "yes" if traceback else "no",
                         "yes" if claimed else "no", " ".join(left) or "-",
                         "equal" if not different else f"DIFFERENT {different[:3]}"))
    return rows


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2, help="trials per target and signal")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {','.join(TARGETS)}")
    parser.add_argument("--seed", type=int, default=0, help="seeds the moments the signals are sent")
    parser.add_argument("--tmp", default=None, help="the folder to work (and mount tmpfs) in; default the system's")
    args = parser.parse_args()
    chosen = args.targets.split(",")
    unknown = sorted(set(chosen) - set(TARGETS))
    if unknown:
        parser.error(f"--targets: unknown {unknown}; valid: {','.join(TARGETS)}")
    rng = random.Random(args.seed)
    began = time.monotonic()
    print(f"seed {args.seed}, {args.trials} trials per target and signal", file=sys.stderr, flush=True)
    kills, disks = [], []
    with tempfile.TemporaryDirectory(dir=args.tmp) as name:
        tmp = Path(name)
        inputs = make_inputs(tmp)
        targets = {t: Target(t, inputs) for t in TARGETS if t != "disk"}
        if any(t in chosen for t in ("report", "disk")):
            inputs["grid"] = tmp / "ref-grid-for-report" / "g"
            assert run_to_end(targets["grid"].command(inputs["grid"].parent)).returncode == 0
        for name_ in chosen:
            if name_ == "disk":
                disks = disk_trials(targets, tmp)
            else:
                kills += kill_trials(targets[name_], tmp, args.trials, rng)
    print(f"seed {args.seed}; {time.monotonic() - began:.0f} s\n")
    if kills:
        print(table(("target", "signal", "trials", "resumed equal", "orphans", "tracebacks", "reruns needed",
                     "lock/temp files left"), kills))
    if disks:
        print()
        print(table(("disk target", "disk full", "exit", "one error line naming it", "traceback",
                     "half output taken as finished", "lock/temp files left", "resumed"), disks))


if __name__ == "__main__":
    main()
