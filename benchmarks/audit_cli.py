"""Replay the cases of issue 26 against the command line and print what a user sees: a table of case, exit code,
whether a traceback was printed, and the first line of the message (error, warning or interruption).

Everything runs on tiny synthetic caches in a temporary folder. Kills start a two-worker grid, signal its driver and
count the driver's children still alive 5 s later. Full disks and read-only folders use small tmpfs mounts (root
only; skipped otherwise); Ray's cases need Ray installed. About 3-4 minutes on 2 cores.

    PYTHONPATH=... OMP_NUM_THREADS=1 python benchmarks/audit_cli.py        # every case
    PYTHONPATH=... OMP_NUM_THREADS=1 python benchmarks/audit_cli.py 25     # stop 25's cases alone
    PYTHONPATH=... OMP_NUM_THREADS=1 python benchmarks/audit_cli.py 26     # stop 26's cases alone
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO / "tests" / "data" / "lathadapter-tiny-test.json"
CLASSES = ["circle", "ring", "ellipse", "triangle", "square", "hexagon", "star", "cross"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
rows: list[tuple[str, str, str, str]] = []


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lathadapter.cli", *args]


def message(text: str) -> str:
    """The first line a user reads: an error, warning or interruption line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("error:", "warning:", "interrupted:")):
            return line
    return lines[-1] if lines else ""


def record(case: str, code: int | str, output: str, note: str = "") -> None:
    traceback = "yes" if "Traceback" in output else "no"
    text = (note + " " if note else "") + message(output)
    rows.append((case, str(code), traceback, text[:150] + ("…" if len(text) > 150 else "")))
    print(f"  {case}: {code}", file=sys.stderr, flush=True)


def run(case: str, *args: str, timeout: float = 120) -> None:
    try:
        done = subprocess.run(cli(*args), env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        record(case, "timeout", "", f"no answer within {timeout:.0f} s")
        return
    record(case, done.returncode, done.stderr + done.stdout)


def run_counts(case: str, *args: str) -> None:
    """A grid or protocol that should succeed: its line of run counts (done now, already done)."""
    done = subprocess.run(cli(*args), env=ENV, capture_output=True, text=True)
    output = done.stderr + done.stdout
    counts = [line for line in output.splitlines() if "already done" in line]
    record(case, done.returncode, counts[-1] if counts and "Traceback" not in output else output)


def children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            if f"PPid:\t{pid}\n" in status.read_text():
                found.append(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    # tests/helpers.py's `alive` restated: a benchmark imports the package and other benchmarks, never the tests
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_case(case: str, how: signal.Signals, cache: Path, out: Path) -> None:
    """A two-worker grid, its driver signalled once the workers run; how many of its processes outlive it by 5 s."""
    process = subprocess.Popen(cli("grid", "--cache", str(cache), "--method", "clip-adapter,lathadapter", "--shots",
                                   "1,2", "--seeds", "1,2,3", "--set", "epochs=200", "--device", "cpu", "--workers",
                                   "2", "--batch-runs", "1", "--out", str(out)),
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while len(children(process.pid)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    kids = children(process.pid)
    sent = time.monotonic()
    if how == signal.SIGINT:
        os.killpg(process.pid, how)  # Ctrl-C reaches the terminal's whole process group
    else:
        process.send_signal(how)
    _, stderr = process.communicate(timeout=60)
    stopped = time.monotonic() - sent
    while any(alive(pid) for pid in kids) and time.monotonic() - sent < 5:
        time.sleep(0.1)
    left = [pid for pid in kids if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    record(case, process.returncode, stderr, f"[{len(left)} of {len(kids)} processes left after 5 s; driver "
                                             f"stopped in {stopped:.1f} s]")


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[bool]:
    """A tmpfs mounted at `folder` for the block (True), or False where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def main() -> None:
    from lathadapter.cache.synthetic import write_synthetic_cache
    from lathadapter.demo.synthetic import write_coop_dataset

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cache = write_synthetic_cache(tmp / "c.h5", num_classes=6, dim=16, views=2, shots=(1, 2), seeds=(1, 2, 3),
                                      train_per_class=8, test_per_class=6, seed=0, name="src")
        split = write_coop_dataset(tmp / "shapes", "Shapes", CLASSES, counts=(8, 4, 4), seed=0)
        import open_clip
        import torch

        open_clip.add_model_config(TINY_MODEL)
        torch.manual_seed(0)
        torch.save(open_clip.create_model(TINY_MODEL.stem).state_dict(), tmp / "tiny.pt")
        build = ["cache", "build", "--dataset", f"split:{split}", "--model", str(TINY_MODEL), "--pretrained",
                 str(tmp / "tiny.pt"), "--shots", "1,2", "--seeds", "1", "--views", "2", "--workers", "0",
                 "--device", "cpu", "--no-progress"]
        grid = ["grid", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--seeds", "1", "--device",
                "cpu"]
        out = iter(range(10**6))

        def fresh() -> str:
            return str(tmp / f"out{next(out)}")

        print("faults", file=sys.stderr)
        kill_case("1 SIGKILL of a --workers 2 grid", signal.SIGKILL, cache, Path(fresh()))
        kill_case("1 SIGTERM of a --workers 2 grid", signal.SIGTERM, cache, Path(fresh()))
        kill_case("1 Ctrl-C (SIGINT) of a --workers 2 grid", signal.SIGINT, cache, Path(fresh()))
        with tmpfs(tmp / "full", "size=64k") as mounted:
            if mounted:
                run("2 cache build onto a full disk", *build, "--out", str(tmp / "full" / "c.h5"))
        with tmpfs(tmp / "full4k", "size=4k") as mounted:
            if mounted:
                run("6 fit onto a full disk", "fit", "--cache", str(cache), "--method", "clip-adapter", "--set",
                    "epochs=1", "--shots", "1", "--device", "cpu", "--out", str(tmp / "full4k" / "r"))
                left = sorted(p.name for p in (tmp / "full4k").rglob("*"))
                rows[-1] = (*rows[-1][:3], f"[left: {left or 'nothing'}] {rows[-1][3]}")
        with tmpfs(tmp / "ro", "ro,size=64k") as mounted:
            if mounted:
                run("6 grid --out on a read-only disk", *grid, "--out", str(tmp / "ro" / "g"))
                run("6 cache build --out on a read-only disk", *build, "--out", str(tmp / "ro" / "c.h5"))
        (tmp / "file").write_text("x")
        run("6 grid --out under a file", *grid, "--out", str(tmp / "file" / "g"))
        run("6 cache subset --out under a file", "cache", "subset", str(cache), "--shots", "1", "--seed", "1",
            "--out", str(tmp / "file" / "s.json"))
        data = bytearray(cache.read_bytes())
        for i in range(4000, 6000):
            data[i] ^= 0x5A
        (tmp / "flipped.h5").write_bytes(bytes(data))
        flipped = str(tmp / "flipped.h5")
        run("3 cache verify of a byte-flipped cache", "cache", "verify", flipped)
        run("3 cache info of a byte-flipped cache", "cache", "info", flipped)
        run("3 fit on a byte-flipped cache", "fit", "--cache", flipped, "--method", "zeroshot", "--shots", "1",
            "--device", "cpu", "--out", fresh())
        run("3 grid on a byte-flipped cache", "grid", "--cache", flipped, "--method", "zeroshot", "--shots", "1",
            "--seeds", "1", "--device", "cpu", "--out", fresh())
        try:
            import ray  # noqa: F401
        except ImportError:
            ray_installed = False
        else:
            ray_installed = True
            with socket.socket() as closed:
                closed.bind(("127.0.0.1", 0))
                port = closed.getsockname()[1]
            began = time.monotonic()
            run("4 --backend ray --address to a closed port", *grid, "--out", fresh(), "--backend", "ray",
                "--address", f"127.0.0.1:{port}", timeout=60)
            rows[-1] = (*rows[-1][:3], f"[{time.monotonic() - began:.0f} s] {rows[-1][3]}")
        stale = Path(fresh())
        run("5 grid (to leave runs)", "grid", "--cache", str(cache), "--method", "clip-adapter", "--set", "epochs=1",
            "--shots", "1", "--seeds", "1,2", "--device", "cpu", "--out", str(stale))
        runs = sorted(p for p in (stale / "runs").iterdir() if p.is_dir())
        (stale / "runs" / f"{runs[0].name}.lock").touch()
        (runs[1] / "metrics.json").unlink()
        (stale / "runs" / f"{runs[1].name}.lock").touch()
        run("5 rerun over stale locks and an unfinished run", "grid", "--cache", str(cache), "--method",
            "clip-adapter", "--set", "epochs=1", "--shots", "1", "--seeds", "1,2", "--device", "cpu", "--out",
            str(stale))
        locks = len(list((stale / "runs").glob("*.lock")))
        rows[-1] = (*rows[-1][:3], f"[{locks} lock files left] {rows[-1][3]}")

        print("footguns", file=sys.stderr)
        run("7 cache build --shots 50 with 8 images a class", *build[:8], "--shots", "50", "--seeds", "1",
            "--views", "1", "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(tmp / "s50.h5"))
        run("8 --threads 1000", *grid, "--out", fresh(), "--threads", "1000")
        run("8 --workers 64", *grid, "--out", fresh(), "--workers", "64")
        run("8 --workers 2 --threads 2", *grid, "--out", fresh(), "--workers", "2", "--threads", "2")
        run("9 --set lr=0.1 --set lr=0.2", *grid[:4], "lathadapter", *grid[5:], "--out", fresh(), "--set",
            "lr=0.1", "--set", "lr=0.2")
        run("9 --seeds 1,1", *grid[:7], "--seeds", "1,1", "--device", "cpu", "--out", fresh())
        run("9 --shots 1,,2", *grid[:4], "zeroshot", "--shots", "1,,2", "--device", "cpu", "--out", fresh())
        run("9 --address without --backend ray", *grid, "--out", fresh(), "--address", "127.0.0.1:6379")
        run("9 --chunk-size on the local backend", *grid, "--out", fresh(), "--chunk-size", "3")
        run("9 --target on few-shot", "protocol", "few-shot", "--cache", str(cache), "--target", str(cache),
            "--method", "zeroshot", "--shots", "1", "--seeds", "1", "--device", "cpu", "--out", fresh())
        run("9 list methods x", "list", "methods", "x")
        run("10 grid --select last,val", *grid, "--out", fresh(), "--select", "last,val")
        run("10 --shots a,b", *grid[:4], "zeroshot", "--shots", "a,b", "--device", "cpu", "--out", fresh())
        run("10 --shots 0", *grid[:4], "zeroshot", "--shots", "0", "--device", "cpu", "--out", fresh())

        print("what a user sees", file=sys.stderr)
        run("12 demo --method nope", "demo", "--out", fresh(), "--method", "nope")
        run("12 demo --tune-preset bogus", "demo", "--out", fresh(), "--tune-preset", "bogus")
        run("12 demo --shots 0", "demo", "--out", fresh(), "--shots", "0")
        run("14 list options zeroshot", "list", "options", "zeroshot")
        run("14 fit --set epochs=1 on zeroshot", "fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "1",
            "--set", "epochs=1", "--device", "cpu", "--out", fresh())
        print("stop 21's reviews", file=sys.stderr)
        run("15 cache build --template 'a photo of a {{}}.'", *build, "--template", "a photo of a {{}}.", "--out",
            str(tmp / "t1.h5"))
        run("15 cache build --template 'a {} with {style}.'", *build, "--template", "a {} with {style}.", "--out",
            str(tmp / "t2.h5"))
        run("15 grid --config CACHE.h5", "grid", "--config", str(cache), "--out", fresh())
        run("15 grid --tune-score val_hm, nothing tuned", *grid, "--out", fresh(), "--tune-score", "val_hm")
        run("15 protocol --text foo", "protocol", "few-shot", "--cache", str(cache), "--method", "zeroshot",
            "--shots", "1", "--seeds", "1", "--text", "foo", "--device", "cpu", "--out", fresh())
        targets = [str(write_synthetic_cache(tmp / f"{name}.h5", num_classes=4, dim=16, views=2, shots=(1,),
                                             seeds=(1,), train_per_class=4, test_per_class=4, seed=i, name=name))
                   for i, name in enumerate(("tgta", "tgtb"), start=1)]
        cross = ["protocol", "cross-dataset", "--cache", str(cache), "--method", "zeroshot,clip-adapter", "--set",
                 "epochs=1", "--shots", "1", "--seeds", "1,2", "--device", "cpu", "--out", fresh()]
        run_counts("16 cross-dataset --target A --target B", *cross, "--target", targets[0], "--target", targets[1])
        run_counts("16 its rerun with --target B --target A", *cross, "--target", targets[1], "--target", targets[0])
        print("stop 22's inputs", file=sys.stderr)
        text = split.read_text()
        first = CLASSES[0]  # a class name with an accent, saved as Latin-1 (an editor's "Western" encoding)
        (split.parent / "split_zhou_Latin.json").write_bytes(text.replace(f'"{first}"', f'"{first}\u00e9"')
                                                           .encode("latin-1"))
        run("17 cache build of a split file in Latin-1", *build[:2], "--dataset",
            f"split:{split.parent / 'split_zhou_Latin.json'}", *build[4:], "--out", str(tmp / "l1.h5"))
        no_test = json.loads(text) | {"test": []}
        (split.parent / "split_zhou_NoTest.json").write_text(json.dumps(no_test))
        run("17 cache build of a split file with no test images", *build[:2], "--dataset",
            f"split:{split.parent / 'split_zhou_NoTest.json'}", *build[4:], "--out", str(tmp / "nt.h5"))
        empty = json.loads(text)
        (split.parent / "empty.png").write_bytes(b"")
        empty["test"][0][0] = "empty.png"
        (split.parent / "split_zhou_Empty.json").write_text(json.dumps(empty))
        run("17 cache build of a split listing an empty image file", *build[:2], "--dataset",
            f"split:{split.parent / 'split_zhou_Empty.json'}", *build[4:], "--out", str(tmp / "ei.h5"))
        run("17 cache build --seeds -1", *build[:10], "--seeds", "-1", *build[12:], "--out", str(tmp / "m1.h5"))
        run("17 fit --seed -1", "fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "1", "--seed", "-1",
            "--device", "cpu", "--out", fresh())
        run("17 cache build --root with split:", *build, "--root", str(tmp), "--out", str(tmp / "root.h5"))
        run("17 inspect of a folder that is not a run", "inspect", str(tmp))
        run("17 grid --backend ray --address ray://host:10001", *grid, "--out", fresh(), "--backend", "ray",
            "--address", "ray://127.0.0.1:10001")
        run("23 grid --method zeroshot --method clip-adapter", *grid, "--method", "clip-adapter", "--out", fresh())
        run("23 cache build --progress --no-progress", *build, "--progress", "--out", str(tmp / "pp.h5"))
        fitted = fresh()
        run("23 fit (a run for the next cases)", "fit", "--cache", str(cache), "--method", "zeroshot", "--shots", "1",
            "--device", "cpu", "--out", fitted)
        run_dir = str(next(Path(fitted).iterdir()))
        (tmp / "a-file").write_text("")
        run("23 inspect --plots onto a file", "inspect", run_dir, "--plots", str(tmp / "a-file"))
        run("23 inspect --target of a run without targets", "inspect", run_dir, "--target", str(cache))
        other = write_synthetic_cache(tmp / "o.h5", num_classes=6, dim=16, views=2, shots=(1,), seeds=(1,),
                                      train_per_class=8, test_per_class=6, seed=1, name="other")
        elsewhere = fresh()
        subprocess.run(cli("fit", "--cache", str(other), "--method", "zeroshot", "--shots", "1", "--device", "cpu",
                           "--out", elsewhere), env=ENV, capture_output=True)
        run("23 compare runs of two caches", "compare", run_dir, str(next(Path(elsewhere).iterdir())))
        run("23 compare a run with itself", "compare", run_dir, run_dir)
        piped = subprocess.Popen(cli("inspect", run_dir), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert piped.stdout is not None
        piped.stdout.close()
        _, said = piped.communicate(timeout=120)
        record("23 inspect into a closed pipe (head -1)", piped.returncode, said.decode() or "(stderr empty)")
        print("stop 24's inputs", file=sys.stderr)
        run("24 inspect --out onto the run's own metrics.json", "inspect", run_dir, "--out",
            str(Path(run_dir) / "metrics.json"))
        tree = tmp / "tree"
        for part in ("train", "test"):
            for path, _, name in json.loads(text)[part]:
                (tree / part / name).mkdir(parents=True, exist_ok=True)
                (tree / part / name / Path(path).name).write_bytes((split.parent / path).read_bytes())
        (tree / "train" / first / "up").symlink_to(tree / "train", target_is_directory=True)
        run("24 cache build of a folder: tree linking its split folder", *build[:2], "--dataset", f"folder:{tree}",
            *build[4:], "--out", str(tmp / "tree.h5"))
        (tree / "train" / first / "up").unlink()
        (tree / "train" / first / "notes.txt").write_text("not an image")
        (tree / "test" / first / "empty.png").write_bytes(b"")
        if ray_installed:
            run("24 build-many --backend ray of a failing build", "cache", "build-many", "--dataset",
                f"folder:{tree}", *build[4:8], "--shots", "1", "--seeds", "1", "--views", "1", "--device", "cpu",
                "--backend", "ray", "--out", fresh(), timeout=180)
        done = subprocess.run(cli("list", "options", "clip-adapter"), env=ENV, capture_output=True, text=True)
        record("14 list options clip-adapter (first line)", done.returncode, done.stdout.splitlines()[0])
        done = subprocess.run(cli(*grid, "--out", fresh()), env=ENV, capture_output=True, text=True)
        lines = [line for line in done.stderr.splitlines() if line.startswith("grid")]
        record("11 grid progress in a log (last line)", done.returncode, lines[-1] if lines else done.stderr)
        stop25(tmp, cache, fresh)
        stop26(tmp, cache, fresh)

    report(start)


def stop25(tmp: Path, cache: Path, fresh: Callable[[], str]) -> None:
    """Stop 25's audit: `compare` across grids, the temperature line of `inspect`, `--tune` lists."""
    from lathadapter.cache.synthetic import write_synthetic_cache

    print("stop 25's inputs", file=sys.stderr)
    second = write_synthetic_cache(tmp / "c25.h5", num_classes=6, dim=16, views=2, shots=(1,), seeds=(1, 2),
                                   train_per_class=8, test_per_class=6, seed=25, name="second")
    grid, other = Path(fresh()), Path(fresh())
    subprocess.run(cli("grid", "--cache", str(cache), "--cache", str(second), "--method", "zeroshot,clip-adapter",
                       "--set", "epochs=2", "--shots", "1", "--seeds", "1,2", "--device", "cpu", "--out", str(grid)),
                   env=ENV, capture_output=True)
    subprocess.run(cli("grid", "--cache", str(cache), "--method", "zeroshot,clip-adapter,tip-adapter", "--set",
                       "clip-adapter.epochs=2", "--shots", "1", "--seeds", "1,2", "--device", "cpu", "--out",
                       str(other)), env=ENV, capture_output=True)
    lines = (grid / "results.csv").read_text().splitlines()  # a table of an older version: no train_views column
    index = lines[0].split(",").index("train_views")
    older = tmp / "older" / "results.csv"
    older.parent.mkdir()
    older.write_text("".join(",".join(v for i, v in enumerate(line.split(",")) if i != index) + "\n"
                             for line in lines))
    picks = ("--a", "method=clip-adapter", "--b", "method=zeroshot")
    run("25 compare --a/--b over a grid and one of other methods (summary)", "compare", str(grid), str(other), *picks)
    done = subprocess.run(cli("compare", str(older), str(other), *picks), env=ENV, capture_output=True, text=True)
    record("25 compare --a/--b over an older results.csv and a grid (A's line)", done.returncode,
           done.stderr + (done.stdout.splitlines() or [""])[0])
    run("25 compare GRID GRID/runs (one grid as both sources)", "compare", str(grid), str(grid / "runs"))
    run("25 compare --out x.png --plot x.png", "compare", str(grid), *picks, "--out", str(tmp / "x.png"), "--plot",
        str(tmp / "x.png"))
    run("25 compare --out . (a folder)", "compare", str(grid), *picks, "--out", ".")
    run("25 grid --tune lr=0.1,,0.2", "grid", "--cache", str(cache), "--method", "clip-adapter", "--tune",
        "lr=0.1,,0.2", "--shots", "1", "--seeds", "1", "--device", "cpu", "--out", fresh())
    fitted = Path(fresh())
    subprocess.run(cli("fit", "--cache", str(cache), "--method", "zeroshot", "--classes", "base", "--shots", "2",
                       "--device", "cpu", "--out", str(fitted)), env=ENV, capture_output=True)
    done = subprocess.run(cli("inspect", str(next(fitted.iterdir()))), env=ENV, capture_output=True, text=True)
    scaled = [line.strip() for line in done.stdout.splitlines() if "temperature" in line]
    record("25 inspect of a base-to-novel run (novel's temperature line)", done.returncode,
           done.stderr + (scaled[-1] if scaled else done.stdout))
    probe = ("import lathadapter\ntry:\n    lathadapter.fit(" + repr(str(cache)) + ", 'zeroshot', shots='1', "
             "out=None)\nexcept ValueError as e:\n    print('error:', e)")
    done = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True)
    record("25 lathadapter.fit(shots='1') in Python", done.returncode, done.stderr + done.stdout)


def stop26(tmp: Path, cache: Path, fresh: Callable[[], str]) -> None:
    """Stop 26's audit: `inspect --plots` of each protocol's runs and of awkward ones, `report`'s plots."""
    import open_clip
    import torch

    from lathadapter.cache.synthetic import write_synthetic_cache
    from lathadapter.demo.synthetic import write_coop_dataset

    print("stop 26's inputs", file=sys.stderr)

    def inspect(case: str, run_dir: Path, *extra: str, plots: Path | None = None) -> None:
        plots = plots or Path(fresh())
        done = subprocess.run(cli("inspect", str(run_dir), "--device", "cpu", "--plots", str(plots), *extra), env=ENV,
                              capture_output=True, text=True)
        drawn = sorted(p.name for p in plots.iterdir()) if plots.is_dir() else "no folder"
        warned = sum(line.startswith("warning:") for line in done.stderr.splitlines())
        record(case, done.returncode, done.stderr, f"[plots: {drawn}; {warned} warning lines]")

    def only_run(folder: Path) -> Path:
        return next(p for p in (folder / "runs" if (folder / "runs").is_dir() else folder).iterdir() if p.is_dir())

    target = write_synthetic_cache(tmp / "t26.h5", num_classes=4, dim=16, views=2, shots=(1,), seeds=(1,),
                                   train_per_class=4, test_per_class=4, seed=26, name="tgt26")
    shared = Path(fresh())  # the plots of each protocol's run, then of the base-to-novel run again, in one folder
    for protocol, method, extra in (("few-shot", "lathadapter", []), ("base-to-novel", "clip-adapter", []),
                                    ("cross-dataset", "lathadapter", ["--target", str(target)])):
        out = Path(fresh())
        subprocess.run(cli("protocol", protocol, "--cache", str(cache), *extra, "--method", method, "--set",
                           "epochs=2", "--shots", "1", "--seeds", "1", "--device", "cpu", "--out", str(out)),
                       env=ENV, capture_output=True)
        inspect(f"26 inspect --plots of a {protocol} {method} run" + (" --target" if extra else ""), only_run(out),
                *extra)
        subprocess.run(cli("inspect", str(only_run(out)), "--plots", str(shared), *extra), env=ENV,
                       capture_output=True)
        if protocol == "base-to-novel":
            again = only_run(out)
    inspect("26 inspect --plots into a folder used by other runs' inspect", again, plots=shared)
    slugged = [str(write_synthetic_cache(tmp / f"s26_{i}.h5", num_classes=3 + i, dim=16, views=2, shots=(1,),
                                         seeds=(1,), train_per_class=4, test_per_class=4, seed=30 + i, name=name))
               for i, name in enumerate(("a b", "a|b"))]
    out = Path(fresh())
    subprocess.run(cli("protocol", "cross-dataset", "--cache", str(cache), "--target", slugged[0], "--target",
                       slugged[1], "--method", "zeroshot", "--shots", "1", "--seeds", "1", "--device", "cpu", "--out",
                       str(out)), env=ENV, capture_output=True)
    inspect("26 inspect --plots of a run of targets 'a b' and 'a|b'", only_run(out), "--target", slugged[0],
            "--target", slugged[1])
    many = write_synthetic_cache(tmp / "m26.h5", num_classes=50, dim=16, views=1, shots=(1,), seeds=(1,),
                                 train_per_class=2, test_per_class=3, seed=0, name="many")
    out = Path(fresh())
    subprocess.run(cli("fit", "--cache", str(many), "--method", "zeroshot", "--shots", "1", "--device", "cpu", "--out",
                       str(out)), env=ENV, capture_output=True)
    inspect("26 inspect --plots of a 50-class run (labels numbered)", only_run(out))
    weights = torch.load(only_run(out) / "weights.pt")
    torch.save({k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
               only_run(out) / "weights.pt")
    inspect("26 inspect --plots of a run whose weights are NaN", only_run(out))
    out = Path(fresh())
    subprocess.run(cli("grid", "--cache", str(cache), "--method", "clip-adapter", "--set", "lr=1e30", "--set",
                       "epochs=3", "--shots", "1", "--seeds", "1", "--device", "cpu", "--out", str(out)),
                   env=ENV, capture_output=True)
    inspect("26 inspect --plots of a diverged run", only_run(out))
    names = ["日本語の円", "a $x^2$ ring", "cost $5 and $6", "🐱 cat", "x" * 200]
    split = write_coop_dataset(tmp / "names26", "Names", CLASSES[:len(names)], counts=(4, 2, 3), seed=0)
    data = json.loads(split.read_text())
    for part in data.values():
        for item in part:
            item[2] = names[item[1]]
    split.write_text(json.dumps(data, ensure_ascii=False))
    open_clip.add_model_config(TINY_MODEL)
    torch.manual_seed(0)
    torch.save(open_clip.create_model(TINY_MODEL.stem).state_dict(), tmp / "tiny26.pt")
    subprocess.run(cli("cache", "build", "--dataset", f"split:{split}", "--model", str(TINY_MODEL), "--pretrained",
                       str(tmp / "tiny26.pt"), "--shots", "1", "--seeds", "1", "--views", "1", "--workers", "0",
                       "--device", "cpu", "--no-progress", "--out", str(tmp / "n26.h5")), env=ENV, capture_output=True)
    out = Path(fresh())
    subprocess.run(cli("fit", "--cache", str(tmp / "n26.h5"), "--method", "lathadapter", "--set", "epochs=2",
                       "--shots", "1", "--device", "cpu", "--out", str(out)), env=ENV, capture_output=True)
    inspect("26 inspect --plots, class names CJK, $, emoji, 200 characters", only_run(out))
    done = subprocess.run(cli("report", str(out)), env=ENV, capture_output=True, text=True)
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    record("26 report of that run (its plots' warnings)", done.returncode, done.stderr,
           f"[{len(warned)} warning lines]")
    grids = [Path(fresh()), Path(fresh())]
    for grid, classes in zip(grids, ("all", "base"), strict=True):
        subprocess.run(cli("grid", "--cache", str(cache), "--method", "zeroshot", "--classes", classes, "--shots",
                           "2", "--seeds", "1", "--device", "cpu", "--out", str(grid)), env=ENV, capture_output=True)
    done = subprocess.run(cli("report", *map(str, grids)), env=ENV, capture_output=True, text=True)
    record("26 report GRID_A GRID_B without --out", done.returncode, done.stderr + done.stdout)
    report_folder = Path(fresh())
    done = subprocess.run(cli("report", *map(str, grids), "--out", str(report_folder)), env=ENV, capture_output=True,
                          text=True)
    tables = sorted(p.name for p in report_folder.glob("*.csv")) if report_folder.is_dir() else "no folder"
    record("26 report GRID_A GRID_B --out R (few-shot and base-to-novel)", done.returncode, done.stderr,
           f"[tables: {tables}]")
    done = subprocess.run(cli("report", str(grids[0]), fresh(), "--out", fresh()), env=ENV, capture_output=True,
                          text=True)
    record("26 report GRID and a missing source", done.returncode, done.stderr + done.stdout)


def report(start: float) -> None:
    """The table of every case recorded, then their count and time."""
    width = max(len(row[0]) for row in rows)
    print(f"| {'case':<{width}} | exit | traceback | message |")
    print(f"| {'-' * width} | ---- | --------- | ------- |")
    for case, code, traceback, text in rows:
        print(f"| {case:<{width}} | {code:>4} | {traceback:<9} | {text} |")
    print(f"\n{len(rows)} cases in {time.perf_counter() - start:.0f} s")


def only_stop(cases: Callable[[Path, Path, Callable[[], str]], None]) -> None:
    """`audit_cli.py 25` or `26`: one stop's cases alone, on a cache of their own (40 s to a minute)."""
    from lathadapter.cache.synthetic import write_synthetic_cache

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cache = write_synthetic_cache(tmp / "c.h5", num_classes=6, dim=16, views=2, shots=(1, 2), seeds=(1, 2, 3),
                                      train_per_class=8, test_per_class=6, seed=0, name="src")
        out = iter(range(10**6))
        cases(tmp, cache, lambda: str(tmp / f"out{next(out)}"))
    report(start)


if __name__ == "__main__":
    {"25": lambda: only_stop(stop25), "26": lambda: only_stop(stop26)}.get(" ".join(sys.argv[1:]), main)()
