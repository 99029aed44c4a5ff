"""The `lathadapter` command line: thin wrappers over the package's Python functions. Arguments are parsed here,
once, into typed objects; a user's mistake ends in one `error:` line and exit code 1 or 2, never a traceback."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import typer.core

from lathadapter.adapter.options import OptionError, respelled
from lathadapter.progress import show_warning
from lathadapter.version import __version__

if TYPE_CHECKING:  # imported where used: `--help` and `--version` stay fast
    from lathadapter.cache.encode import Augmentation

Option = typer.core.TyperOption  # typer's own copy of click's classes (typer._click), not the `click` package
Command = typer.core.TyperCommand | typer.core.TyperGroup
LIST = "LIST"  # the metavar of an option that takes comma-separated values (`--shots 1,2,4`), once


def given_options(command: Command, args: list[str], interspersed: bool = True) -> dict[Option, list[str]]:
    """Each option of `command` that `args` give, with its value each time it is given, read as click reads them:
    `--opt value`, `--opt=value`, short options alone or in a cluster (`-ab`), a flag's value on or off (`--x`,
    `--no-x`), nothing after `--`, and with `interspersed` False (a group) nothing after the first argument."""
    named = {name: param for param in command.params if isinstance(param, Option)
             for name in (*param.opts, *param.secondary_opts)}
    given: dict[Option, list[str]] = {}
    rest = list(args)

    def take(name: str, param: Option, attached: str | None) -> None:
        if param.is_flag:
            value = "off" if name in param.secondary_opts else "on"
        elif attached is not None:
            value = attached
        elif len(rest) >= param.nargs:  # else click reports the missing value
            value = " ".join(rest[:param.nargs])
            del rest[:param.nargs]
        else:
            return
        given.setdefault(param, []).append(value)

    while rest:
        arg = rest.pop(0)
        if arg == "--" or (not interspersed and not arg.startswith("-")):
            break
        if not arg.startswith("-") or arg == "-":
            continue
        name, equals, value = arg.partition("=")
        if name in named:
            take(name, named[name], value if equals else None)
        elif not arg.startswith("--"):  # a cluster of short options, the first taking a value ends it
            for i, letter in enumerate(arg[1:], start=2):
                param = named.get(f"-{letter}")
                if param is None:
                    break  # unknown: click names it
                take(f"-{letter}", param, None if param.is_flag else arg[i:] or None)
                if not param.is_flag:
                    break
    return given


def repeated_option(command: Command, args: list[str], interspersed: bool = True) -> str | None:
    """Why `args` give one of `command`'s single-valued options more than once with different values, or None: click
    would keep the last value silently (`--method a --method b` ran b alone). The same value again (`--force
    --force`) is harmless; `--x` and `--no-x` together contradict each other. Repeatable options (typed `list[...]`,
    `--set`, `--cache`) accumulate."""
    for param, uses in given_options(command, args, interspersed).items():
        values = list(dict.fromkeys(uses))  # each once, in the order given
        if param.multiple or param.count or len(values) < 2:
            continue
        option = max(param.opts, key=len)
        if param.is_flag:
            return f"{option} and {max(param.secondary_opts, key=len)} both given: give one"
        times = "twice" if len(uses) == 2 else f"{len(uses)} times"
        items = dict.fromkeys(item.strip() for value in values for item in value.split(","))  # each once
        advice = (f"give several values comma-separated, {option} {','.join(items)}" if param.metavar == LIST
                  else "give it once")
        return f"{option} given {times} ({', '.join(values)}): {advice}"
    return None


class Commands(typer.core.TyperGroup):
    """The command groups (`lathadapter`, `lathadapter cache`): before a command reads its options, a single-valued
    option given twice with different values is a usage error (`repeated_option`), in every command alike."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        _refuse_repeats(self, args, interspersed=False)  # the group's own options end at its command's name
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and not isinstance(command, typer.core.TyperGroup):  # a group checks itself
            _refuse_repeats(command, rest)
        return name, command, rest


def _refuse_repeats(command: Command, args: list[str], interspersed: bool = True) -> None:
    if problem := repeated_option(command, args, interspersed):
        _fail(OptionError(problem))


# rich_markup_mode=None: help texts are printed as written ("[default: …]" is not read as markup and lost)
app = typer.Typer(help="Few-shot adaptation of CLIP-style models over a precomputed feature cache.", cls=Commands,
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
cache_app = typer.Typer(help="Build and inspect HDF5 feature caches (one encoder pass over a dataset).",
                        cls=Commands, no_args_is_help=True, rich_markup_mode=None)
app.add_typer(cache_app, name="cache")
LISTS = ("methods", "datasets", "models", "options")
BACKEND_HELP = ("local: train in this process; ray: on a Ray cluster (pip install 'lathadapter[ray]'; caches and "
                "--out on storage every worker sees). This process alone writes the results either way.")
WORKERS_HELP = ("Worker processes of one torch thread each, training the grid's pending runs (1: this process, with "
                "--threads threads). Default on the CPU: the free CPUs, at most one per 4 pending runs, started once "
                "the runs this process trains first show that they pay for their start (1 with --threads); on a GPU: "
                "1, this process with its --trainers.")
TRAINERS_HELP = ("On a GPU: trainer threads of each process that trains, each on its own CUDA stream, so that several "
                 "small runs' kernels share the GPU [default: 4 on a GPU; 1 on the CPU, the only valid value there].")
ADDRESS_HELP = ("--backend ray: the cluster's address HOST:PORT, as `ray start --head` printed it (port 6379 unless "
                "its --port said otherwise), or auto (a cluster started on this machine); not ray:// (Ray Client). "
                "Default: a running cluster Ray finds, else a local one started for the command.")
TUNE_HELP = ("Tuned option [METHOD.]OPTION=V1,V2,... (repeatable): each value is trained, the one best by "
             "--tune-score on the val images of --tune-set is kept per cell and reported; never the test set.")
TUNE_PRESET_HELP = ("lr: tune every trained method's lr over its own default × 1, 0.1, 10 (a tie keeps the default; "
                    "methods without lr run once); a choice on an edge adds ×10 beyond it (÷10 below), twice at most. "
                    "none: no tuning.")
TUNE_SCORE_HELP = ("What tuning chooses by: val (val accuracy; base classes' for base-to-novel) or val_hm (HM of "
                   "pseudo-base and pseudo-novel val accuracy of a copy trained on half the training classes; one "
                   "more training per candidate). Default auto: val_hm for base-to-novel (classes=base), else val.")

# Options that `grid` and `protocol` (and, for threads, `fit` and `demo`) declare alike.
THREADS = typer.Option(None, help="CPU threads for torch (default: OMP_NUM_THREADS when set, else the CPUs of "
                       "this process that other work leaves free).")
WORKERS = typer.Option(None, help=WORKERS_HELP)
TRAINERS = typer.Option(None, help=TRAINERS_HELP)
BACKEND = typer.Option("local", help=BACKEND_HELP)
ADDRESS = typer.Option(None, help=ADDRESS_HELP)
TUNE = typer.Option([], "--tune", metavar="<[method.]name=values>", help=TUNE_HELP)
TUNE_PRESET = typer.Option(None, "--tune-preset", help=TUNE_PRESET_HELP)
TUNE_SCORE = typer.Option(None, "--tune-score", help=TUNE_SCORE_HELP)
TUNE_SET = typer.Option(None, "--tune-set", help="The val images tuning scores: subset (the few-shot val subset, "
                        "CoOp's protocol; the default, except in demo) or split (the cache's whole val split, "
                        "`cache build --val split`).")
CHUNK_SIZE = typer.Option(None, help="--backend ray: runs per Ray task (one cache each, opened once), rounded up to "
                          "whole --batch-runs batches [default: 8].")
BATCH_RUNS = typer.Option(None, help="Compatible runs (one method, shots and recipe) trained together, each with its "
                          "own data, seed, options and optimiser state: in lockstep on the CPU, as one stacked model "
                          "on a GPU where the method allows; 1: every run alone. Default: 8 on the CPU, 32 on a GPU.")
SKIP_BAD = typer.Option(False, "--skip-bad", help="Leave unreadable images out (listed in the cache).")
GPUS_PER_CHUNK = typer.Option(None, help="--backend ray: GPU fraction of each task when the cluster has GPUs, in "
                              "(0, 1] [default: 0.25, four tasks share a GPU]; without GPUs (or with --device cpu) "
                              "tasks train on one CPU each and it has no effect, with a warning.")


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, Slurm, a scheduler's stop), raised in the main thread as Ctrl-C's KeyboardInterrupt: the
    command stops the same way, saving what is finished (exit code 143 instead of 130)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _stop_on_sigterm() -> None:
    """In a command that saves what it finished when stopped (grid, protocol, demo, cache build, build-many): SIGTERM
    stops it as Ctrl-C does. Other commands keep SIGTERM's default (end at once, exit 143)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _interrupted(stop: KeyboardInterrupt, out: Path | None, what: str | None = None,
                 advice: str = "rerun the same command to resume") -> None:
    """End an interrupted command: one line with the runs finished under `out` (each is saved as it finishes), or
    `what` was kept, the `advice`, and the exit code of the signal (130 Ctrl-C, 143 SIGTERM)."""
    if what is None:
        finished = sum(1 for _ in out.glob("**/runs/*/metrics.json")) if out is not None and out.is_dir() else 0
        what = f"{_plural(finished, 'run')} finished"
    typer.echo(f"interrupted: {what}, {advice}", err=True)
    raise typer.Exit(code=143 if isinstance(stop, Terminated) else 130)


def _plural(count: int, noun: str) -> str:
    """`1 run`, `4 runs`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lathadapter {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Few-shot adaptation of CLIP-style models over a precomputed feature cache."""
    warnings.showwarning = show_warning  # warnings are one line on stderr, like errors


# Exit codes by the kind of mistake, carried by the error class (`exit_code`): a usage mistake (`OptionError`, a bad
# value, name or combination of options; `cache build`'s `BuildOptionError`) 2, as typer's own parsing errors; a
# runtime failure (a missing or corrupt cache, a full or read-only disk, a finished run in the way, a missing package:
# `StateError` and every error without `exit_code`) 1.
USAGE, RUNTIME = 2, 1


def _note(message: str) -> None:
    """One line for the user on stderr (an old option value's new name), apart from the command's output."""
    typer.echo(message, err=True)


def _fail(error: Exception, out: Path | None = None, flag: str = "--out") -> None:
    """Report a user error (bad input, missing file) without a traceback and exit with its kind's code (`USAGE`,
    `RUNTIME`). With `out` (the command's output path, option `flag`), an error writing under it names that path and
    the fix, not an internal lock or temporary file. A closed standard output (`| head`) is no error: click ends
    the command quietly, exit 1."""
    if isinstance(error, BrokenPipeError):
        raise error
    typer.echo(f"error: {_write_error(error, out, flag) or error}", err=True)
    raise typer.Exit(code=getattr(error, "exit_code", RUNTIME))


# Why a write fails, in a user's words, and what to do about it ({flag}: the option naming the path, --out or --plots)
WRITE_ERRORS = {
    errno.EROFS: "the file system is read-only; choose a writable {flag}",
    errno.EACCES: "permission denied; choose a folder you may write to as {flag}",
    errno.EPERM: "permission denied; choose a folder you may write to as {flag}",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another {flag}",
    errno.EEXIST: "a part of the path is a file, not a folder; choose another {flag}",  # mkdir over a file
    errno.EISDIR: "it is a folder, where a file is written; choose another {flag}",
    errno.ENOSPC: "no space left on device; free some space and rerun the same command (finished work is kept)",
    errno.EDQUOT: "disk quota exceeded; free some space and rerun the same command (finished work is kept)",
    errno.EFBIG: "file too large for the file system or the process's file size limit (ulimit -f); raise the limit or "
                 "choose another {flag}",
    errno.EIO: "input/output error (a failing disk or network file system); check it or choose another {flag}",
    # a folder on the path vanished while writing, or the file system cannot create files there (/proc)
    errno.ENOENT: "a folder on the path is missing or cannot hold new files; choose another {flag}",
}


def _write_error(error: Exception, out: Path | None, flag: str = "--out") -> str | None:
    """The one-line message of an OSError raised writing at or under `out` (option `flag`; also its lock and
    temporary files beside it); None for any other error."""
    if out is None or not isinstance(error, OSError) or error.errno not in WRITE_ERRORS:
        return None
    if error.errno == errno.ENOENT and error.filename is None:  # a missing input, not a write: its own message
        return None
    target = Path(out).absolute()
    if error.filename is not None:
        failed = Path(str(error.filename)).absolute()
        beside = failed.parent == target.parent and failed.name.lstrip(".").startswith(target.name)
        if not (beside or failed == target or target in failed.parents or failed in target.parents):
            return None
    return f"{flag} {out}: cannot write there: {WRITE_ERRORS[error.errno].format(flag=flag)}"


def _progress():
    """A progress display on stderr, shown only when stderr is a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal, transient=True)


def _int_list(option: str, text: str) -> list[int]:
    """Comma-separated integers, each once (`1,,2` and `1,1` are mistakes, not lists); a usage error (exit 2)
    otherwise."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        empty = " (an empty item)" if "" in parts and len(parts) > 1 else ""
        typer.echo(f"error: {option} {text!r}: expected comma-separated integers{empty}, e.g. 1,2,4,8,16", err=True)
        raise typer.Exit(code=USAGE) from None
    _once(option, text, values)
    return values


def _seeds(option: str, text: str) -> list[int]:
    """Comma-separated seeds, as `_int_list`, each in NumPy's seed range (`cache.store.seed_error`); a usage error
    (exit 2) naming `option` otherwise."""
    from lathadapter.cache.store import seed_error

    values = _int_list(option, text)
    if problem := seed_error(option, values):
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(code=USAGE)
    return values


def _str_list(option: str, text: str, example: str) -> list[str]:
    """Comma-separated names, each once, as `_int_list`: no value, an empty item (`a,,b`) or a name given twice is a
    usage error (exit 2) naming `option` and an `example`."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        problem = "an empty item; give comma-separated values" if any(parts) else "give one or more values"
        typer.echo(f"error: {option} {text!r}: {problem}, e.g. {example}", err=True)
        raise typer.Exit(code=USAGE)
    _once(option, text, parts)
    return parts


def _choice(option: str, value: str | None) -> str | None:
    """A value of `--classes`, `--text`, `--select`, `--train-views`, `--tune-score` or `--tune-set` (None: not
    given), checked before any work: one outside its choices ends in one line naming the flag, exit 2; an old name
    (`--tune-set fewshot`) is read as its new one, with a note."""
    from lathadapter.adapter.trainer import SELECTIONS, TRAIN_VIEWS
    from lathadapter.experiments.run import CLASS_PROTOCOLS, TEXT_FEATURES, TUNE_SETS, TUNE_SETS_BEFORE
    from lathadapter.experiments.tuning import TUNE_SCORE_CHOICES

    valid = {"--classes": CLASS_PROTOCOLS, "--text": TEXT_FEATURES, "--select": SELECTIONS,
             "--train-views": TRAIN_VIEWS, "--tune-score": TUNE_SCORE_CHOICES, "--tune-set": TUNE_SETS}[option]
    if value is not None and option == "--tune-set":
        value = respelled(option, value, TUNE_SETS_BEFORE, _note)
    if value is not None and value not in valid:
        typer.echo(f"error: {option} {value}: choose one of {', '.join(valid)}", err=True)
        raise typer.Exit(code=USAGE)
    return value


def _once(option: str, text: str, values: list) -> None:
    """Each value of a list option once: a value given twice would be one run listed twice."""
    twice = [v for i, v in enumerate(values) if v in values[:i]]
    if twice:
        typer.echo(f"error: {option} {text!r}: {twice[0]} is given twice; give each value once", err=True)
        raise typer.Exit(code=USAGE)


CROP_SCALE = typer.Option(None, "--crop-scale", help="Random-resized-crop area range of the augmented views, LOW,HIGH "
                          "[default: 0.5,1, the field's for 224-pixel photographs; the demo's own for the demo].")
CROP_RATIO = typer.Option(None, "--crop-ratio", help="Random-resized-crop aspect range, LOW,HIGH [default: 3/4,4/3].")
FLIP = typer.Option(None, "--flip", help="Probability of a horizontal flip of each augmented view [default: 0.5].")


def _augmentation(crop_scale: str | None, crop_ratio: str | None, flip: float | None) -> Augmentation | None:
    """The build's `Augmentation` from the command line; None when no option is given (the build's default)."""
    from lathadapter.cache.encode import Augmentation

    if crop_scale is None and crop_ratio is None and flip is None:
        return None
    given: dict = {} if flip is None else {"flip": flip}
    for option, text, name in (("--crop-scale", crop_scale, "crop_scale"), ("--crop-ratio", crop_ratio, "crop_ratio")):
        if text is None:
            continue
        try:
            low, high = (float(part) for part in text.split(","))
        except ValueError:
            raise OptionError(f"{option} {text!r}: expected two comma-separated numbers LOW,HIGH, e.g. 0.5,1"
                              ) from None
        given[name] = (low, high)
    return Augmentation(**given)


@cache_app.command("build")
def cache_build(
    root: Path | None = typer.Option(None, help="Dataset root holding the CoOp-layout folders (docs/data.md)."),
    dataset: str | None = typer.Option(None, help="caltech101, oxford_pets, ..., imagenet, imagenet_a, ...; "
                                       "folder:PATH (a folder per class) or split:PATH (a split_zhou JSON)."),
    model: str | None = typer.Option(None, help="open_clip model name, or the path of a model-config JSON "
                                     "[default: ViT-B-16; the bundled tiny model for the demo dataset]."),
    pretrained: str | None = typer.Option(None, help="Pretrained tag, a local checkpoint (.pt/.pth/.bin/.safetensors) "
                                          "or none [default: openai; the bundled weights for the demo dataset]."),
    out: Path | None = typer.Option(None, help="Cache file (default: caches/<dataset>.h5)."),
    shots: str = typer.Option("1,2,4,8,16", metavar=LIST, help="Shots of the few-shot subsets to hold."),
    seeds: str = typer.Option("1,2,3", metavar=LIST, help="Seeds of the few-shot subsets to hold."),
    views: int = typer.Option(10, help="Augmented views per train image."),
    crop_scale: str | None = CROP_SCALE,
    crop_ratio: str | None = CROP_RATIO,
    flip: float | None = FLIP,
    full_train: bool = typer.Option(False, "--full-train", help="Encode the whole train split."),
    val: str | None = typer.Option(None, help="Val images to encode: subset (the few-shot val subsets) or split (the "
                                   "whole val split, Tip-Adapter's official search set) [default: subset; split for "
                                   "the demo dataset]."),
    device: str | None = typer.Option(None, help="Device (default: cuda when available, else cpu)."),
    precision: str = typer.Option("fp32", help="fp32, fp16, bf16 or amp."),
    batch_size: int = typer.Option(32, help="Images per batch (each with its augmented views)."),
    workers: int = typer.Option(4, help="Image-decoding worker processes (0: decode in the main process)."),
    attributes: Path | None = typer.Option(None, help="Attribute phrases, one per line (default: shipped list)."),
    template: str | None = typer.Option(None, help="Prompt template overriding the dataset's, e.g. 'a photo of a {}.'"),
    seed: int = typer.Option(0, help="Seed of the augmented views (and of folder: splits)."),
    quick_gelu: bool | None = typer.Option(None, "--quick-gelu/--no-quick-gelu",
                                           help="Force QuickGELU on or off (default: on for weights trained with it, "
                                                "as OpenAI's)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a cache built with a different fingerprint."),
    skip_bad: bool = SKIP_BAD,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Encode a CoOp-layout dataset with an open_clip model into a fingerprinted HDF5 cache.

    With no --root and no --dataset, builds the bundled demo dataset (data/demo-shapes-v3/) with the bundled tiny model
    into caches/demo_shapes.h5; --quick-gelu does not apply to it (the tiny model is built as it was trained).
    """
    from lathadapter.cache.build import VAL_BEFORE, build

    _stop_on_sigterm()
    val = respelled("--val", val, VAL_BEFORE, _note) if val is not None else None
    if dataset is None and root is None and model is None and pretrained is None:
        from lathadapter.cache.build import check_options
        from lathadapter.demo.pipeline import DEMO_CACHE, build_demo_cache

        try:
            if quick_gelu is not None:
                raise OptionError(f"--{'' if quick_gelu else 'no-'}quick-gelu: not used for the bundled demo dataset "
                                  "(its tiny model is built as it was trained); give --dataset, --model and "
                                  "--pretrained to choose a model's activation")
            # the demo path passes every other option to the build, each checked before the demo data is written
            options = dict(views=views, shots=_int_list("--shots", shots), seeds=_seeds("--seeds", seeds),
                           augmentation=_augmentation(crop_scale, crop_ratio, flip), device=device, workers=workers,
                           val="split" if val is None else val, template=template, precision=precision,
                           batch_size=batch_size, attributes=attributes, full_train=full_train, seed=seed,
                           skip_bad=skip_bad, force=force)
            check_options(options["shots"], options["seeds"], views, batch_size, workers, options["val"], precision,
                          template, device, seed)
            typer.echo("no --dataset given: building the bundled demo dataset with the bundled tiny CLIP", err=True)
            result = build_demo_cache(out=out or DEMO_CACHE, progress=progress,
                                      log=lambda message: typer.echo(message, err=True), **options)
        except (ValueError, OSError) as error:
            _fail(error, out or DEMO_CACHE)
        except KeyboardInterrupt as stop:
            _interrupted(stop, None, "the images encoded so far are kept in the cache's .tmp file")
        typer.echo(f"{result.path}: {result.status}")
        return
    if dataset is None:
        typer.echo("error: --dataset is required when --root, --model or --pretrained is given (see --help)", err=True)
        raise typer.Exit(code=USAGE)
    try:
        result = build(root, dataset, out, model=model or "ViT-B-16", pretrained=pretrained or "openai",
                       shots=_int_list("--shots", shots), augmentation=_augmentation(crop_scale, crop_ratio, flip),
                       seeds=_seeds("--seeds", seeds), views=views, device=device, precision=precision,
                       batch_size=batch_size, workers=workers, attributes=attributes, full_train=full_train,
                       val="subset" if val is None else val,
                       force=force, skip_bad=skip_bad, seed=seed, template=template, quick_gelu=quick_gelu,
                       progress=progress, log=lambda message: typer.echo(message, err=True))
    except (ValueError, OSError) as error:
        _fail(error, out or Path("caches"))
    except KeyboardInterrupt as stop:
        _interrupted(stop, None, "the images encoded so far are kept in the cache's .tmp file")
    stats = result.stats
    rate = f" · {stats.images} images at {stats.images_per_second:.1f} images/s" if stats.images else ""
    typer.echo(f"{result.path}: {result.status}{rate}")


@cache_app.command("build-many")
def cache_build_many(
    dataset: list[str] = typer.Option(..., metavar="<dataset>",
                                      help="Dataset to build (repeatable), as `cache build --dataset`."),
    root: Path | None = typer.Option(None, help="Dataset root holding the CoOp-layout folders (docs/data.md)."),
    model: str = typer.Option("ViT-B-16", help="open_clip model name, or the path of a model-config JSON."),
    pretrained: str = typer.Option("openai", help="Pretrained tag, a local checkpoint or none."),
    out: Path = typer.Option(Path("caches"), help="Folder of the caches: OUT/<name>.h5, each dataset's name as "
                             "`cache build` gives it (DemoShapes for split:.../split_zhou_DemoShapes.json)."),
    shots: str = typer.Option("1,2,4,8,16", metavar=LIST, help="Shots of the few-shot subsets to hold."),
    seeds: str = typer.Option("1,2,3", metavar=LIST, help="Seeds of the few-shot subsets to hold."),
    views: int = typer.Option(10, help="Augmented views per train image."),
    crop_scale: str | None = CROP_SCALE,
    crop_ratio: str | None = CROP_RATIO,
    flip: float | None = FLIP,
    device: str | None = typer.Option(None, help="Device (default: cuda when available, else cpu)."),
    val: str = typer.Option("subset", help="Val images to encode: subset or split (as `cache build --val`)."),
    backend: str = typer.Option("local", help="local: one build after another; ray: one Ray task per dataset (a GPU "
                                "each when the cluster has GPUs; root and --out on shared storage)."),
    address: str | None = ADDRESS,
    skip_bad: bool = SKIP_BAD,
) -> None:
    """Build several datasets' caches (each resumable, as `cache build`), here or on a Ray cluster."""
    _stop_on_sigterm()
    from lathadapter.cache.build import VAL_BEFORE

    val = respelled("--val", val, VAL_BEFORE, _note)
    try:
        from lathadapter.cache.build import check_options
        from lathadapter.experiments.builds import build_many

        if backend == "ray":
            from lathadapter.experiments.ray_cluster import import_ray

            import_ray()
        check_options(_int_list("--shots", shots), _seeds("--seeds", seeds), views, batch_size=1, workers=0, val=val,
                      device=device)  # build-many takes neither --batch-size nor --workers: valid stand-ins
        results = build_many(dataset, out, backend, address, root=root, model=model, pretrained=pretrained,
                             shots=_int_list("--shots", shots), seeds=_seeds("--seeds", seeds), views=views,
                             augmentation=_augmentation(crop_scale, crop_ratio, flip), device=device, val=val,
                             skip_bad=skip_bad, log=lambda message: typer.echo(message, err=True))
    except (ValueError, OSError) as error:
        _fail(error, out)
    except KeyboardInterrupt as stop:
        _interrupted(stop, None, "the caches built are kept, and the images encoded so far in each .tmp file")
    for name, path, status in results:
        typer.echo(f"{name}: {path}: {status}")


@cache_app.command("info")
def cache_info(path: Path = typer.Argument(..., help="Cache file.")) -> None:
    """Summarise a cache: model, dataset, counts, subsets, size."""
    from lathadapter.cache.inspection import summary

    try:
        rows = summary(path)
    except (ValueError, OSError) as error:
        _fail(error)
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


@cache_app.command("verify")
def cache_verify(path: Path = typer.Argument(..., help="Cache file.")) -> None:
    """Check a cache: schema, finite values, unit norms, index bounds (exit code 1 on any problem)."""
    from lathadapter.cache.inspection import verify

    problems = verify(path)
    for problem in problems:  # named once: a problem of the whole file (missing, a folder) names it itself
        typer.echo(f"error: {problem if str(path) in problem else f'{path}: {problem}'}", err=True)
    if problems:
        raise typer.Exit(code=1)
    typer.echo(f"{path}: ok")


@cache_app.command("subset")
def cache_subset(
    path: Path = typer.Argument(..., help="Cache file."),
    shots: int = typer.Option(..., help="Shots per class."),
    seed: int = typer.Option(..., help="Subset seed."),
    out: Path | None = typer.Option(None, help="JSON file to write (default: print to stdout)."),
) -> None:
    """Write one few-shot subset as portable JSON: train and val lists of (relative path, label, class name)."""
    from lathadapter.cache.store import seed_error
    from lathadapter.cache.subset import write_subset

    try:
        if problem := seed_error("--seed", [seed]):  # no build draws it ("rebuild with --seeds that include it")
            raise OptionError(problem)
        if shots < 1:  # no build holds it, as `cache build --shots` says
            raise OptionError(f"--shots {shots}: must be at least 1 (the shots per class of a subset the cache holds)")
        if out is not None and not out.name:  # `--out ''` or `.`: a folder, not a file's name
            raise OptionError(f"--out {str(out)!r}: give the JSON file to write, e.g. subset.json")
        text = write_subset(path, shots, seed, out)
    except (ValueError, OSError) as error:
        _fail(error, out)
    if out is None:
        typer.echo(text)
    else:
        typer.echo(f"wrote {out}", err=True)


def _own_option(name: str, method: str) -> str:
    """A `--set` name of `fit` as its method's options name it: `METHOD.NAME`, as a grid scopes it (and its `opt.`
    column), is NAME for that method's run; another method's scope is refused, naming the method."""
    from lathadapter.adapter.catalog import method_names

    scope, dot, bare = name.partition(".")
    if not dot or scope not in method_names():
        return name  # a bare name, or not a method's scope (the method's options check it)
    if scope != method:
        raise OptionError(f"--set {name}: an option of {scope}, and this fit trains {method}; give --method {scope}, "
                          f"or {method}'s own options (`lathadapter list options {method}`)")
    return bare


def _format_accuracy(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


@app.command()
def fit(
    cache: Path | None = typer.Option(None, help="Cache file (default: the one cache under caches/)."),
    method: str = typer.Option("lathadapter", help="Method name (`lathadapter list methods` lists them)."),
    shots: int = typer.Option(4, help="Shots per class of the few-shot subset."),
    seed: int = typer.Option(1, help="Few-shot subset seed (also seeds training)."),
    classes: str = typer.Option("all", help="all: every class; base: base-to-novel (train on base, report HM)."),
    text: str = typer.Option("coop", help="Class text features: coop (one template) or ensemble."),
    select: str = typer.Option("last", help="Model kept: last epoch, or best on the few-shot val set (val)."),
    train_views: str = typer.Option("augmented", help="Views training draws from: augmented (the cached augmented "
                                    "views) or all (those and the clean view)."),
    device: str | None = typer.Option(None, help="Device (default: cuda when available, else cpu)."),
    out: Path = typer.Option(Path("runs"), help="Folder that receives the run directory."),
    set_: list[str] = typer.Option([], "--set", metavar="<name=value>", help="Method option NAME=VALUE (repeatable; "
                                   "`lathadapter list options METHOD` lists them)."),
    force: bool = typer.Option(False, "--force", help="Train again and overwrite a finished run directory."),
    threads: int | None = THREADS,
) -> None:
    """Train one method over a cache (no encoder runs), evaluate it and write a run directory."""
    from lathadapter.adapter.options import parse_assignments
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.run import RunConfig, fit_config

    _stop_on_sigterm()
    try:
        execution = Execution.parse(device, threads, workers=1, batch_runs=1, trainers=1)  # one run, in this process
        overrides: dict[str, str] = {}
        for given, values in parse_assignments(set_, once=True).items():
            if len(values) != 1:
                raise OptionError(f"--set {given}={','.join(values)}: fit takes one value per option "
                                  "(`lathadapter grid` tries several)")
            name = _own_option(given, method)
            if name in overrides:
                raise OptionError(f"--set {given}: {name} is given twice (as {name} and {method}.{name}); give it once")
            overrides[name] = values[0]
        for option, value in (("--classes", classes), ("--text", text), ("--select", select),
                              ("--train-views", train_views)):
            _choice(option, value)
        config = RunConfig.create(method, shots, seed, classes, text, select, overrides, train_views)  # checks seed
        with _progress() as progress:
            metrics = fit_config(config, cache, out=out, force=force, progress=progress, execution=execution)
    except (ValueError, OSError) as error:
        _fail(error, out)
    except KeyboardInterrupt as stop:  # a run is saved only when it finishes: the rerun trains it from the start
        _interrupted(stop, None, "the run did not finish", "rerun the same command to train it")
    accuracy = ", ".join(f"{k} {_format_accuracy(v)}" for k, v in metrics["accuracy"].items())
    hm = f", HM {_format_accuracy(metrics['hm'])}" if classes == "base" else ""
    ece = ", ".join(f"{k} {_format_accuracy(v)}" for k, v in metrics["ece"].items())
    typer.echo(f"{method} · {metrics['dataset']} · {shots}-shot seed {seed} · {accuracy}{hm} · ECE {ece} · "
               f"train {metrics['train_seconds']:.2f} s, eval {metrics['eval_seconds']:.2f} s → {metrics['run_dir']}")


def _counts(summary: dict) -> str:
    """`4 runs (3 done now, 1 already done)`: a grid's or protocol's runs and what became of them."""
    elsewhere = f", {summary['elsewhere']} left to another process" if summary.get("elsewhere") else ""
    return (f"{_plural(summary['runs'], 'run')} ({summary['done']} done now, {summary['skipped']} already done"
            f"{elsewhere})")


def _print_results(summary: dict) -> None:
    """The result table of a finished grid or protocol, as `report` writes it."""
    from lathadapter.experiments.report_tables import summary_markdown

    typer.echo(summary_markdown(Path(summary["results"])))


@app.command()
def grid(
    cache: list[str] = typer.Option([], metavar="<path>",
                                    help="Cache file(s) (repeatable; default: the one cache under caches/)."),
    method: str | None = typer.Option(None, metavar=LIST, help="Comma-separated methods [default: lathadapter]."),
    shots: str | None = typer.Option(None, metavar=LIST, help="Comma-separated shots [default: 1,2,4,8,16]."),
    seeds: str | None = typer.Option(None, metavar=LIST, help="Comma-separated seeds [default: 1,2,3]."),
    classes: str | None = typer.Option(None, metavar=LIST, help="Comma-separated class protocols: all, base "
                                       "[default: all]."),
    text: str | None = typer.Option(None, metavar=LIST, help="Comma-separated text features: coop, ensemble "
                                    "[default: coop]."),
    train_views: str | None = typer.Option(None, metavar=LIST, help="Comma-separated views training draws from: "
                                           "augmented, all [default: augmented]."),
    select: str | None = typer.Option(None, metavar=LIST, help="Comma-separated models kept: last (epoch), val (best "
                                      "on the few-shot val set) [default: last]."),
    set_: list[str] = typer.Option([], "--set", metavar="<[method.]name=values>",
                              help="Axis [METHOD.]OPTION=V1,V2,... (repeatable)."),
    tune: list[str] = TUNE,
    tune_preset: str | None = TUNE_PRESET,
    tune_score: str | None = TUNE_SCORE,
    tune_set: str | None = TUNE_SET,
    config: Path | None = typer.Option(None, help="YAML/TOML file of axes (keys: caches, methods, shots, seeds, "
                                       "classes, text, select, train_views, options, tune, tune_preset, "
                                       "tune_score, tune_set); "
                                       "command-line axes override it."),
    device: str | None = typer.Option(None, help="Device (default: cuda when available)."),
    out: Path = typer.Option(Path("grids/grid"), help="Grid folder: runs/, results.csv. Re-running resumes."),
    threads: int | None = THREADS,
    workers: int | None = WORKERS,
    trainers: int | None = TRAINERS,
    backend: str = BACKEND,
    address: str | None = ADDRESS,
    chunk_size: int | None = CHUNK_SIZE,
    gpus_per_chunk: float | None = GPUS_PER_CHUNK,
    batch_runs: int | None = BATCH_RUNS,
) -> None:
    """Run an ablation grid (cartesian product of the axes) in this process, on worker processes (--workers) or on a
    Ray cluster (--backend ray); finished runs are skipped."""
    from lathadapter.adapter.options import parse_assignments
    from lathadapter.cache.store import resolve_cache
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.launch import launch
    from lathadapter.experiments.spec import GridSpec, load_spec_file, override, parse_preset, parse_tune

    tune_score, tune_set = _choice("--tune-score", tune_score), _choice("--tune-set", tune_set)
    _stop_on_sigterm()
    try:
        execution = Execution.parse(device, threads, workers, backend, address, chunk_size, gpus_per_chunk,
                                    batch_runs, trainers)
        set_axes, tuned = parse_assignments(set_), parse_tune(tune)
        given = {"caches": cache, "methods": method, "shots": shots, "seeds": seeds, "classes": classes, "text": text,
                 "train_views": train_views, "select": select, "tune_preset": tune_preset, "tune_score": tune_score,
                 "tune_set": tune_set}
        replaced = ({key for key, value in given.items() if value not in (None, [])} | {f"options.{name}" for name in
                    set_axes} | {f"tune.{name}" for name in tuned})  # the file's keys the run never reads
        axes: dict = load_spec_file(config, replaced=replaced) if config else {}  # checked there, as flags below
        for key, option, value, example in (("methods", "--method", method, "zeroshot,lathadapter"),
                                            ("classes", "--classes", classes, "all,base"),
                                            ("text", "--text", text, "coop,ensemble"),
                                            ("train_views", "--train-views", train_views, "augmented,all"),
                                            ("select", "--select", select, "last,val")):
            if value is not None:
                axes[key] = _str_list(option, value, example)
                if key != "methods":
                    for item in axes[key]:
                        _choice(option, item)
        if shots is not None:
            axes["shots"] = _int_list("--shots", shots)
        if seeds is not None:
            axes["seeds"] = _seeds("--seeds", seeds)
        override(axes, "options", set_axes)
        override(axes, "tune", tuned)
        if tune_preset is not None:  # `none` is None: no preset, over a grid file's too
            axes["tune_preset"] = parse_preset(tune_preset)
            axes.get("sources", {}).pop("tune_preset", None)
        for key, value in (("tune_score", tune_score), ("tune_set", tune_set)):
            if value is not None:  # the command line's, no longer the grid file's (`GridSpec.sources`)
                axes[key] = value
                axes.get("sources", {}).pop(key, None)
        axes["caches"] = [str(c) for c in (cache or axes.get("caches") or [resolve_cache(None)])]
        summary = launch(GridSpec(**axes), out, execution)
        _print_results(summary)
    except (ValueError, OSError) as error:
        _fail(error, out)
    except KeyboardInterrupt as stop:
        _interrupted(stop, out)
    typer.echo(f"grid: {_counts(summary)} in {summary['seconds']:.1f} s → {summary['results']}")


@app.command()
def protocol(
    name: str = typer.Argument(..., help="few-shot | base-to-novel | cross-dataset | domain"),
    cache: list[str] = typer.Option(..., metavar="<path>",
                                    help="Dataset cache(s); for cross-dataset and domain, the source cache."),
    target: list[str] = typer.Option([], metavar="<path>", help="Target cache(s) (cross-dataset, domain)."),
    method: str | None = typer.Option(None, metavar=LIST, help="Comma-separated methods (default: every method)."),
    seeds: str = typer.Option("1,2,3", metavar=LIST, help="Comma-separated seeds."),
    shots: str | None = typer.Option(None, metavar=LIST, help="Override the protocol's shots (default 1,2,4,8,16 or "
                                     "16)."),
    set_: list[str] = typer.Option([], "--set", metavar="<[method.]name=values>",
                              help="Axis [METHOD.]OPTION=V1,V2,... (repeatable)."),
    tune: list[str] = TUNE,
    tune_preset: str | None = TUNE_PRESET,
    tune_score: str | None = TUNE_SCORE,
    tune_set: str | None = TUNE_SET,
    text: str = typer.Option("coop", help="Class text features: coop or ensemble."),
    train_views: str = typer.Option("augmented", help="Views training draws from: augmented, or all (and the clean "
                                    "view)."),
    device: str | None = typer.Option(None, help="Device (default: cuda when available)."),
    out: Path | None = typer.Option(None, help="Output folder (default: grids/<protocol>)."),
    threads: int | None = THREADS,
    workers: int | None = WORKERS,
    trainers: int | None = TRAINERS,
    backend: str = BACKEND,
    address: str | None = ADDRESS,
    chunk_size: int | None = CHUNK_SIZE,
    gpus_per_chunk: float | None = GPUS_PER_CHUNK,
    batch_runs: int | None = BATCH_RUNS,
) -> None:
    """Run one of the field's four evaluation protocols over caches you have built (resumable)."""
    from lathadapter.adapter.catalog import method_names
    from lathadapter.adapter.options import parse_assignments
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.protocols import run_protocol
    from lathadapter.experiments.spec import parse_preset, parse_tune

    tune_score, tune_set = _choice("--tune-score", tune_score), _choice("--tune-set", tune_set)
    _stop_on_sigterm()
    try:
        if target and name in ("few-shot", "base-to-novel"):
            raise OptionError(f"--target {target[0]}: {name} scores the source cache's own test set; targets are "
                              "for cross-dataset and domain")
        execution = Execution.parse(device, threads, workers, backend, address, chunk_size, gpus_per_chunk,
                                    batch_runs, trainers)
        methods = _str_list("--method", method, "zeroshot,lathadapter") if method is not None else method_names()
        _choice("--text", text)
        _choice("--train-views", train_views)
        summary = run_protocol(name, list(cache), out or Path("grids") / name, methods,
                               _seeds("--seeds", seeds), list(target), parse_assignments(set_), text,
                               _int_list("--shots", shots) if shots is not None else None, execution,
                               tune=parse_tune(tune), train_views=train_views,
                               tune_preset=parse_preset(tune_preset) if tune_preset is not None else None,
                               tune_score=tune_score or "auto", tune_set=tune_set or "subset")
        _print_results(summary)
    except (ValueError, OSError) as error:
        _fail(error, out or Path("grids") / name)
    except KeyboardInterrupt as stop:
        _interrupted(stop, out or Path("grids") / name)
    typer.echo(f"{name}: {_counts(summary)} in {summary['seconds']:.1f} s → {summary['results']}")


@app.command()
def report(
    results: list[Path] = typer.Argument(..., metavar="results", help="A results.csv written by `grid` or "
                                         "`protocol`, a grid folder, or a folder of `fit` run directories; several "
                                         "(the folders of several protocols) make one report, their rows pooled."),
    out: Path | None = typer.Option(None, help="Report folder (default: report/ inside the folder, or beside the "
                                    "results.csv; needed for several sources)."),
    disk_run: Path | None = typer.Option(None, help="LatHAdapter run directory for the Poincaré-disk picture "
                                         "(default: the table's last lathadapter run)."),
) -> None:
    """Write paper-style tables (markdown, CSV, LaTeX) and plots: one row per configuration, mean ± std over seeds."""
    from lathadapter.experiments.report import report_folder, write_report

    try:
        written = write_report(results, out, disk_run)
    except (ValueError, OSError) as error:
        _fail(error, out or report_folder(results[0]))  # a write error names the folder written, the default's too
    typer.echo(written["markdown"])
    tables = len(written["tables"])
    typer.echo(f"report: {written['report']}; {tables} table{'s' if tables != 1 else ''} beside it, each as CSV and "
               f"LaTeX (.csv, .tex); plots: {', '.join(written['plots']) or 'none'}")


@app.command()
def inspect(
    run_dir: Path = typer.Argument(..., help="A finished run directory (`fit`'s, or a grid's runs/<key>/)."),
    cache: Path | None = typer.Option(None, help="The run's cache file, when it moved from the path its config.json "
                                      "records (its fingerprint must be the run's)."),
    target: list[Path] = typer.Option([], metavar="<path>", help="A transfer run's target cache to score as its "
                                      "protocol did (its fingerprint must be the one metrics.json records for its "
                                      "dataset); repeat for several."),
    device: str | None = typer.Option(None, help="Device (default: cuda when available, else cpu)."),
    out: Path | None = typer.Option(None, help="CSV file to write the per-class accuracy to (columns classes, label, "
                                    "class, correct, count, accuracy, target)."),
    plots: Path | None = typer.Option(None, help="Folder to draw the run's plots in: reliability.png (a panel per "
                                      "test set), confusion_<set>.png (each test set's confusion matrix) and, for "
                                      "a LatHAdapter run, poincare_disk.png."),
) -> None:
    """Load a trained run back and score its test images per class: the accuracy and ECE (checked against its
    metrics.json), the ECE after a temperature fitted on its val images, the worst and best classes, and optionally a
    per-class CSV and plots; a transfer run's targets too, with --target."""
    from lathadapter.experiments.inspection import inspect_run

    try:
        inspect_run(run_dir, cache, device, list(target), out, plots, echo=typer.echo,
                    note=lambda text: typer.echo(text, err=True))
    except (ValueError, OSError) as error:
        flag, path = next(((flag, path) for flag, path in (("--plots", plots), ("--out", out))
                           if _write_error(error, path, flag)), ("--out", out))
        _fail(error, path, flag)


COMPARE_FORMS = ("Two run directories: compare them image by image. Otherwise each path is a SOURCE as `report` "
                 "reads it (a grid folder, a results.csv, a folder of `fit` runs), their rows pooled: compare "
                 "configuration --a with --b across datasets (without --a/--b, two sources: every run of the first "
                 "against every run of the second).")
SELECTOR_HELP = ("Configuration {side}: NAME=VALUE[,NAME=VALUE...] over the results table: method, text, select, "
                 "train_views, tune.score, tune.set, or an option as --set spells it (lambda_hier=0, "
                 "lathadapter.lambda_hier=0).")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., metavar="path", help=COMPARE_FORMS),
    a: str | None = typer.Option(None, "--a", metavar="<name=value,...>", help=SELECTOR_HELP.format(side="A")),
    b: str | None = typer.Option(None, "--b", metavar="<name=value,...>", help=SELECTOR_HELP.format(side="B")),
    cache: Path | None = typer.Option(None, help="Two runs: their cache file, when it moved from the path their "
                                      "config.json records (its fingerprint must be theirs)."),
    device: str | None = typer.Option(None, help="Two runs: device (default: cuda when available, else cpu)."),
    out: Path | None = typer.Option(None, help="CSV file. Two runs: the per-class comparison (columns classes, "
                                    "label, class, count, correct_a, correct_b, accuracy_a, accuracy_b, difference). "
                                    "Across datasets: a row per part, shots, dataset and seed (columns part, shots, "
                                    "dataset, target, seed, acc_a, acc_b, difference, mean_a, mean_b, "
                                    "mean_difference)."),
    plot: Path | None = typer.Option(None, help="Across datasets: a .png file of A − B per dataset, a panel per part "
                                     "and shots (each seed a dot, the seed mean a diamond), titled with the Wilcoxon "
                                     "p."),
) -> None:
    """Compare two runs on the same test images, image by image: each run's accuracy, the difference, the images
    only one got right (b, c), the exact McNemar p and its verdict at 0.05, and the classes that differ most. Or
    compare two configurations across the datasets of a grid, from the recorded accuracies: per part and shots each
    dataset's seed means, wins/ties/losses and the exact Wilcoxon signed-rank p over datasets with its verdict at
    0.05."""
    from lathadapter.experiments.compare_grid import is_run_directory

    if len(runs) == 2 and a is None and b is None and all(is_run_directory(path) for path in runs):
        if plot is not None:
            _fail(OptionError("--plot draws a comparison across datasets: give sources (grid folders, results.csv) "
                              "or --a/--b, not two run directories"))
        _compare_runs(runs[0], runs[1], cache, device, out)
    else:
        given = [flag for flag, value in (("--cache", cache), ("--device", device)) if value is not None]
        if given:
            _fail(OptionError(f"{' and '.join(given)}: only for two run directories compared image by image; across "
                              "datasets compare reads the recorded accuracies"))
        _compare_configurations(runs, a, b, out, plot)


def _compare_runs(run_a: Path, run_b: Path, cache: Path | None, device: str | None, out: Path | None) -> None:
    """`compare RUN_A RUN_B`: two runs on the same test images, image by image."""
    from lathadapter.experiments.comparison import compare_two_runs

    try:
        compare_two_runs(run_a, run_b, cache, device, out, echo=typer.echo,
                         note=lambda text: typer.echo(text, err=True))
    except (ValueError, OSError) as error:
        _fail(error, out)


def _compare_configurations(sources: list[Path], a: str | None, b: str | None, out: Path | None,
                            plot: Path | None) -> None:
    """`compare SOURCE... --a ... --b ...`: two configurations across datasets, from the recorded accuracies."""
    from lathadapter.experiments.comparison import compare_two_configurations

    try:
        compare_two_configurations(sources, a, b, out, plot, echo=typer.echo,
                                   note=lambda text: typer.echo(text, err=True))
    except (ValueError, OSError) as error:
        flag, path = next(((flag, path) for flag, path in (("--plot", plot), ("--out", out))
                           if _write_error(error, path, flag)), ("--out", out))
        _fail(error, path, flag)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), help="Folder for the demo's data, cache, grid and report."),
    shots: str = typer.Option("1,2,4,8,16", metavar=LIST, help="Shots of the few-shot grid; 16 is always added "
                              "(base-to-novel trains on 16 shots, and the few-shot grid and table include them too)."),
    seeds: str = typer.Option("1,2,3", metavar=LIST, help="Seeds."),
    method: str | None = typer.Option(None, metavar=LIST, help="Comma-separated methods (default: every method)."),
    views: int = typer.Option(10, help="Augmented views per train image."),
    tune_preset: str | None = typer.Option("lr", "--tune-preset", help=TUNE_PRESET_HELP),
    tune_score: str | None = TUNE_SCORE,
    tune_set: str | None = TUNE_SET,
    device: str | None = typer.Option(None, help="Device (default: cuda when available)."),
    threads: int | None = THREADS,
    workers: int | None = WORKERS,
    trainers: int | None = TRAINERS,
    batch_runs: int | None = BATCH_RUNS,
) -> None:
    """Build the bundled demo dataset and cache, run the methods (few-shot and base-to-novel, the lr of each method
    that has one tuned on the demo's whole val split: --tune-set split, scored by --tune-score), print the table and
    write the plots. Re-running reuses the cache and the finished runs."""
    from lathadapter.demo.pipeline import run_demo
    from lathadapter.experiments.execution import Execution
    from lathadapter.experiments.spec import NO_PRESET, refuse_untuned

    tune_score, tune_set = _choice("--tune-score", tune_score), _choice("--tune-set", tune_set)
    _stop_on_sigterm()
    try:
        if tune_preset == NO_PRESET:  # nothing tuned: any --tune-score or --tune-set given would change nothing
            refuse_untuned({flag: value for flag, value in (("--tune-score", tune_score), ("--tune-set", tune_set))
                            if value is not None}, "--tune-preset lr (the demo's default)")
        execution = Execution.parse(device, threads, workers, batch_runs=batch_runs, trainers=trainers)
        result = run_demo(out, shots=_int_list("--shots", shots), seeds=_seeds("--seeds", seeds),
                          methods=_str_list("--method", method, "zeroshot,lathadapter") if method is not None
                          else None, views=views,
                          tune=None if tune_preset == "none" else tune_preset, execution=execution,
                          log=lambda message: typer.echo(message, err=True), tune_score=tune_score or "auto",
                          tune_set=tune_set or "split")
    except (ValueError, OSError) as error:
        _fail(error, out)
    except KeyboardInterrupt as stop:
        _interrupted(stop, out)
    typer.echo(result["markdown"])
    t = result["timings"]
    typer.echo(f"demo: {_plural(result['runs'], 'run')}; cache build {t['cache_build']:.0f} s, grid {t['grid']:.0f} s, "
               f"total {t['total']:.0f} s")
    typer.echo(f"report: {result['report']}")
    typer.echo(f"plots: {', '.join(result['plots'])}")


@app.command("list")
def list_(
    what: str = typer.Argument(..., help="methods | datasets | models | options"),
    method: str | None = typer.Argument(None, help="The method whose options to list (with `options`)."),
) -> None:
    """List the methods, the dataset names of `cache build --dataset`, open_clip's model names, or a method's
    options with their defaults, valid values and meanings."""
    if what not in LISTS:
        _fail(OptionError(f"`lathadapter list {what}`: choose one of {', '.join(LISTS)}"))
    if method is not None and what != "options":
        _fail(OptionError(f"`lathadapter list {what} {method}`: only `list options` takes a method; run "
                         f"`lathadapter list {what}`"))
    if what == "models":
        import open_clip

        typer.echo("\n".join(open_clip.list_models()))
        return
    if what == "datasets":
        from lathadapter.cache.datasets import DATASETS

        for spec in DATASETS.values():
            typer.echo(f"{spec.name:<16} {spec.folder + '/':<24} {spec.template}")
        typer.echo("folder:PATH      a folder per class\nsplit:PATH       a split_zhou-format JSON")
        return
    from lathadapter.adapter.catalog import method_class, method_names

    if what == "methods":
        for name in method_names():
            cls = method_class(name)
            notes = ("trained" if cls.trains else "training-free") + (
                "" if cls.scores_new_classes else ", cannot score novel classes")
            typer.echo(f"{name:<15} {notes}")
        return
    if method is None:
        _fail(OptionError(f"`lathadapter list options METHOD`: name a method ({', '.join(method_names())})"))
    try:
        rows = option_rows(method_class(method).Options)
    except ValueError as error:
        _fail(error)
    if not rows:
        typer.echo(f"{method} has no options (it trains nothing; `lathadapter list methods` says which train)")
        return
    header = ("option", "type", "default", "valid values", "meaning")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        typer.echo("  ".join(f"{cell:<{width}}" for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])


def option_rows(options_cls: type) -> list[tuple[str, str, str, str, str]]:
    """(name, type, default, valid values, meaning) of each field of an options dataclass."""
    import dataclasses

    from lathadapter.adapter.options import field_types, valid_values

    hints = field_types(options_cls)
    rows = []
    for f in dataclasses.fields(options_cls):
        kind = hints[f.name].__name__
        # None: the method's training recipe sets it (by dataset and recipe, docs/baselines.md)
        default = ("recipe" if f.default is None else str(f.default).lower() if isinstance(f.default, bool)
                   else str(f.default))
        valid = "true, false" if kind == "bool" else valid_values(f.metadata)
        rows.append((f.name, kind, default, valid, f.metadata.get("doc", "")))
    return rows


def main() -> None:
    """Console-script entry point. A process whose cache write failed (a full disk) ends at once after its error line,
    with the command's exit code: HDF5's exit handler would crash on the file ids whose flush failed (exit 139)."""
    try:
        app()
    except SystemExit as end:
        build = sys.modules.get("lathadapter.cache.build")  # imported only by commands that build caches
        if build is not None and build.write_failed():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(end.code if isinstance(end.code, int) else RUNTIME)
        raise


if __name__ == "__main__":
    main()
