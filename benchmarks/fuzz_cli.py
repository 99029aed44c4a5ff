"""Give every option of every command bad values, and every input file malformed contents, and print what a user
sees: a table of command, case, exit code, whether a traceback was printed, the first line of the message, and the
flags raised. The command tree is walked from the typer app itself, so a new option is fuzzed without a word here.

Bad values by an option's type: for integers 0, -1, a huge value, nan, inf, 1e400, a float, an empty string and
text; for floats the same but the float; for choices a near-miss and the wrong case; for comma lists `,`, an empty
item, a duplicate and a trailing comma; for `--set`/`--tune` a name without a value, a value without a name, unknown
names and methods, wrong types, nan, inf and out-of-range values; for paths a missing file, a folder for a file and
the reverse, an empty, a binary and a wrong kind of file, spaces and unicode, a parent that is a file, and a
read-only folder (root only: the command runs as `nobody` through setpriv). Malformed files: a cache truncated,
byte-flipped or missing a dataset, a grid file with a wrong type per key, a run folder's config.json and
metrics.json edited badly, an empty results.csv.

A case is flagged for a traceback, exit 0 on bad input, an exit code against docs/usage.md's rule (2 a usage
mistake, 1 a runtime failure), a message that names neither the option nor the value nor the file, or no answer in
60 s. Cases run in this process through typer's CliRunner; those that read corrupt HDF5 files or need another user
run in a fresh process. `demo` is checked up to its option parsing (its data build is stubbed). About 5 minutes on
one core.

    PYTHONPATH=... OMP_NUM_THREADS=1 python benchmarks/fuzz_cli.py              # every command
    PYTHONPATH=... OMP_NUM_THREADS=1 python benchmarks/fuzz_cli.py --only fit   # one command (`cache build`: cache)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO / "tests" / "data" / "lathadapter-tiny-test.json"
CLASSES = ["circle", "ring", "ellipse", "triangle", "square", "hexagon", "star", "cross"]
TIMEOUT = 60
OUTPUTS = ("--out", "--plots", "--plot")  # options naming a path written; every other path is read
# Expectations: USAGE (exit 2), RUNTIME (exit 1), ERROR (either), EDGE (a value that may be valid: only a traceback,
# a hang, an exit code other than 0/1/2 or an unclear message is flagged)
USAGE, RUNTIME, ERROR, EDGE = "usage", "runtime", "error", "edge"


@dataclass(frozen=True)
class Case:
    command: str
    label: str
    args: tuple[str, ...]
    expect: str
    names: tuple[str, ...]  # what the message should name: the option, the value or the file (any one)
    fresh_process: bool = False


@dataclass(frozen=True)
class Outcome:
    case: Case
    code: str
    traceback: bool
    message: str
    flags: tuple[str, ...]


class Hang(Exception):
    """No answer within TIMEOUT seconds."""


class Accepted(Exception):
    """`demo` got past its option parsing: the data build it would start now is stubbed."""


def message(text: str) -> str:
    """The first line a user reads: an error line, else a warning line, else the last line."""
    lines = [line.strip(" │") for line in text.splitlines() if line.strip(" │")]
    for prefix in (("error:", "Error:"), ("warning:",)):
        for line in lines:
            if line.startswith(prefix):
                return line
    return lines[-1] if lines else ""


def judge(case: Case, code: int | str, traceback: bool, text: str) -> Outcome:
    flags = []
    first = message(text)
    if code == "timeout":
        flags.append("hang")
    if traceback:
        flags.append("traceback")
    if code == 0 and case.expect != EDGE:
        flags.append("exit 0")
    if isinstance(code, int) and code not in (0, 1, 2):
        flags.append(f"exit {code}")
    if (code == 1 and case.expect == USAGE) or (code == 2 and case.expect == RUNTIME):
        flags.append(f"exit {code}, {case.expect} expected")
    if code not in (0, "timeout") and not traceback:
        errors = text if first.endswith(":") else (" ".join(line for line in text.splitlines() if "rror" in line)
                                                   or first)  # a heading line: the lines under it name the items
        if not any(name and name in errors for name in case.names):
            flags.append("unnamed")
    return Outcome(case, str(code), traceback, first, tuple(flags))


def run_in_process(case: Case) -> Outcome:
    import torch
    from typer.testing import CliRunner

    from lathadapter.cli import app

    def timed_out(signum: int, frame: object) -> None:
        raise Hang()

    before = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(TIMEOUT)
    try:
        result = CliRunner().invoke(app, list(case.args))
    except Hang:
        return judge(case, "timeout", False, "")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
        torch.set_num_threads(1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    error = result.exception
    if isinstance(error, Hang):
        return judge(case, "timeout", False, result.output)
    if isinstance(error, Accepted):
        return judge(case, 0, False, result.output + "\n(accepted: the demo's build would start)")
    traceback = (error is not None and not isinstance(error, SystemExit)) or "Traceback" in result.output
    text = result.output + (f"\n{type(error).__name__}: {error}" if traceback and error is not None else "")
    return judge(case, result.exit_code, traceback, text)


def run_in_subprocess(case: Case, user: str | None = None) -> Outcome:
    command = [sys.executable, "-m", "lathadapter.cli", *case.args]
    if user:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return judge(case, "timeout", False, "")
    text = done.stderr + done.stdout
    traceback = "Traceback (most recent call last)" in text
    return judge(case, done.returncode if done.returncode >= 0 else f"signal {-done.returncode}", traceback, text)


class Inputs:
    """The tiny inputs every case starts from, under one temporary folder: caches, a split dataset and the tests'
    tiny model, fitted runs, a grid and its results.csv, and files of each wrong kind."""

    def __init__(self, tmp: Path) -> None:
        import open_clip
        import torch

        from lathadapter.cache.synthetic import write_synthetic_cache
        from lathadapter.demo.synthetic import write_coop_dataset

        self.tmp = tmp
        self._fresh = count()
        self.cache = write_synthetic_cache(tmp / "c.h5", num_classes=6, dim=16, views=2, shots=(1, 2), seeds=(1, 2),
                                           train_per_class=8, test_per_class=6, seed=0, name="src")
        self.target = write_synthetic_cache(tmp / "t.h5", num_classes=4, dim=16, views=2, shots=(1,), seeds=(1,),
                                            train_per_class=4, test_per_class=4, seed=1, name="tgt")
        self.split = write_coop_dataset(tmp / "shapes", "Shapes", CLASSES, counts=(4, 2, 2), seed=0)
        open_clip.add_model_config(TINY_MODEL)
        torch.manual_seed(0)
        self.weights = tmp / "tiny.pt"
        torch.save(open_clip.create_model(TINY_MODEL.stem).state_dict(), self.weights)
        self.folder = tmp / "a-folder"
        self.folder.mkdir()
        self.empty = tmp / "empty.bin"
        self.empty.write_bytes(b"")
        self.binary = tmp / "binary.bin"
        self.binary.write_bytes(bytes(range(256)) * 8)
        self.file = tmp / "a-file"
        self.file.write_text("x")
        self.unicode = tmp / "a b 日本"
        self.unicode.mkdir()
        shutil.copy(self.cache, self.unicode / "c é.h5")
        self.grid_file = tmp / "grid.yaml"
        self.grid_file.write_text("methods: [zeroshot]\nshots: [1]\nseeds: [1]\n")
        self.runs = [self._fit(method) for method in ("zeroshot", "tip-adapter")]
        self.grid = self.fresh()
        self._cli("grid", "--cache", str(self.cache), "--method", "zeroshot,tip-adapter", "--shots", "1", "--seeds",
                  "1,2", "--device", "cpu", "--out", str(self.grid))
        self.results = self.grid / "results.csv"
        self.readonly = tmp / "readonly"
        self.readonly.mkdir()
        self.readonly.chmod(0o555)
        tmp.chmod(0o755)

    def fresh(self) -> Path:
        return self.tmp / f"out{next(self._fresh)}"

    def _cli(self, *args: str) -> None:
        from typer.testing import CliRunner

        from lathadapter.cli import app

        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output

    def _fit(self, method: str) -> Path:
        out = self.fresh()
        self._cli("fit", "--cache", str(self.cache), "--method", method, "--shots", "1", "--device", "cpu", "--out",
                  str(out))
        return next(p for p in out.iterdir() if p.is_dir())

    def copy_run(self, edit: str, text: str | None) -> Path:
        """A copy of the first run with one file edited (None: deleted)."""
        run = self.fresh() / self.runs[0].name
        shutil.copytree(self.runs[0], run)
        if text is None:
            (run / edit).unlink()
        else:
            (run / edit).write_text(text)
        return run


def bases(inputs: Inputs) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each command's valid invocation: its positional arguments and options (value "FRESH": a new output path)."""
    cache, split, tiny = str(inputs.cache), str(inputs.split), str(inputs.weights)
    build = {"--dataset": f"split:{split}", "--model": str(TINY_MODEL), "--pretrained": tiny, "--shots": "1",
             "--seeds": "1", "--views": "1", "--device": "cpu", "--out": "FRESH"}
    return {
        "fit": ([], {"--cache": cache, "--method": "zeroshot", "--shots": "1", "--device": "cpu", "--out": "FRESH"}),
        "grid": ([], {"--cache": cache, "--method": "zeroshot", "--shots": "1", "--seeds": "1", "--device": "cpu",
                      "--out": "FRESH"}),
        "protocol": (["few-shot"], {"--cache": cache, "--method": "zeroshot", "--shots": "1", "--seeds": "1",
                                    "--device": "cpu", "--out": "FRESH"}),
        "report": ([str(inputs.grid)], {"--out": "FRESH"}),
        "inspect": ([str(inputs.runs[0])], {"--device": "cpu"}),
        "compare": ([str(inputs.runs[0]), str(inputs.runs[1])], {}),
        "demo": ([], {"--out": "FRESH", "--shots": "1", "--seeds": "1", "--method": "zeroshot", "--views": "1",
                      "--tune-preset": "none", "--device": "cpu"}),
        "list": (["options", "clip-adapter"], {}),
        "cache build": ([], {**build, "--workers": "0", "--no-progress": ""}),
        "cache build-many": ([], build),
        "cache info": ([cache], {}),
        "cache verify": ([cache], {}),
        "cache subset": ([cache], {"--shots": "1", "--seed": "1", "--out": "FRESH"}),
    }


def walk() -> Iterator[tuple[str, object]]:
    """(command, click command) of every command and subcommand of the app."""
    import typer

    from lathadapter.cli import app

    def visit(prefix: str, command: object) -> Iterator[tuple[str, object]]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            yield prefix, command
            return
        for name, sub in subcommands.items():
            yield from visit(f"{prefix} {name}".strip(), sub)

    yield from visit("", typer.main.get_command(app))


CHOICES = {"--classes": "all", "--text": "coop", "--select": "last", "--train-views": "augmented",
           "--tune-score": "val", "--tune-set": "subset", "--tune-preset": "lr", "--backend": "local",
           "--precision": "fp32", "--val": "subset", "--device": "cpu", "--method": "zeroshot"}


def bad_values(command: str, option: str, kind: str, metavar: str | None, inputs: Inputs) -> list[tuple[str, str]]:
    """(label, value) of the bad values of one option, by its type and name; the expectation is set by `cases`."""
    tmp = inputs.tmp
    if option in ("--set", "--tune"):
        return [(v, v) for v in ("epochs", "=1", "epochs=", "bogus=1", "nosuch.epochs=1", "epochs=abc",
                                 "epochs=1.5", "epochs=nan", "lr=nan", "lr=inf", "lr=1e400", "lr=-1", "epochs=0",
                                 "epochs=-1", "epochs=1e30", "lathadapter.curvature=x", "clip-adapter.ratio=2")]
    if option in ("--a", "--b"):
        return [(v or "''", v) for v in ("", "method", "=x", "nosuch=1", "method=nosuch", "method=zeroshot,")]
    if metavar == "LIST":
        good = "zeroshot" if option == "--method" else CHOICES.get(option, "1")
        other = {"zeroshot": "tip-adapter", "1": "2"}.get(good, good)
        values = [",", f"{good},,{other}", f"{good},{good}", f"{good},", "", "abc"]
        if good != "1":
            values += [good[:-1], good.upper()]
        else:
            values += ["0", "-1", "1.5", "nan", str(2**63)]
        return [(v or "''", v) for v in values]
    if option in CHOICES or (command == "list" and option in ("what", "method")):
        good = {"what": "options", "method": "clip-adapter"}.get(option, CHOICES.get(option))
        return [(v or "''", v) for v in (good[:-1], good.upper(), "")] + [("text", "abc")]
    if kind == "path" or option in ("--pretrained", "--model", "--root", "--attributes", "--cache", "--target"):
        parent_file = str(inputs.file / "x")
        folder = inputs.folder if option not in OUTPUTS else tmp / f"folder{next(inputs._fresh)}"
        if option in OUTPUTS:
            folder.mkdir()
        values = [("missing", str(tmp / "never-written" / str(next(inputs._fresh)))), ("a folder", str(folder)),
                  ("a file", str(inputs.file)), ("empty file", str(inputs.empty)),
                  ("binary file", str(inputs.binary)), ("parent is a file", parent_file), ("''", "")]
        if option not in OUTPUTS:
            values += [("a grid file", str(inputs.grid_file)), ("a cache", str(inputs.cache)),
                       ("a run folder", str(inputs.runs[0])), ("results.csv", str(inputs.results))]
        values.append(("spaces and unicode", str(inputs.unicode / ("c é.h5" if option in ("--cache", "path")
                                                                   else "new é"))))
        return values
    if kind == "integer":
        return [(v or "''", v) for v in ("0", "-1", str(2**63), "nan", "inf", "1e400", "1.5", "", "abc")]
    if kind == "float":
        return [(v or "''", v) for v in ("0", "-1", "1e30", "nan", "inf", "1e400", "", "abc")]
    if option in ("--crop-scale", "--crop-ratio"):
        return [(v or "''", v) for v in ("", "1", "a,b", "1,0.5", "0,1", "nan,1", "inf,inf", "-1,1", "0.5,1,2")]
    if option == "--address":
        return [(v or "''", v) for v in ("", "nohost", "127.0.0.1:99999")]
    if option == "--template":
        return [(v or "''", v) for v in ("", "{", "{}{}", "no placeholder", "{0} {1}")]
    if option == "--dataset":
        return [(v or "''", v) for v in ("", "nosuch", "split:", f"folder:{tmp / 'missing'}",
                                         f"split:{inputs.binary}", f"split:{inputs.folder}",
                                         f"folder:{inputs.file}")]
    return [(v or "''", v) for v in ("", "abc")]


def expectation(option: str, label: str, value: str, is_path: bool) -> str:
    """What a bad value should end in: a path that cannot be read or written is a runtime failure; a value that
    may well be valid (0, a huge number, a path with spaces) is an edge; every other bad value a usage mistake."""
    if label == "spaces and unicode" or (option in OUTPUTS and label in ("missing", "a folder", "a file", "empty file",
                                                                        "binary file", "''")):
        return EDGE  # a new folder, a folder, a file to overwrite: valid for some outputs
    if option in ("--root", "--attributes") or (option == "--disk-run" and label == "''"):
        return EDGE  # --root is not read with split: (a warning says so); any text file holds attribute phrases
    if is_path or option in ("--config", "--dataset", "--model", "--pretrained", "--target"):
        return ERROR if label in ("a folder", "a file", "''") or option in (
            *OUTPUTS, "--config", "--model", "--target") or not is_path else RUNTIME
    if value in ("0", "-1", str(2**63), "1e30", "epochs=0", "epochs=1e30", "lr=-1", "abc") or label == "text":
        return EDGE if value in ("0", str(2**63), "1e30", "epochs=1e30") else USAGE
    return USAGE


def cases(inputs: Inputs, only: str | None) -> Iterator[Case]:
    """Every option's bad values, then the malformed files."""
    import typer

    base = bases(inputs)
    for command, click_command in walk():
        if only and command != only and command.split()[0] != only:
            continue
        positionals, options = base[command]
        for param in click_command.params:  # type: ignore[attr-defined]
            option = isinstance(param, typer.core.TyperOption)
            if option and (param.is_flag or "--help" in param.opts):
                continue
            name = max(param.opts, key=len) if option else param.name
            annotation = str(param.type_descriptor.annotation)
            kind = next((kind for word, kind in (("Path", "path"), ("int", "integer"), ("float", "float"))
                         if word in annotation), "text")
            for label, value in bad_values(command, name, kind, param.metavar, inputs):
                if label == RIGHT_KIND.get(name):
                    continue
                is_path = (kind == "path" or name in ("--cache", "--target")
                           or name in ("--pretrained", "--model", "--root", "--attributes") and label in PATH_LABELS)
                yield make_case(command, positionals, options, param, name, label, value,
                                expectation(name, label, value, is_path), inputs)
    yield from file_cases(inputs, only)


# The kind of file an option reads, left out of its wrong kinds
RIGHT_KIND = {"--cache": "a cache", "--target": "a cache", "path": "a cache", "run_dir": "a run folder",
              "runs": "a run folder", "--disk-run": "a run folder", "results": "results.csv", "--config": "a grid file"}
PATH_LABELS = ("missing", "a folder", "a file", "empty file", "binary file", "parent is a file", "''", "a grid file",
               "a cache", "a run folder", "results.csv", "spaces and unicode")


def make_case(command: str, positionals: list[str], options: dict[str, str], param: object, name: str, label: str,
              value: str, expect: str, inputs: Inputs) -> Case:
    import typer

    positionals = list(positionals)
    options = dict(options)
    if isinstance(param, typer.core.TyperArgument):
        order = {"list": ["what", "method"], "protocol": ["name"], "compare": ["runs"]}.get(command, [param.name])
        where = order.index(param.name) if param.name in order else 0
        while len(positionals) <= where:
            positionals.append("")
        positionals[where] = value
    else:
        if name in ("--set", "--tune") and command in ("fit", "grid", "protocol"):
            options["--method"] = "clip-adapter"
            if not value.startswith("epochs") and name == "--set":
                options["--set"] = "epochs=1"
        options[name] = value
    args = [command.split()[0], *command.split()[1:], *positionals]
    for option, given in options.items():
        given = str(inputs.fresh()) if given == "FRESH" else given
        if option == "--set" and name == "--set" and given != value:
            args += ["--set", given, "--set", value]
            continue
        args += [option] if given == "" and option == "--no-progress" else [option, given]
    argument = () if name.startswith("-") else (command.split()[-1],)  # a positional: the command names it
    assigned = value.partition("=")[0]
    names = tuple(n for n in (name, name.lstrip("-"), value, assigned, assigned.rpartition(".")[2], *argument,
                              "." if value == "" else "") if n and n != "=")
    if command == "demo" and name == "--out":
        expect = EDGE  # its data build, stubbed here, writes there first: a write error names --out
    return Case(command, f"{name} {label}", tuple(args), expect, names,
                fresh_process=label == "read-only folder")


def file_cases(inputs: Inputs, only: str | None) -> Iterator[Case]:
    """Malformed input files: HDF5 caches (in a fresh process: HDF5 may crash), grid files, run folders, tables."""
    import h5py

    tmp = inputs.tmp
    data = inputs.cache.read_bytes()
    truncated = tmp / "truncated.h5"
    truncated.write_bytes(data[:len(data) // 2])
    flipped = bytearray(data)
    for i in range(4000, 6000):
        flipped[i] ^= 0x5A
    (tmp / "flipped.h5").write_bytes(bytes(flipped))
    shutil.copy(inputs.cache, tmp / "nolabels.h5")
    with h5py.File(tmp / "nolabels.h5", "a") as f:
        victim = next(name for name in ("test/labels", "test/features") if name in f) if "test" in f else None
        if victim is None:
            victim = next(iter(f.keys()))
        del f[victim]
    corrupt = {"truncated cache": tmp / "truncated.h5", "byte-flipped cache": tmp / "flipped.h5",
               f"cache without {victim}": tmp / "nolabels.h5", "grid file as cache": inputs.grid_file}
    wanted = lambda command: not only or command == only or command.split()[0] == only  # noqa: E731
    for label, path in corrupt.items():
        for command, args in (("fit", ["fit", "--cache", str(path), "--method", "zeroshot", "--shots", "1",
                                        "--device", "cpu", "--out", str(inputs.fresh())]),
                              ("grid", ["grid", "--cache", str(path), "--method", "zeroshot", "--shots", "1",
                                        "--seeds", "1", "--device", "cpu", "--out", str(inputs.fresh())]),
                              ("cache info", ["cache", "info", str(path)]),
                              ("cache verify", ["cache", "verify", str(path)]),
                              ("cache subset", ["cache", "subset", str(path), "--shots", "1", "--seed", "1"]),
                              ("inspect", ["inspect", str(inputs.runs[0]), "--cache", str(path)])):
            if wanted(command):
                yield Case(command, f"{label}", tuple(args), RUNTIME, (str(path), path.name), fresh_process=True)
    grid_files = {
        "caches: 1": "caches: 1\n", "methods: 5": "methods: 5\n", "shots: a": "shots: a\n",
        "shots: [1.5]": "shots: [1.5]\n", "seeds: {}": "seeds: {}\n", "options: [1]": "options: [1]\n",
        "options lr: [.nan]": "methods: [clip-adapter]\noptions: {lr: [.nan]}\n", "tune: x": "tune: x\n",
        "tune_preset: 3": "tune_preset: 3\n", "tune_score: [1]": "tune_score: [1]\n", "tune_set: 2": "tune_set: 2\n",
        "train_views: 1": "train_views: 1\n", "select: [True]": "select: [true]\n", "unknown key": "nosuch: 1\n",
        "YAML syntax error": "methods: [zeroshot\n", "a list, not a mapping": "- 1\n- 2\n", "empty": "",
        "classes: null": "classes: null\n", "options: {epochs: {}}": "methods: [clip-adapter]\noptions: {epochs: {}}\n",
    }
    for label, text in grid_files.items():
        if wanted("grid"):
            path = tmp / f"grid{next(inputs._fresh)}.yaml"
            path.write_text(text)
            cache = () if label.startswith("caches") else ("--cache", str(inputs.cache))  # else the flag replaces it
            yield Case("grid", f"--config {label}", ("grid", *cache, "--config", str(path), "--device", "cpu",
                                                     "--out", str(inputs.fresh())),
                       EDGE if label in ("empty", "classes: null", "caches: 1") else USAGE,
                       (str(path), path.name, "--config", inputs.cache.name, "cache file 1"))
    for what, value in (("--config", inputs.cache), ("--config", inputs.binary), ("--config", inputs.folder)):
        if wanted("grid"):
            yield Case("grid", f"{what} {value.name}", ("grid", "--config", str(value), "--out", str(inputs.fresh())),
                       ERROR, (str(value), value.name, what))
    config = json.loads((inputs.runs[0] / "config.json").read_text())
    edits = {"config.json deleted": ("config.json", None), "config.json empty": ("config.json", ""),
             "config.json not JSON": ("config.json", "{"), "config.json a list": ("config.json", "[]"),
             "config.json shots 'a'": ("config.json", json.dumps(config | {"shots": "a"})),
             "config.json method unknown": ("config.json", json.dumps(config | {"method": "nosuch"})),
             "config.json no cache": ("config.json", json.dumps({k: v for k, v in config.items() if k != "cache"})),
             "config.json options a list": ("config.json", json.dumps(config | {"options": [1]})),
             "metrics.json deleted": ("metrics.json", None), "metrics.json empty": ("metrics.json", ""),
             "metrics.json accuracy a string": ("metrics.json", json.dumps(
                 json.loads((inputs.runs[0] / "metrics.json").read_text()) | {"accuracy": "x"})),
             "metrics.json null": ("metrics.json", "null")}
    for label, (name, text) in edits.items():
        run = inputs.copy_run(name, text)
        for command, args in (("inspect", ["inspect", str(run), "--device", "cpu"]),
                              ("compare", ["compare", str(run), str(inputs.runs[1]), "--device", "cpu"]),
                              ("report", ["report", str(run.parent), "--out", str(inputs.fresh())])):
            if wanted(command):
                expect = EDGE if label in ("config.json method unknown", "metrics.json accuracy a string") and (
                    command != "inspect") else ERROR  # a table row of any method; compare scores the test set again
                yield Case(command, label, tuple(args), expect, (str(run), run.name, name, str(run.parent)))
    tables = {"empty results.csv": "", "header only": inputs.results.read_text().splitlines()[0] + "\n",
              "other columns": "a,b\n1,2\n", "binary": None}
    for label, text in tables.items():
        path = inputs.fresh() / "results.csv"
        path.parent.mkdir()
        path.write_bytes(bytes(range(256))) if text is None else path.write_text(text)
        for command, args in (("report", ["report", str(path), "--out", str(inputs.fresh())]),
                              ("compare", ["compare", str(path), str(inputs.results), "--a", "method=zeroshot", "--b",
                                           "method=tip-adapter"])):
            if wanted(command):
                yield Case(command, f"results.csv {label}", tuple(args), ERROR, (str(path), "results.csv"))
    if os.geteuid() == 0 and shutil.which("setpriv"):  # a read-only folder for a user who may not write it
        for command, args in (("fit", ["fit", "--cache", str(inputs.cache), "--method", "zeroshot", "--shots", "1",
                                       "--device", "cpu"]),
                              ("grid", ["grid", "--cache", str(inputs.cache), "--method", "zeroshot", "--shots", "1",
                                        "--seeds", "1", "--device", "cpu"]),
                              ("report", ["report", str(inputs.grid)]),
                              ("inspect", ["inspect", str(inputs.runs[0]), "--device", "cpu", "--plots"]),
                              ("cache subset", ["cache", "subset", str(inputs.cache), "--shots", "1", "--seed", "1"]),
                              ("cache build", ["cache", "build", "--dataset", f"split:{inputs.split}", "--model",
                                               str(TINY_MODEL), "--pretrained", str(inputs.weights), "--shots", "1",
                                               "--seeds", "1", "--views", "1", "--workers", "0", "--device", "cpu",
                                               "--no-progress"])):
            if wanted(command):
                target = inputs.readonly / ("x.json" if command == "cache subset" else "x")
                flag = "--plots" if command == "inspect" else "--out"
                yield Case(command, f"{flag} in a read-only folder (as nobody)",
                           (*args, *([] if flag == "--plots" else ["--out"]), str(target)), RUNTIME,
                           (flag, str(target)), fresh_process=True)


def report(outcomes: list[Outcome], seconds: float) -> None:
    """The table, then cases and flags per command."""
    width = max(len(f"{o.case.command}: {o.case.label}") for o in outcomes)
    print(f"| {'case':<{width}} | exit | traceback | flags | message |")
    print(f"| {'-' * width} | ---- | --------- | ----- | ------- |")
    for o in outcomes:
        text = o.message[:140] + ("…" if len(o.message) > 140 else "")
        print(f"| {o.case.command + ': ' + o.case.label:<{width}} | {o.code:>4} | {'yes' if o.traceback else 'no':<9} "
              f"| {', '.join(o.flags) or '-'} | {text} |")
    print()
    per = Counter(o.case.command for o in outcomes)
    flagged = Counter(o.case.command for o in outcomes if o.flags)
    for command in per:
        print(f"{command}: {per[command]} cases, {flagged[command]} flagged")
    kinds = Counter(flag.split(",")[0] for o in outcomes for flag in o.flags)
    print(f"\n{len(outcomes)} cases, {sum(flagged.values())} flagged "
          f"({', '.join(f'{k} {n}' for k, n in kinds.most_common()) or 'none'}) in {seconds:.0f} s")


@contextlib.contextmanager
def stubbed_demo_build() -> Iterator[None]:
    """`demo` stops where its data build would start: its options are parsed, nothing is built."""
    from lathadapter.cache.build import check_options
    from lathadapter.demo import pipeline

    def accepted(*args: object, shots: list[int], seeds: list[int], views: int, device: str, **kwargs: object) -> None:
        check_options(shots, seeds, views, 32, 0, "split", device=device)  # what the build checks before any work
        raise Accepted()

    real = pipeline.build_demo_cache
    pipeline.build_demo_cache = accepted
    try:
        yield
    finally:
        pipeline.build_demo_cache = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="one command (fit, grid, cache, `cache build`...)")
    only = parser.parse_args().only
    start = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as name, stubbed_demo_build():
        inputs = Inputs(Path(name))
        os.chdir(name)  # `--out ''` and a relative path write here, not in the working tree
        outcomes = []
        for case in cases(inputs, only):
            if case.fresh_process:
                outcome = run_in_subprocess(case, "65534" if "as nobody" in case.label else None)
            else:
                outcome = run_in_process(case)
            outcomes.append(outcome)
            print(f"  {case.command}: {case.label}: {outcome.code} {' '.join(outcome.flags)}", file=sys.stderr,
                  flush=True)
    report(outcomes, time.perf_counter() - start)


if __name__ == "__main__":
    main()
